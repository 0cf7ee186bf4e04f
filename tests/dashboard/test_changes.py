"""Which events the service page marks on its charts as "what changed" (pure)."""

from __future__ import annotations

import ast
import inspect
from typing import Any

from corral.dashboard.changes import KINDS, changes, classify
from corral.telemetry import changes as query


def event(kind: str, reason: str, at: float = 100.0, **extra: str) -> dict[str, Any]:
    return {"at": at, "subject": extra.pop("subject", "web"), "kind": kind, "reason": reason}


def instance(reason: str, from_phase: str, to_phase: str, at: float = 100.0) -> dict[str, Any]:
    return {
        "at": at,
        "subject": "web-abc12",
        "kind": "instance",
        "service": "web",
        "from": from_phase,
        "to": to_phase,
        "reason": reason,
    }


def kind_of(e: dict[str, Any]) -> str | None:
    found = classify(e)
    return found.kind if found else None


def test_deploys_releases_and_rollbacks_are_changes() -> None:
    assert kind_of(event("service", "updated: release v3, 2 instance(s) — bump")) == "release"
    assert kind_of(event("service", "created: release v1, 1 instance(s)")) == "release"
    assert kind_of(event("service", "rollout v2 → v3 complete")) == "deploy"
    assert kind_of(event("service", "rollback v3 → v4 (copy of v2): readiness")) == "rollback"


def test_scaling_is_a_change_but_an_autoscaler_that_kept_the_count_is_not() -> None:
    assert kind_of(event("service", "scaled from 2 to 4")) == "scale"
    assert kind_of(event("service", "autoscale: cpu 91% of 50% → 4: 2 → 4")) == "scale"
    assert kind_of(event("service", "autoscale: cpu 40% → 2 (within tolerance 10%)")) is None
    assert kind_of(event("service", "metric rps has no source yet: no change")) is None


def test_an_instance_that_exits_is_a_crash_unless_its_restart_was_requested() -> None:
    assert kind_of(instance("exit 1 (killed by SIGKILL); restarting now", "run", "provision")) == (
        "crash"
    )
    assert kind_of(instance("restarting on request (SIGTERM)", "run", "provision")) == "restart"
    assert kind_of(instance("5 crashes in a row", "provision", "failed")) == "crash"
    assert kind_of(event("service", "rolling restart requested")) == "restart"


def test_routine_transitions_are_not_changes() -> None:
    assert kind_of(instance("process is up", "provision", "ready")) is None
    assert kind_of(instance("readiness passed 1×", "ready", "run")) is None
    assert kind_of(instance("started pid 12", "", "provision")) is None
    assert kind_of(event("platform", "down: stopping every service")) is None


def test_changes_keep_event_order_and_drop_those_before_the_window() -> None:
    events = [
        event("service", "scaled from 1 to 2", at=10.0),
        instance("process is up", "provision", "ready", at=20.0),
        event("service", "rollout v1 → v2 complete", at=30.0),
        event("service", "scaled from 2 to 3", at=40.0),
    ]
    found = changes(events, since=15.0)
    assert [(c.at, c.kind) for c in found] == [(30.0, "deploy"), (40.0, "scale")]
    assert all(c.kind in KINDS for c in found)


def test_the_changes_query_and_the_markers_share_one_classifier_owned_by_telemetry() -> None:
    # Telemetry must not depend on the dashboard: the classifier lives in telemetry.
    assert classify is query.classify and KINDS is query.KINDS
    tree = ast.parse(inspect.getsource(query))
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.startswith("corral.dashboard")]
    row = query.change_of(event("service", "rollback to v2"))
    assert row is not None and row.kind == "rollback" and row.service == "web"
