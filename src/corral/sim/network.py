"""A simulated network: per-message delay, loss, duplication, reordering and partitions.

Theory of operation (FoundationDB simulation, Jepsen's nemeses): every fate of every message is
drawn from the ``Simulation``'s one seeded ``random``, so a seed replays the same deliveries.
Reordering falls out of independent delays (and an occasional long one); a partition is a set
of blocked directed links, so one-way partitions are just one direction blocked. A message is
checked against the partition when sent *and* when it arrives: a link cut while a message is in
flight loses it, as a real cable pull would.

Engines hand ``send`` any message type; the network never looks inside.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from corral.sim.core import Simulation

M = TypeVar("M")


@dataclass(frozen=True)
class NetworkFaults:
    drop: float = 0.0  # probability a message is lost
    duplicate: float = 0.0  # probability a message is delivered twice
    min_delay: float = 0.0005
    max_delay: float = 0.005
    slow: float = 0.0  # probability a message takes up to ``slow_delay`` (reorders it)
    slow_delay: float = 0.2


QUIET = NetworkFaults()


@dataclass
class NetworkStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0


class SimNetwork(Generic[M]):
    def __init__(
        self,
        sim: Simulation,
        deliver: Callable[[Hashable, Hashable, M], None],
        faults: NetworkFaults = QUIET,
    ) -> None:
        self.sim = sim
        self.faults = faults
        self._deliver = deliver
        self._blocked: set[tuple[Hashable, Hashable]] = set()
        self.stats = NetworkStats()

    # ------------------------------------------------------------------ faults

    def connected(self, frm: Hashable, to: Hashable) -> bool:
        return (frm, to) not in self._blocked

    def block(self, frm: Hashable, to: Hashable) -> None:
        """Cut one direction only (a one-way partition)."""
        self._blocked.add((frm, to))

    def partition(self, *groups: Sequence[Hashable]) -> None:
        """Nodes talk only within their group (both directions cut between groups)."""
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                for x in a:
                    for y in b:
                        self._blocked.add((x, y))
                        self._blocked.add((y, x))

    def isolate(self, node: Hashable, others: Sequence[Hashable]) -> None:
        self.partition([node], [o for o in others if o != node])

    def ring(self, nodes: Sequence[Hashable]) -> None:
        """Each node reaches only its two ring neighbours: every node sees a majority of 5,
        yet no two majorities are the same (Jepsen's "majorities ring")."""
        n = len(nodes)
        for i, a in enumerate(nodes):
            near = {nodes[(i - 1) % n], nodes[(i + 1) % n], a}
            for b in nodes:
                if b not in near:
                    self._blocked.add((a, b))

    def heal(self) -> None:
        self._blocked.clear()

    def blocked_links(self) -> int:
        return len(self._blocked)

    # ------------------------------------------------------------------ traffic

    def send(self, frm: Hashable, to: Hashable, message: M) -> None:
        self.stats.sent += 1
        rng, f = self.sim.random, self.faults
        if not self.connected(frm, to) or (f.drop and rng.random() < f.drop):
            self.stats.dropped += 1
            return
        copies = 2 if f.duplicate and rng.random() < f.duplicate else 1
        self.stats.duplicated += copies - 1
        for _ in range(copies):
            delay = rng.uniform(f.min_delay, f.max_delay)
            if f.slow and rng.random() < f.slow:
                delay += rng.uniform(0, f.slow_delay)
            self.sim.schedule(delay, lambda: self._arrive(frm, to, message))

    def _arrive(self, frm: Hashable, to: Hashable, message: M) -> None:
        if not self.connected(frm, to):
            self.stats.dropped += 1
            return
        self.stats.delivered += 1
        self._deliver(frm, to, message)
