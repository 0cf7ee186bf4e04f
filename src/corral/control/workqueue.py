"""The reconciler's work queue of service keys, with client-go workqueue semantics.

Theory of operation (Kubernetes client-go ``workqueue``): a key is a service name — the
reconciler re-reads everything about it, so only the key matters, never how many times or why
it was added. Three places a key can be:

- **dirty**: waiting to be processed (at most once: a duplicate ``add`` is dropped);
- **processing**: handed out by ``get``; it is never handed out again until ``done``. An
  ``add`` meanwhile marks it dirty, and ``done`` puts it back in the ready queue;
- **delayed**: ``add_after`` / ``add_rate_limited`` park it until a time; ``get(now)`` promotes
  every key whose time has come. A key parked twice keeps the earlier time.

Ready keys come out FIFO. Time is passed in (``now``); the adapter sleeps until
``next_deadline()`` or until something is added. Per-key rate limiting doubles from
``base_delay`` to ``max_delay`` with each ``add_rate_limited`` and resets with ``forget``.
"""

from __future__ import annotations

import heapq
from collections import deque

BASE_DELAY = 0.05
MAX_DELAY = 30.0


class WorkQueue:
    def __init__(self, base_delay: float = BASE_DELAY, max_delay: float = MAX_DELAY) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._queue: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._delayed: dict[str, float] = {}  # key -> earliest time it becomes ready
        self._heap: list[tuple[float, int, str]] = []  # may hold stale entries; see _promote
        self._seq = 0
        self._failures: dict[str, int] = {}

    def add(self, key: str) -> None:
        """Make ``key`` ready (deduplicated; deferred until ``done`` if it is processing)."""
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)

    def add_after(self, key: str, at: float) -> None:
        """Make ``key`` ready at time ``at`` (the earlier time wins if it is already parked)."""
        current = self._delayed.get(key)
        if current is not None and current <= at:
            return
        self._delayed[key] = at
        heapq.heappush(self._heap, (at, self._seq, key))
        self._seq += 1

    def add_rate_limited(self, key: str, now: float) -> float:
        """Re-add ``key`` after its per-key backoff (0.05 s doubling to 30 s); returns when."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self.max_delay, self.base_delay * 2.0 ** min(failures, 64))
        self.add_after(key, now + delay)
        return now + delay

    def forget(self, key: str) -> None:
        """The key succeeded: its rate limit starts over."""
        self._failures.pop(key, None)

    def num_requeues(self, key: str) -> int:
        return self._failures.get(key, 0)

    def get(self, now: float) -> str | None:
        """The next ready key (it moves to processing), or None if nothing is ready."""
        self._promote(now)
        if not self._queue:
            return None
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        """Processing of ``key`` finished; if it was re-added meanwhile it is ready again."""
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)

    def next_deadline(self) -> float | None:
        """When the earliest parked key becomes ready (None if none is parked). Keys that are
        ready already are not counted: check ``ready()`` before sleeping."""
        while self._heap:
            at, _, key = self._heap[0]
            if self._delayed.get(key) == at:
                return at
            heapq.heappop(self._heap)
        return None

    def ready(self) -> int:
        """How many keys ``get`` could hand out right now without time passing."""
        return len(self._queue)

    def processing(self) -> list[str]:
        return sorted(self._processing)

    def __len__(self) -> int:
        """Keys waiting: ready, dirty while processing, or parked (each counted once)."""
        waiting = set(self._dirty)
        waiting.update(self._delayed)
        return len(waiting)

    def _promote(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now:
            at, _, key = heapq.heappop(self._heap)
            if self._delayed.get(key) != at:
                continue  # superseded by an earlier add_after
            del self._delayed[key]
            self.add(key)
