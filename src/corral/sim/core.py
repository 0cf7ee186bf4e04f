"""A seeded discrete-event simulator: virtual clock, event heap, one private random stream.

Theory of operation (FoundationDB simulation, TigerBeetle's VOPR): everything that could vary
between runs — time, message delivery, faults — is drawn from one ``random.Random(seed)`` and
ordered by one heap keyed on (time, sequence). The same seed therefore replays the same run
exactly. ``replay_line()`` prints the one line that reproduces a failure:

    python -m corral.sim <engine> --seed N [--option value ...]

Cores under test never see this module; scenario code feeds them ``now`` and events.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(order=True)
class _Scheduled:
    at: float
    seq: int
    action: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class Timer:
    def __init__(self, entry: _Scheduled) -> None:
        self._entry = entry

    def cancel(self) -> None:
        self._entry.cancelled = True


class Simulation:
    """A virtual clock and an event heap. ``schedule`` runs a callback at a virtual time."""

    def __init__(self, seed: int, engine: str = "sim", **options: object) -> None:
        self.seed = seed
        self.engine = engine
        self.options = options
        self.random = random.Random(seed)
        self.now = 0.0
        self._heap: list[_Scheduled] = []
        self._seq = 0
        self.steps = 0

    def replay_line(self) -> str:
        opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in sorted(self.options.items()))
        return f"python -m corral.sim {self.engine} --seed {self.seed} {opts}".rstrip()

    def schedule(self, delay: float, action: Callable[[], None]) -> Timer:
        entry = _Scheduled(self.now + max(0.0, delay), self._seq, action)
        self._seq += 1
        heapq.heappush(self._heap, entry)
        return Timer(entry)

    def run_until(self, until: float, check: Callable[[], None] | None = None) -> None:
        """Run events up to virtual time ``until``; ``check`` runs after every event (safety)."""
        while self._heap and self._heap[0].at <= until:
            entry = heapq.heappop(self._heap)
            if entry.cancelled:
                continue
            self.now = entry.at
            entry.action()
            self.steps += 1
            if check is not None:
                check()
        self.now = max(self.now, until)

    def pending(self) -> int:
        return sum(1 for e in self._heap if not e.cancelled)


def report(
    ok: bool, problem: str, replay: str, summary: str, events: list[str], last: int = 30
) -> str:
    """The report every engine prints: verdict, the replay line, a summary, the last events."""
    head = "ok" if ok else f"FAILED: {problem}"
    tail = "\n".join(f"    {line}" for line in events[-last:])
    return f"{head}\n  replay: {replay}\n  {summary}\n  last events:\n{tail}"
