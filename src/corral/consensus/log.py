"""One node's Raft log: durable entries (``Storage``) plus entries not yet persisted.

Theory of operation (Raft paper §5.3 log replication, §5.4 safety, §7 snapshots; the shape of
etcd-io/raft's ``raftLog``/``unstable``): new entries first land in ``unstable``; ``ready()``
hands them to the driver, which persists them and calls ``advance``, after which
``stable_to`` forgets them here (they are now read from storage). An unstable snapshot
replaces the whole log in the same way.

Invariants:
- ``applied <= committed <= last_index()``; ``committed`` never decreases — truncating a
  committed entry is a safety bug and raises instead (§5.4.2);
- unstable entries (if any) start at ``offset``; everything below comes from storage (or the
  unstable snapshot), so ``term(i)`` has one answer for every held index;
- ``maybe_append`` keeps the longest prefix that matches the leader and replaces the rest
  (Log Matching: same index and term implies the same prefix, §5.3).
"""

from __future__ import annotations

from corral.consensus.messages import Entry, Snapshot
from corral.consensus.storage import Storage, limit_size
from corral.errors import StoreCorrupt


class RaftSafetyError(StoreCorrupt):
    """The core was asked to do something Raft's safety argument forbids (a bug or corruption)."""

    code = "raft_safety"


class RaftLog:
    def __init__(self, storage: Storage, max_bytes: int) -> None:
        self.storage = storage
        self.max_bytes = max_bytes
        self.unstable: list[Entry] = []
        self.unstable_snapshot: Snapshot | None = None
        self.offset = storage.last_index() + 1
        self.committed = storage.first_index() - 1
        self.applied = storage.first_index() - 1

    # ------------------------------------------------------------------ reading

    def first_index(self) -> int:
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.offset + len(self.unstable) - 1
        if self.unstable_snapshot is not None:
            return self.unstable_snapshot.index
        return self.storage.last_index()

    def term(self, index: int) -> int | None:
        """Term of ``index``; None when compacted away or beyond the end."""
        if index >= self.offset and self.unstable:
            pos = index - self.offset
            return self.unstable[pos].term if pos < len(self.unstable) else None
        snap = self.unstable_snapshot
        if snap is not None:
            return snap.term if index == snap.index else None
        if index >= self.offset:
            return None
        return self.storage.term(index)

    def last_term(self) -> int:
        term = self.term(self.last_index())
        assert term is not None
        return term

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, index: int, term: int) -> bool:
        """A candidate with last entry (index, term) is at least as up to date as us (§5.4.1)."""
        last_term = self.last_term()
        return term > last_term or (term == last_term and index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry] | None:
        """Entries [lo, hi) limited to ``max_bytes`` (at least one); None if lo is compacted."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            return None
        out: list[Entry] = []
        if lo < self.offset:
            out = self.storage.entries(lo, min(hi, self.offset), max_bytes)
            if len(out) < min(hi, self.offset) - lo:
                return out  # the size limit was reached inside storage
        if hi > self.offset and self.unstable:
            start = max(lo, self.offset) - self.offset
            out = out + self.unstable[start : hi - self.offset]
        return limit_size(out, max_bytes)

    def entries_from(self, lo: int) -> list[Entry] | None:
        return self.slice(lo, self.last_index() + 1, self.max_bytes)

    def next_committed(self) -> list[Entry]:
        lo = max(self.applied + 1, self.first_index())
        if lo > self.committed:
            return []
        got = self.slice(lo, self.committed + 1, 1 << 62)
        assert got is not None
        return got

    def has_next_committed(self) -> bool:
        return max(self.applied + 1, self.first_index()) <= self.committed

    # ------------------------------------------------------------------ writing

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> int:
        if not entries:
            return self.last_index()
        after = entries[0].index
        if after - 1 < self.committed:
            raise RaftSafetyError(
                f"raft log: entry {after} would overwrite committed entries (commit "
                f"{self.committed})",
                "a leader never rewrites committed entries; the log or a peer is corrupt",
            )
        if self.unstable and after == self.offset + len(self.unstable):
            self.unstable.extend(entries)
        elif after <= self.offset:
            # replacing (part of) what storage holds: the driver truncates it on persist
            self.offset = after
            self.unstable = list(entries)
        elif not self.unstable:
            self.offset = after
            self.unstable = list(entries)
        else:
            del self.unstable[after - self.offset :]
            self.unstable.extend(entries)
        return self.last_index()

    def find_conflict(self, entries: tuple[Entry, ...]) -> int:
        """Index of the first entry whose term differs from ours (or that we lack); 0 if none."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def maybe_append(
        self, index: int, log_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Follower side of AppendEntries (§5.3); the new last matching index, or None."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            if conflict <= self.committed:
                raise RaftSafetyError(
                    f"raft log: entry {conflict} conflicts with committed entries "
                    f"(commit {self.committed})",
                    "two leaders disagree on a committed entry; the log or a peer is corrupt",
                )
            self.append(entries[conflict - index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise RaftSafetyError(
                    f"raft log: commit {index} is past the last index {self.last_index()}",
                    "the leader sent a commit index beyond what it replicated; a bug",
                )
            self.committed = index

    def applied_to(self, index: int) -> None:
        if index:
            self.applied = max(self.applied, index)

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to (index, term): drop them from ``unstable``."""
        if index < self.offset or not self.unstable:
            return
        pos = index - self.offset
        if pos < len(self.unstable) and self.unstable[pos].term == term:
            del self.unstable[: pos + 1]
            self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.unstable_snapshot is not None and self.unstable_snapshot.index == index:
            self.unstable_snapshot = None

    def restore(self, snap: Snapshot) -> None:
        """Replace the whole log with ``snap`` (InstallSnapshot, §7)."""
        self.committed = snap.index
        self.unstable_snapshot = snap
        self.unstable = []
        self.offset = snap.index + 1
