"""Lifecycle tables: every phase an instance can be in and every state a service can show.

Theory of operation (h11's ``_state.py``): everything that affects the lifecycle lives here,
as data. An instance moves between the DESIGN.md phases only through ``INSTANCE_TRANSITIONS``
— ``(phase, event) -> phase`` — and ``next_phase`` refuses anything the table does not list,
naming the event, the phase and what would have been allowed. A service's state is not stored
history but derived from facts the planner gathers, by the ordered rules of
``SERVICE_STATE_RULES`` (first match wins). ``docs/lifecycle.md`` is generated from these
tables (``python -m corral.control.lifecycle > docs/lifecycle.md``) and a test keeps it equal,
so the diagram cannot drift from the code.

Who sends which event (the agent drives instance phases):

- ``spawned``: the agent started a process for a new incarnation (first start or a restart).
  A restart the platform asked for (a pet's incarnation bumped while it runs) is just this
  event once the old process is gone: the requested exit is not an event of its own.
- ``started``: the process is up and its startup probe passed (or it has no startup probe).
- ``readiness_passed`` / ``readiness_failed``: readiness results after hysteresis; feed raw
  probe results through ``readiness_observed`` to get these (a ``run`` instance that fails
  readiness needs ``REENTER_SUCCESSES`` consecutive successes to return to ``run``).
- ``exited_will_restart`` / ``exited_crash_looping``: the process exited unasked; the second
  when ``backoff.is_crash_looping`` holds for the new crash count. Either way it is retried.
- ``task_completed``: a task's process exited 0 — it is never restarted.
- ``stop_requested``: the platform asked the instance to stop (spec ``desired`` = stopped).
- ``stopped``: the process of a stopping instance is gone.

Invariant: ``destroy`` is final except for the ``stopped`` self-loop; nothing brings an
instance back from it (a pet scaled down and up again gets a fresh record with the same id).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

from corral.errors import CorralError
from corral.model import Phase, ServiceState

InstanceEvent = Literal[
    "spawned",
    "started",
    "readiness_passed",
    "readiness_failed",
    "exited_will_restart",
    "exited_crash_looping",
    "task_completed",
    "stop_requested",
    "stopped",
]

PHASES: tuple[Phase, ...] = get_args(Phase)
SERVICE_STATES: tuple[ServiceState, ...] = get_args(ServiceState)
INSTANCE_EVENTS: tuple[InstanceEvent, ...] = get_args(InstanceEvent)

INITIAL_PHASE: Phase = "provision"

# Readiness needs this many consecutive successes to bring a demoted instance back to `run`.
REENTER_SUCCESSES = 2

_LIVE: tuple[Phase, ...] = ("provision", "ready", "run")

INSTANCE_TRANSITIONS: dict[tuple[Phase, InstanceEvent], Phase] = {
    # A restart in place (pet, or `corral restart`) starts over from provision.
    **{(p, "spawned"): "provision" for p in (*_LIVE, "failed")},
    ("provision", "started"): "ready",
    ("ready", "readiness_passed"): "run",
    # A probe that keeps passing or keeps failing is not a change: allow the self-loops so the
    # agent can feed every hysteresis result without tracking the phase twice.
    ("run", "readiness_passed"): "run",
    ("run", "readiness_failed"): "ready",
    ("ready", "readiness_failed"): "ready",
    **{(p, "exited_will_restart"): "provision" for p in _LIVE},
    **{(p, "exited_crash_looping"): "failed" for p in _LIVE},
    **{(p, "task_completed"): "destroy" for p in _LIVE},
    **{(p, "stop_requested"): "destroy" for p in (*_LIVE, "failed")},
    ("destroy", "stopped"): "destroy",
}

EVENT_DESCRIPTIONS: dict[InstanceEvent, str] = {
    "spawned": "the agent started a process for a new incarnation",
    "started": "the process is up and its startup probe passed",
    "readiness_passed": "readiness passed (2 consecutive successes after a failure)",
    "readiness_failed": "readiness failed: out of routing",
    "exited_will_restart": "exited unasked; restarted (pet) or replaced (cattle) after backoff",
    "exited_crash_looping": "exited unasked, `failed_after` crashes in a row; still retried",
    "task_completed": "a task exited 0; never restarted",
    "stop_requested": "the platform asked it to stop (scale down, removal, `corral down`)",
    "stopped": "the process of a stopping instance is gone",
}


class ImpossibleTransition(CorralError):
    """An adapter fed an event the lifecycle table does not allow in the current phase.

    This is a local misuse (a bug in the caller), not something a user did."""

    code = "impossible_transition"
    status = 500


def allowed_events(phase: Phase) -> list[InstanceEvent]:
    return [e for (p, e) in INSTANCE_TRANSITIONS if p == phase]


def can_transition(phase: Phase, event: InstanceEvent) -> bool:
    return (phase, event) in INSTANCE_TRANSITIONS


def next_phase(phase: Phase, event: InstanceEvent, subject: str = "") -> Phase:
    """The phase after ``event``; raises ``ImpossibleTransition`` if the table has no entry."""
    try:
        return INSTANCE_TRANSITIONS[(phase, event)]
    except KeyError:
        where = f"instance {subject}: " if subject else ""
        allowed = ", ".join(allowed_events(phase)) or "nothing"
        raise ImpossibleTransition(
            f"{where}event {event!r} is impossible in phase {phase!r}",
            f"in {phase!r} the lifecycle allows: {allowed} (see docs/lifecycle.md)",
        ) from None


@dataclass(frozen=True)
class Readiness:
    """Readiness hysteresis counter kept by the agent per instance (reset on each spawn)."""

    successes: int = 0
    demoted: bool = False  # left `run` because readiness failed: re-entry needs 2 successes


def readiness_observed(
    phase: Phase, state: Readiness, passed: bool, success_threshold: int = 1
) -> tuple[InstanceEvent | None, Readiness]:
    """Feed one raw readiness probe result; returns the event to apply (or None) and the new
    counter. Only ``ready`` and ``run`` react; other phases return ``(None, state)``.

    First entry to ``run`` needs ``success_threshold`` successes (Kubernetes default 1);
    re-entry after a failure needs at least ``REENTER_SUCCESSES``."""
    if phase not in ("ready", "run"):
        return None, state
    if not passed:
        demoted = state.demoted or phase == "run"
        return ("readiness_failed" if phase == "run" else None), Readiness(0, demoted)
    successes = state.successes + 1
    need = max(REENTER_SUCCESSES, success_threshold) if state.demoted else success_threshold
    if phase == "ready" and successes >= need:
        return "readiness_passed", Readiness(0, False)
    return None, Readiness(successes, state.demoted)


# ----------------------------------------------------------------------------- services


@dataclass(frozen=True)
class ServiceFacts:
    """What the planner observed about one service, from which its state is derived."""

    stopping: bool
    desired: int
    counted: int  # instances counted towards desired (spec desired=running, not being removed)
    ready: int  # instances in `run` (or, for a task, completed)
    failed: int  # instances in phase `failed` (crash-looping)
    pending: bool  # the plan has work left: creates, stops, forgets or restarts
    was_running: bool  # the service was in `run` or `scale` before (or has an instance in run)
    previous: ServiceState | None = None
    rolling: Literal["update", "rollback", "restart"] | None = None  # a rollout in progress


SERVICE_STATE_RULES: tuple[tuple[ServiceState, str, Callable[[ServiceFacts], bool]], ...] = (
    (
        "destroy",
        "the service is stopping (removed from the manifest, or `corral down`)",
        lambda f: f.stopping,
    ),
    ("failed", "an instance is crash-looping (phase `failed`)", lambda f: f.failed > 0),
    (
        "rollback",
        "a rollout back to an earlier release is in progress",
        lambda f: f.rolling == "rollback",
    ),
    (
        "update",
        "a rollout to a new release (or a rolling restart) is in progress",
        lambda f: f.rolling in ("update", "restart"),
    ),
    (
        "run",
        "every desired instance is in `run` (a task: completed) and nothing is pending",
        lambda f: f.ready == f.desired == f.counted and not f.pending,
    ),
    (
        "scale",
        "it was running and its instance count differs from desired, or it was scaling "
        "and has not reached `run` yet",
        lambda f: f.was_running and (f.counted != f.desired or f.previous == "scale"),
    ),
    ("provision", "otherwise: instances are being created, started or restarted", lambda f: True),
)


def service_state(facts: ServiceFacts) -> ServiceState:
    for state, _, rule in SERVICE_STATE_RULES:
        if rule(facts):
            return state
    return "provision"  # unreachable: the last rule always matches


# ----------------------------------------------------------------------------- docs


def render_markdown() -> str:
    """``docs/lifecycle.md``: a mermaid diagram and tables, generated from the tables above."""
    lines = [
        "# Lifecycle",
        "",
        "<!-- generated by `python -m corral.control.lifecycle > docs/lifecycle.md`;"
        " do not edit by hand -->",
        "",
        "## Instance phases",
        "",
        "```mermaid",
        "stateDiagram-v2",
        f"    [*] --> {INITIAL_PHASE}",
    ]
    edges: dict[tuple[Phase, Phase], list[str]] = {}
    for (src, event), dst in INSTANCE_TRANSITIONS.items():
        edges.setdefault((src, dst), []).append(event)
    order = {p: i for i, p in enumerate(PHASES)}
    for src, dst in sorted(edges, key=lambda e: (order[e[0]], order[e[1]])):
        lines.append(f"    {src} --> {dst}: {', '.join(edges[(src, dst)])}")
    lines += ["    destroy --> [*]", "```", "", "| phase | event | next phase |", "|---|---|---|"]
    for src in PHASES:
        for event in INSTANCE_EVENTS:
            if (src, event) in INSTANCE_TRANSITIONS:
                dst = INSTANCE_TRANSITIONS[(src, event)]
                lines.append(f"| `{src}` | `{event}` | `{dst}` |")
    lines += ["", "| event | meaning |", "|---|---|"]
    lines += [f"| `{e}` | {EVENT_DESCRIPTIONS[e]} |" for e in INSTANCE_EVENTS]
    lines += [
        "",
        f"A `run` instance whose readiness fails goes back to `ready` and needs "
        f"{REENTER_SUCCESSES} consecutive successes to return to `run`.",
        "",
        "## Service states",
        "",
        "Derived on every reconcile pass; the first rule that holds wins.",
        "",
        "| order | state | when |",
        "|---|---|---|",
    ]
    for i, (state, text, _) in enumerate(SERVICE_STATE_RULES, 1):
        lines.append(f"| {i} | `{state}` | {text} |")
    lines += ["", "`update` and `rollback` arrive with rolling updates.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
