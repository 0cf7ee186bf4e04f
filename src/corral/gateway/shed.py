"""Load shedding: concurrency limits with a short priority queue, adaptive protection
(BBR-style) and gradient adaptive concurrency per upstream.

Theory of operation. A route carries a **priority** — ``critical``, ``normal`` or
``best_effort`` — and every decision here prefers the lower rank when something must give.

**Concurrency limit** (``ConcurrencyLimiter``, one per route and one per service). At most
``max_in_flight`` requests pass at once; up to ``queue_size`` more wait at most
``queue_timeout`` in a queue ordered by priority, FIFO within one. A request that finds the
queue full displaces the newest waiter of a *lower* priority (that waiter is shed) or is shed
itself. The core hands out integer tickets: ``acquire`` → admit / queue (ticket) / shed;
``release`` → the tickets to start now; ``expire`` → waiting tickets whose time ran out;
``cancel`` → a waiter whose client left. Invariants: in flight ≤ ``max_in_flight``; queued ≤
``queue_size``; a waiter is never started while one of a higher priority waits.

**Adaptive protection** (``AdaptiveShedder``; Sentinel's system rule and Kratos' BBR limiter,
after BBR congestion control, Cardwell et al. 2016). The adapter samples the gateway's
event-loop lag and CPU (``observe_load``, every 100–250 ms) and reports every finished request
(``done``). The core keeps, over ``window`` seconds in ``buckets`` buckets, the most requests
completed in one bucket and the least average latency in one bucket: their product
``max_pass × min_rt`` (per second × seconds) estimates the in-flight count the system can carry
without queueing (Little's law: the bandwidth-delay product). A request is shed when the
system is *hot* — lag ≥ ``lag_threshold`` or CPU ≥ ``cpu_threshold``, or it was within the last
``cool_off`` seconds (so shedding does not flap at every sample) — **and** in flight exceeds
that estimate × its priority's headroom (best_effort 0.8×, normal 1×, critical 1.5×): under
overload best-effort goes first and critical last. A load sample comes only every 100–250 ms,
so a sudden surge is also caught between samples: in flight above ``surge`` (2) × that limit
means queues are building whatever the samples say. Until one full bucket exists, nothing is
shed (no estimate yet). The estimate is refreshed when a bucket rolls over, not per request.

Adaptive concurrency per upstream (Gradient2) is ``corral.gateway.gradient``.

Shed requests are answered 503 with ``Retry-After`` (``SHED_RETRY_AFTER``). Pure: time comes
in as ``now``; nothing here reads a clock or draws randomness.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "PRIORITIES",
    "PRIORITY_HEADROOM",
    "SHED_RETRY_AFTER",
    "AdaptiveShedder",
    "Admission",
    "ConcurrencyLimiter",
    "Priority",
]

Priority = Literal["critical", "normal", "best_effort"]
PRIORITIES: tuple[Priority, ...] = ("critical", "normal", "best_effort")
_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
# Multiples of the estimated capacity. Only critical may exceed it: if normal could, queueing
# would inflate the latency the estimate is made of, and the limit would ratchet upwards.
PRIORITY_HEADROOM: dict[str, float] = {"critical": 1.5, "normal": 1.0, "best_effort": 0.8}
SHED_RETRY_AFTER = 1


@dataclass(frozen=True, slots=True)
class Admission:
    """``kind`` admit (start now), queue (wait for ``ticket``) or shed (503); ``displaced`` is
    a waiting ticket this arrival pushed out of the queue (shed it too)."""

    kind: Literal["admit", "queue", "shed"]
    ticket: int = 0
    displaced: int | None = None
    reason: str = ""


_ADMIT = Admission("admit")


class ConcurrencyLimiter:
    """At most ``max_in_flight`` at once, a short priority queue behind (module docstring)."""

    __slots__ = (
        "_next",
        "_queues",
        "_timed_out",
        "_waiting",
        "in_flight",
        "max_in_flight",
        "queue_size",
        "queue_timeout",
    )

    def __init__(self, max_in_flight: int, queue_size: int = 0, queue_timeout: float = 0.5) -> None:
        self.max_in_flight = max_in_flight
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.in_flight = 0
        self._next = 1
        self._queues: tuple[deque[tuple[int, float]], ...] = tuple(deque() for _ in PRIORITIES)
        self._waiting: set[int] = set()  # tickets in a queue, neither started nor cancelled
        self._timed_out: list[int] = []

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def set_limit(self, max_in_flight: int) -> None:
        self.max_in_flight = max(1, max_in_flight)

    def acquire(self, priority: str, now: float) -> Admission:
        if self.in_flight < self.max_in_flight and not self._waiting:
            self.in_flight += 1
            return _ADMIT
        rank = _RANK[priority]
        displaced: int | None = None
        if len(self._waiting) >= self.queue_size:
            displaced = self._displace(rank)
            if displaced is None:
                return Admission("shed", reason=f"{self.in_flight} in flight and the queue is full")
        ticket = self._next
        self._next += 1
        self._queues[rank].append((ticket, now + self.queue_timeout))
        self._waiting.add(ticket)
        return Admission("queue", ticket, displaced)

    def _displace(self, rank: int) -> int | None:
        for lower in range(len(PRIORITIES) - 1, rank, -1):
            queue = self._queues[lower]
            while queue:
                ticket, _ = queue.pop()
                if ticket in self._waiting:
                    self._waiting.discard(ticket)
                    return ticket
        return None

    def release(self, now: float) -> list[int]:
        """A request finished: the waiting tickets to start now (0 or 1, more after a limit
        increase). Waiters found expired on the way are reported by the next ``expire``."""
        self.in_flight -= 1
        return self._start(now)

    def _start(self, now: float) -> list[int]:
        started: list[int] = []
        waiting = self._waiting
        for queue in self._queues:
            while queue and waiting and self.in_flight < self.max_in_flight:
                ticket, deadline = queue.popleft()
                if ticket not in waiting:
                    continue  # cancelled or displaced
                waiting.discard(ticket)
                if deadline < now:
                    self._timed_out.append(ticket)
                    continue
                self.in_flight += 1
                started.append(ticket)
        return started

    def expire(self, now: float) -> tuple[list[int], list[int]]:
        """(tickets to shed because ``queue_timeout`` passed, tickets to start now)."""
        waiting = self._waiting
        for queue in self._queues:
            while queue and (queue[0][1] < now or queue[0][0] not in waiting):
                ticket, _ = queue.popleft()
                if ticket in waiting:
                    waiting.discard(ticket)
                    self._timed_out.append(ticket)
        gone, self._timed_out = self._timed_out, []
        return gone, self._start(now)

    def next_deadline(self) -> float | None:
        """When the earliest waiter expires (the adapter arms one timer for it)."""
        heads = [q[0][1] for q in self._queues if q]
        return min(heads) if heads else None

    def cancel(self, ticket: int) -> None:
        """A waiter's client went away before it started (a no-op once it started)."""
        self._waiting.discard(ticket)


