"""What changed in a window, next to the curves of the services it touched.

Theory of operation. The event log is classified by `corral.dashboard.changes.classify`
(releases, rollouts, rollbacks, scaling, restarts, crashes — one classifier for the dashboard's
markers and this query, so they agree); this module adds the platform-wide *config* changes
that classifier leaves out (a new gateway config version, a secret set or removed, alert rules)
and turns the collector's per-minute service series into the error-rate and latency points the
changes are drawn against. A change with no service (config) concerns every service shown.

Invariants: changes keep the event log's order; minutes without traffic are absent from the
series rather than zero (no traffic is not "no errors"). Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from corral.dashboard.changes import classify
from corral.telemetry.rollup import quantile

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
