"""The leader's view of each follower: how far it matches, what to send next, flow control.

Theory of operation (Raft paper §5.3 — nextIndex/matchIndex of Fig. 2; etcd-io/raft's
``tracker.Progress`` and its three states):

- ``PROBE``: we do not know where the follower's log matches ours. Send one MsgApp, then wait
  (``probe_sent``) for its answer or a heartbeat response before sending another; a rejection
  moves ``next`` back (using the follower's hint to skip).
- ``REPLICATE``: the follower matched; stream entries optimistically (``next`` jumps past what
  was sent) with at most ``max_inflight`` unacknowledged MsgApps in flight (pipelining with a
  window, so a slow follower costs bounded memory).
- ``SNAPSHOT``: the entries it needs are compacted; a snapshot is on its way and nothing else is
  sent until it is acknowledged (or reported lost).

Invariants: ``match < next``; ``match`` never decreases while a term lasts; ``inflights`` holds
the last index of each unacknowledged MsgApp, in increasing order.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "StateProbe"
    REPLICATE = "StateReplicate"
    SNAPSHOT = "StateSnapshot"


class Inflights:
    """A bounded window of unacknowledged MsgApps, each remembered by its last index."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        self._q.append(last_index)

    def free_le(self, index: int) -> None:
        q = self._q
        while q and q[0] <= index:
            q.popleft()

    def free_first_one(self) -> None:
        if self._q:
            self._q.popleft()

    def full(self) -> bool:
        return len(self._q) >= self.capacity

    def count(self) -> int:
        return len(self._q)

    def reset(self) -> None:
        self._q.clear()


class Progress:
    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "snapshot_sent_tick",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.snapshot_sent_tick = 0
        self.is_learner = is_learner
        self.inflights = Inflights(max_inflight)

    def _reset(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset(ProgressState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int, tick: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot = index
        self.snapshot_sent_tick = tick

    def maybe_update(self, index: int) -> bool:
        """An append ack up to ``index``: move ``match``; False if the ack is stale."""
        updated = False
        if self.match < index:
            self.match = index
            updated = True
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def sent_entries(self, last_index: int) -> None:
        """A MsgApp went out; ``last_index`` 0 means it carried no entries (a commit update)."""
        if self.state == ProgressState.REPLICATE and last_index:
            self.next = last_index + 1
            self.inflights.add(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def maybe_decr_to(self, rejected: int, hint: int) -> bool:
        """A rejection of the MsgApp at ``rejected``; False when it is stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def describe(self) -> str:
        role = " learner" if self.is_learner else ""
        extra = f" pending_snap={self.pending_snapshot}" if self.pending_snapshot else ""
        paused = " paused" if self.is_paused() and self.state == ProgressState.PROBE else ""
        inflight = f" inflight={self.inflights.count()}" if self.inflights.count() else ""
        head = f"{self.state.value} match={self.match} next={self.next}"
        return f"{head}{role}{paused}{inflight}{extra}"
