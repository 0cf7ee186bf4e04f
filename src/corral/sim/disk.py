"""A simulated disk: an append-only record log that keeps only what was synced, on a crash.

Theory of operation (ALICE / "All File Systems Are Not Created Equal"; TigerBeetle's VOPR
storage faults): ``write`` queues a record; ``sync`` makes every queued record durable. On
``crash``, the durable records survive, and so may any *prefix* of the unsynced ones (a disk
writes in order but may stop anywhere); with ``torn`` the last surviving record may be cut
short, which the engine's ``tear`` decides how to represent (a torn record whose checksum
fails is dropped; a torn batch keeps its leading whole entries). Records are opaque to the
disk. ``rewrite`` replaces the durable records with an equivalent shorter list (a checkpoint,
as after log compaction), only when nothing is pending.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Generic, TypeVar

R = TypeVar("R")


class SimDisk(Generic[R]):
    def __init__(self) -> None:
        self._durable: list[R] = []
        self._pending: list[R] = []
        self.syncs = 0

    def write(self, record: R) -> None:
        self._pending.append(record)

    def sync(self) -> None:
        self._durable.extend(self._pending)
        self._pending.clear()
        self.syncs += 1

    @property
    def pending(self) -> int:
        return len(self._pending)

    def records(self) -> list[R]:
        return list(self._durable)

    def rewrite(self, records: list[R]) -> None:
        if self._pending:
            raise AssertionError("sim disk: rewrite with unsynced records pending")
        self._durable = list(records)

    def crash(
        self,
        rng: random.Random,
        torn: bool = False,
        tear: Callable[[R, random.Random], R | None] | None = None,
    ) -> list[R]:
        """Lose power: keep durable records plus a random prefix of the pending ones."""
        keep = rng.randint(0, len(self._pending))
        survivors = self._pending[:keep]
        if torn and survivors and tear is not None and rng.random() < 0.5:
            torn_record = tear(survivors[-1], rng)
            survivors = survivors[:-1] + ([torn_record] if torn_record is not None else [])
        self._durable.extend(survivors)
        self._pending.clear()
        return list(self._durable)