class AdaptiveShedder:
    """BBR-style protection for one gateway worker (see the module docstring)."""

    __slots__ = (
        "_bucket",
        "_bucket_width",
        "_capacity",
        "_passes",
        "_rt_sums",
        "buckets",
        "cool_off",
        "cpu_threshold",
        "hot_until",
        "in_flight",
        "lag_threshold",
        "surge",
    )

    def __init__(
        self,
        *,
        window: float = 5.0,
        buckets: int = 50,
        cpu_threshold: float = 0.8,
        lag_threshold: float = 0.05,
        cool_off: float = 1.0,
        surge: float = 2.0,
    ) -> None:
        self.buckets = buckets
        self.surge = surge
        self.cpu_threshold = cpu_threshold
        self.lag_threshold = lag_threshold
        self.cool_off = cool_off
        self.hot_until = -math.inf
        self.in_flight = 0
        self._bucket_width = window / buckets
        self._bucket = -1
        self._passes = [0] * buckets
        self._rt_sums = [0.0] * buckets
        self._capacity = math.inf  # max_pass × min_rt, refreshed per bucket

    def observe_load(self, cpu: float, loop_lag: float, now: float) -> None:
        if cpu >= self.cpu_threshold or loop_lag >= self.lag_threshold:
            self.hot_until = now + self.cool_off

    def admit(self, priority: str, now: float) -> bool:
        """Whether to let a request in; an admitted request must be reported with ``done``."""
        limit = self._capacity * PRIORITY_HEADROOM[priority]
        if now >= self.hot_until:
            limit *= self.surge
        if self.in_flight >= limit:
            return False
        self.in_flight += 1
        return True

    def done(self, latency: float, now: float) -> None:
        self.in_flight -= 1
        number = int(now / self._bucket_width)
        if number != self._bucket:
            self._roll(number)
        index = number % self.buckets
        self._passes[index] += 1
        self._rt_sums[index] += latency

    def capacity(self) -> float:
        """The current estimate of in-flight requests the system carries without queueing."""
        return self._capacity

    def _roll(self, number: int) -> None:
        old = self._bucket
        size = self.buckets
        for n in range(max(old + 1, number - size + 1), number + 1):
            self._passes[n % size] = 0
            self._rt_sums[n % size] = 0.0
        self._bucket = number
        # Completed buckets only: the one just opened is empty.
        current = number % size
        max_pass = 0
        min_rt = math.inf
        for i in range(size):
            passes = self._passes[i]
            if i == current or passes == 0:
                continue
            if passes > max_pass:
                max_pass = passes
            rt = self._rt_sums[i] / passes
            if rt < min_rt:
                min_rt = rt
        if max_pass:
            self._capacity = max(1.0, max_pass / self._bucket_width * min_rt)
        else:
            self._capacity = math.inf
