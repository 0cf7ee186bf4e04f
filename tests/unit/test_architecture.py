"""Pure cores stay pure: no asyncio, sockets, clock, global random, logging or other I/O.

Every module listed here is decision logic that takes ``now`` and returns actions; this test
reads its source and refuses the imports and calls that would let I/O or nondeterminism in.
Add a module here when you write a new pure core.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PURE_MODULES = [
    "corral.errors",
    "corral.model",
    "corral.store.base",
    "corral.sim.core",
    "corral.manifest.units",
    "corral.manifest.graph",
    "corral.manifest.expand",
    "corral.agent.health",
    "corral.control.lifecycle",
    "corral.control.backoff",
    "corral.control.planner",
    "corral.control.workqueue",
    "corral.sim.reconcile",
    "corral.control.rollout",
    "corral.control.diff",
    "corral.control.autoscale",
    "corral.dashboard.render",
    "corral.dashboard.session",
    "corral.gateway.router",
    "corral.gateway.lb",
    "corral.gateway.outlier",
    "corral.gateway.retry",
    "corral.gateway.framing",
    "corral.gateway.metrics",
    "corral.gateway.ratelimit",
    "corral.gateway.hotparam",
    "corral.gateway.shed",
    "corral.gateway.breaker",
    "corral.gateway.split",
    "corral.gateway.cache",
    "corral.gateway.policies",
    "corral.gateway.validation",
    "corral.gateway.policy_config",
    "corral.telemetry.retention",
    "corral.telemetry.exposition",
    "corral.telemetry.alerts",
    "corral.telemetry.capacity",
    "corral.telemetry.changes",
    "corral.telemetry.autoinstrument",
    "corral.kv.wire",
    "corral.kv.service",
    "corral.telemetry.impact_core",
    "corral.gateway.plugin_budget",
    "corral.gateway.gradient",
    "corral.control.leadership",
    "corral.control.cluster_view",
    "corral.dashboard.changes",
    "corral.telemetry.normalize",
    "corral.telemetry.rollup",
    "corral.telemetry.model",
    "corral.telemetry.slo",
    "corral.consensus",
    "corral.consensus.messages",
    "corral.consensus.storage",
    "corral.consensus.log",
    "corral.consensus.progress",
    "corral.consensus.readonly",
    "corral.consensus.config",
    "corral.consensus.core",
    "corral.sim.network",
    "corral.sim.disk",
    "corral.sim.linearizability",
    "corral.membership",
    "corral.membership.config",
    "corral.membership.swim",
    "corral.kv",
    "corral.kv.ring",
    "corral.kv.versions",
    "corral.kv.merkle",
    "corral.kv.coordinator",
    "corral.sim.kv",
]

FORBIDDEN_MODULES = {
    "asyncio",
    "socket",
    "selectors",
    "time",
    "logging",
    "threading",
    "subprocess",
    "sqlite3",
    "aiohttp",
    "httptools",
    "uvloop",
    "os",
    "secrets",
    "signal",
    "datetime",
    "corral.clock",
    "corral.ids",
}


SRC = Path(__file__).resolve().parents[2] / "src"


def _source(module: str) -> tuple[Path, ast.Module]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} is listed but missing"
    path = Path(spec.origin)
    if path.suffix != ".py":  # a compiled build (corral/compiled.py): read the source it came from
        path = SRC.joinpath(*module.split(".")).with_suffix(".py")
    return path, ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io_clock_or_global_random(module: str) -> None:
    path, tree = _source(module)
    problems: list[str] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "random":
                bad = [a.name for a in node.names if a.name != "Random"]
                if bad:
                    problems.append(f"line {node.lineno}: from random import {bad} (global random)")
        for name in names:
            root = name.split(".")[0]
            if name in FORBIDDEN_MODULES or root in FORBIDDEN_MODULES:
                problems.append(f"line {getattr(node, 'lineno', 0)}: imports {name}")
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr != "Random"
        ):
            problems.append(f"line {node.lineno}: random.{node.attr} uses the global random")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"print", "open", "input"}
        ):
            problems.append(f"line {node.lineno}: calls {node.func.id}()")
    assert not problems, f"{path} is a pure core but:\n" + "\n".join(problems)


def test_pure_modules_do_not_iterate_sets_of_strings_by_accident() -> None:
    # A reminder encoded as a check: cores sort before iterating sets (PYTHONHASHSEED).
    for module in PURE_MODULES:
        path, tree = _source(module)
        for node in ast.walk(tree):
            if isinstance(node, ast.For) and isinstance(node.iter, ast.Call):
                func = node.iter.func
                if isinstance(func, ast.Name) and func.id == "set":
                    pytest.fail(f"{path}:{node.lineno} iterates a fresh set; sort it first")
