"""The stable part of a Raft log, as the core sees it, and an in-memory implementation.

Theory of operation (Raft paper §5.3 log, §7 compaction; etcd-io/raft's ``Storage``): the core
only *reads* stable state through ``Storage``; the driver writes it, between ``ready()`` and
``advance()``, after making it durable. ``MemoryStorage`` keeps a dummy entry at position 0
whose ``(index, term)`` are those of the last snapshot, so ``term(first_index() - 1)`` is always
answerable — that is what lets a leader send ``MsgApp`` right after a compaction point.

Invariants of ``MemoryStorage``:
- ``entries[0]`` is the dummy; real entries have consecutive indexes after it;
- ``compact(i)`` only drops entries already covered by a snapshot (``i <= snapshot.index``);
- ``append`` truncates a conflicting suffix before appending (a new leader's entries win, §5.3).
"""

from __future__ import annotations

from typing import Protocol

from corral.consensus.messages import ConfState, Entry, HardState, Snapshot, entry_size
from corral.errors import StoreError


class RaftStorageError(StoreError):
    """The driver handed storage something that breaks the log's shape (a gap, a stale snapshot)."""

    code = "raft_storage"


class Storage(Protocol):
    """Read-only view of durable Raft state (written by the driver, read by the core)."""

    def initial_state(self) -> tuple[HardState, ConfState]:
        """The durable hard state and the configuration of the latest snapshot."""
        ...

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries [lo, hi); at least one if any, then as many as fit in ``max_bytes``."""
        ...

    def term(self, index: int) -> int | None:
        """Term of entry ``index``; None if compacted away or not yet written."""
        ...

    def first_index(self) -> int:
        """Index of the first entry still held (the snapshot's index + 1)."""
        ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot:
        """The most recent snapshot (index 0 if none)."""
        ...


def limit_size(entries: list[Entry], max_bytes: int) -> list[Entry]:
    if not entries:
        return entries
    total = entry_size(entries[0])
    for n in range(1, len(entries)):
        total += entry_size(entries[n])
        if total > max_bytes:
            return entries[:n]
    return entries


class MemoryStorage:
    """In-memory ``Storage`` with the write side a driver (or the simulator) uses."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self._snapshot = Snapshot()
        self._ents: list[Entry] = [Entry(term=0, index=0)]

    # read side (Storage)
    def initial_state(self) -> tuple[HardState, ConfState]:
        return self.hard_state, self._snapshot.conf_state

    def first_index(self) -> int:
        return self._ents[0].index + 1

    def last_index(self) -> int:
        return self._ents[0].index + len(self._ents) - 1

    def term(self, index: int) -> int | None:
        offset = self._ents[0].index
        if index < offset or index - offset >= len(self._ents):
            return None
        return self._ents[index - offset].term

    def entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        offset = self._ents[0].index
        if lo <= offset or hi > self.last_index() + 1:
            raise RaftStorageError(
                f"raft storage holds entries {offset + 1}..{self.last_index()}, asked [{lo},{hi})",
                "the core asked for compacted or unwritten entries; this is a bug in the core",
            )
        return limit_size(self._ents[lo - offset : hi - offset], max_bytes)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # write side (the driver)
    def set_hard_state(self, hard_state: HardState) -> None:
        self.hard_state = hard_state

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> None:
        if not entries:
            return
        first = self.first_index()
        if entries[-1].index < first:
            return  # wholly compacted already
        if entries[0].index < first:
            entries = entries[first - entries[0].index :]
        at = entries[0].index - self._ents[0].index
        if at > len(self._ents):
            raise RaftStorageError(
                f"raft storage ends at {self.last_index()}, cannot append from {entries[0].index}",
                "entries must be appended without gaps",
            )
        del self._ents[at:]
        self._ents.extend(entries)

    def apply_snapshot(self, snap: Snapshot) -> None:
        """Replace the log with ``snap`` (a follower receiving InstallSnapshot, §7)."""
        if snap.index < self._snapshot.index:
            raise RaftStorageError(
                f"raft storage has snapshot {self._snapshot.index}, refused older {snap.index}",
                "only newer snapshots may be applied",
            )
        self._snapshot = snap
        self._ents = [Entry(term=snap.term, index=snap.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine at applied ``index`` (the driver's choice)."""
        if index <= self._snapshot.index:
            return self._snapshot
        term = self.term(index)
        if term is None or index > self.hard_state.commit:
            raise RaftStorageError(
                f"cannot snapshot at {index}: last {self.last_index()}, commit "
                f"{self.hard_state.commit}",
                "snapshot only applied (hence committed and stored) entries",
            )
        self._snapshot = Snapshot(index=index, term=term, conf_state=conf_state, data=data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop entries up to ``index``, which a snapshot must already cover."""
        offset = self._ents[0].index
        if index <= offset:
            return
        if index > self._snapshot.index:
            raise RaftStorageError(
                f"cannot compact to {index}: latest snapshot is at {self._snapshot.index}",
                "create_snapshot first",
            )
        term = self.term(index)
        assert term is not None
        self._ents = [Entry(term=term, index=index), *self._ents[index - offset + 1 :]]
