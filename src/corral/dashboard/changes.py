"""What changed: the lifecycle events worth a marker on a service's time axis.

Theory of operation: the event log records every transition (instance phases, service states,
rollouts, scaling decisions); during an incident a reader wants the few that *changed* the
service — a new release, a rollout or rollback, a scale, a restart, a crash — lined up with the
latency and error curves, as Grafana annotations and Datadog's change overlays do. `classify`
maps one event to a `Change` (or None for routine transitions such as ready → run) from its
kind, phases and reason, the words the control plane writes (`control.apply`,
`control.reconciler`, `control.releases`, `control.autoscaler`, `agent`). The same `Change`
list is rendered as a text list (the accessible equivalent) and drawn as markers by the
service page's script, so the two can never disagree.

Invariants: the output keeps the input's order (events arrive oldest first); a change's `at`
is its event's `at`; unknown reasons are not guessed at (no marker rather than a wrong one).
Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

# Marker kinds, in the order the legend lists them, with their legend words.
KINDS = {
    "release": "new release",
    "deploy": "rollout",
    "rollback": "rollback",
    "scale": "scaling",
    "restart": "restart",
    "crash": "crash",
}

_AUTOSCALED = re.compile(r": (\d+) → (\d+)$")
_RELEASED = re.compile(r"^(created|updated|restored): release v\d+")


class Change(NamedTuple):
    at: float
    kind: str  # one of KINDS
    subject: str  # service or instance
    reason: str


def _service_kind(reason: str, to_phase: str) -> str | None:
    if reason.startswith("rollback"):
        return "rollback"
    if _RELEASED.match(reason):
        return "release"
    if reason.startswith("rollout"):
        return "deploy"
    if reason.startswith("rolling restart"):
        return "restart"
    if reason.startswith("scaled from"):
        return "scale"
    if reason.startswith("autoscale:"):
        found = _AUTOSCALED.search(reason)
        return "scale" if found and found.group(1) != found.group(2) else None
    if to_phase == "failed":
        return "crash"
    return None


def _instance_kind(reason: str, from_phase: str, to_phase: str) -> str | None:
    if to_phase == "failed":
        return "crash"
    if from_phase in ("provision", "ready", "run") and to_phase == "provision":
        # An instance that went back to provision exited: on request, or by itself.
        return "restart" if reason.startswith("restarting on request") else "crash"
    return None


def classify(event: Mapping[str, Any]) -> Change | None:
    """The change an event (an API event view: at, subject, kind, from, to, reason) stands
    for, or None when it is routine."""
    reason = str(event.get("reason") or "")
    from_phase = str(event.get("from") or "")
    to_phase = str(event.get("to") or "")
    kind = event.get("kind")
    if kind == "service":
        found = _service_kind(reason, to_phase)
    elif kind == "instance":
        found = _instance_kind(reason, from_phase, to_phase)
    else:
        found = None
    if found is None:
        return None
    return Change(float(event["at"]), found, str(event.get("subject") or ""), reason)


def changes(events: Iterable[Mapping[str, Any]], since: float = 0.0) -> list[Change]:
    """The changes among `events` at or after `since`, in the events' order."""
    out = []
    for event in events:
        if float(event["at"]) < since:
            continue
        change = classify(event)
        if change is not None:
            out.append(change)
    return out
