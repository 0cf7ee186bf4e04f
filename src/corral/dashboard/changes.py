"""What changed: the lifecycle events worth a marker on a service's time axis.

Theory of operation: the event log records every transition; a reader wants the few that
*changed* a service lined up with its latency and error curves. The classifier (`classify`,
`Change`, `KINDS`) lives in `corral.telemetry.changes`, shared with the changes query so the
markers and the query agree; this module picks the changes to draw. The same `Change` list is
rendered as a text list (the accessible equivalent) and drawn as markers by the service page's
script, so the two can never disagree.

Invariants: the output keeps the input's order (events arrive oldest first).
Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from corral.telemetry.changes import KINDS, Change, classify

__all__ = ["KINDS", "Change", "changes", "classify"]


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
