"""What changed in a window, next to the curves of the services it touched.

Theory of operation. The event log records every transition (instance phases, service states,
rollouts, scaling decisions); during an incident a reader wants the few that *changed* the
service — a new release, a rollout or rollback, a scale, a restart, a crash — lined up with the
latency and error curves, as Grafana annotations and Datadog's change overlays do. `classify`
maps one event to a `Change` (or None for routine transitions such as ready → run) from its
kind, phases and reason, the words the control plane writes (`control.apply`,
`control.reconciler`, `control.releases`, `control.autoscaler`, `agent`). It is the one
classifier for the dashboard's markers (`corral.dashboard.changes` imports it from here) and
this query, so they agree. `change_of` adds the platform-wide *config* changes `classify`
leaves out (a new gateway config version, a secret set or removed, alert rules), and `points`
turns the collector's per-minute service series into the error-rate and latency points the
changes are drawn against. A change with no service (config) concerns every service shown.

Invariants: changes keep the event log's order; a change's `at` is its event's `at`; unknown
reasons are not guessed at (no marker rather than a wrong one); minutes without traffic are
absent from the series rather than zero (no traffic is not "no errors"). Pure: no clock, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from corral.telemetry.rollup import quantile

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


CONFIG_PREFIXES = ("gateway config v", "secret ", "alert rules")


class ChangeRow(msgspec.Struct):
    at: float
    kind: str  # release, deploy, rollback, scale, restart, crash, config
    service: str  # "" for platform-wide changes
    subject: str
    reason: str


class Point(msgspec.Struct, array_like=True):
    at: float  # the minute's start, seconds since the epoch
    calls: int
    errors: int
    error_rate: float
    p50_ms: float
    p95_ms: float


def change_of(event: Mapping[str, Any]) -> ChangeRow | None:
    found = classify(event)
    service = str(event.get("service") or "")
    if found is not None:
        return ChangeRow(
            found.at, found.kind, service or found.subject, found.subject, found.reason
        )
    reason = str(event.get("reason") or "")
    if event.get("kind") == "platform" and reason.startswith(CONFIG_PREFIXES):
        return ChangeRow(float(event["at"]), "config", "", str(event.get("subject") or ""), reason)
    return None


def changes(
    events: Iterable[Mapping[str, Any]], start: float, end: float, service: str = ""
) -> list[ChangeRow]:
    out = []
    for event in events:
        if not start <= float(event["at"]) < end:
            continue
        row = change_of(event)
        if row is None or (service and row.service not in ("", service)):
            continue
        out.append(row)
    return out


def points(minutes: Sequence[tuple[int, int, int, Sequence[int]]]) -> list[Point]:
    """(minute, calls, errors, histogram) rows → points, in minute order."""
    out = []
    for minute, calls, errors, hist in sorted(minutes, key=lambda m: m[0]):
        if calls <= 0:
            continue
        out.append(
            Point(
                at=minute * 60.0,
                calls=calls,
                errors=errors,
                error_rate=round(errors / calls, 6),
                p50_ms=round(quantile(hist, 0.5) / 1000, 3),
                p95_ms=round(quantile(hist, 0.95) / 1000, 3),
            )
        )
    return out
