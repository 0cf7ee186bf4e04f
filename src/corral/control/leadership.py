"""Whether this control-plane node should run the controllers now (pure).

Theory of operation. In a replicated control plane (``corral server --cluster``) every node
serves the API, but the controllers — the machine's agent, the reconciler, the autoscaler and
the platform's own services they supervise — run on the Raft leader only, as in Kubernetes'
leader-elected controller managers. The adapter (``control.leader_watch``) feeds this machine
with ``observe(leader, now)`` on every poll and does what it answers; it reports back with
``started``, ``start_failed`` and ``stopped``.

Invariants:

- **Stop at once.** The first observation of "not leader" while controllers run (or start)
  answers ``STOP``: a deposed leader's writes fail anyway, and its controllers must not act on
  a state it no longer owns.
- **Start after settling.** ``START`` only after leading *continuously* for ``settle``
  seconds. A leader is deposed only once a majority stopped hearing from it for an election
  timeout, and an isolated leader steps down by itself within one election timeout
  (check-quorum, Raft thesis §6.2). Waiting one election timeout after winning therefore lets
  the previous leader notice first, so two nodes' controllers do not overlap — on one machine
  the shims' locks make a double launch impossible anyway; the wait makes it rare too.
- **One start at a time; retry with a pause.** A failed start (e.g. the Store lost quorum
  again mid-start) is retried no sooner than ``retry_after`` seconds later.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Act(enum.Enum):
    START = "start"
    STOP = "stop"


@dataclass
class Leadership:
    settle: float = 0.5
    retry_after: float = 1.0
    running: bool = False  # controllers are started (or starting)
    leading_since: float | None = None
    failed_at: float | None = None

    def observe(self, leader: bool, now: float) -> Act | None:
        if not leader:
            self.leading_since = None
            return Act.STOP if self.running else None
        if self.leading_since is None:
            self.leading_since = now
        if self.running:
            return None
        if now - self.leading_since < self.settle:
            return None
        if self.failed_at is not None and now - self.failed_at < self.retry_after:
            return None
        self.running = True
        return Act.START

    def start_failed(self, now: float) -> None:
        """The start raised: the adapter has closed what it opened; try again later."""
        self.running = False
        self.failed_at = now

    def started(self) -> None:
        self.failed_at = None

    def stopped(self) -> None:
        self.running = False
