"""Recording lifecycle events in the Store (``/corral/events/…``), ordered by time.

Keys sort by microsecond time plus a per-process sequence, so a range over the prefix reads
events in the order they happened and ``watch`` follows new ones.
"""

from __future__ import annotations

import itertools
from typing import Any

from corral import clock, model
from corral.store.base import Put, Store

_sequence = itertools.count()


def as_dict(event: model.Event) -> dict[str, Any]:
    """An event as the API, the CLI and the dashboard show it."""
    return {
        "at": event.at,
        "subject": event.subject,
        "kind": event.kind,
        "service": event.service,
        "from": event.from_phase,
        "to": event.to_phase,
        "reason": event.reason,
    }


def event_key(at: float) -> str:
    return f"{model.EVENTS}{int(at * 1_000_000):017d}{next(_sequence) % 100000:05d}"


async def record(store: Store, event: model.Event) -> None:
    await store.txn([], [Put(event_key(event.at), model.encode(event))])


def make(
    subject: str,
    kind: str,
    reason: str,
    *,
    service: str = "",
    from_phase: str = "",
    to_phase: str = "",
    at: float | None = None,
) -> model.Event:
    return model.Event(
        at=clock.wall() if at is None else at,
        subject=subject,
        kind=kind,  # type: ignore[arg-type]  # callers pass one of the three literals
        reason=reason,
        service=service,
        from_phase=from_phase,
        to_phase=to_phase,
    )


async def trim(store: Store, keep: int) -> int:
    """Delete all but the newest ``keep`` events; returns how many were removed."""
    listing = await store.range(model.EVENTS)
    excess = len(listing.kvs) - keep
    if excess <= 0:
        return 0
    from corral.store.base import Delete

    await store.txn([], [Delete(kv.key) for kv in listing.kvs[:excess]])
    return excess
