"""Adaptive concurrency per upstream: a gradient limit (Netflix concurrency-limits).

Theory of operation. The limit is the number of requests allowed in flight to one upstream.
Little's law says an upstream at its knee serves ``C`` requests at the no-load latency; past
the knee extra requests only queue, so the sampled RTT grows like ``RTT_noload · in_flight / C``.
Each window of samples (``window`` seconds with at least ``min_samples``) updates the limit,
following Netflix's ``GradientLimit``:

    gradient  = clamp(tolerance · RTT_noload / RTT_sample, 0.5, 1.0)
    new       = limit · gradient + queue(limit)          queue(limit) = sqrt(limit)
    limit     = (1 − smoothing) · limit + smoothing · new, clamped to [min_limit, max_limit]

``RTT_sample`` is the window's mean RTT and ``RTT_noload`` the smallest window mean seen since
the last probe; every ``probe_every`` updates it is reset to the current sample so a slower
upstream (new release, colder cache) re-bases instead of being throttled forever.

Invariants: the limit stays within ``[min_limit, max_limit]``; it never moves by more than
``smoothing · (limit/2 + sqrt(limit))`` per update (gradient ≥ 0.5 bounds the fall); it does
not change while the upstream is app-limited (fewer than half the limit in flight: no
evidence about the knee). Fixed point past the knee (gradient = tolerance·C/limit): ``limit =
tolerance·C + sqrt(limit)`` — near the knee for ``tolerance`` 1. The core is pure: the caller
passes every RTT, the in-flight count and ``now``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from corral.errors import UserError

__all__ = ["GradientLimit", "GradientSettings"]


@dataclass(frozen=True, slots=True)
class GradientSettings:
    initial: float = 20.0
    min_limit: float = 4.0
    max_limit: float = 1000.0
    smoothing: float = 0.2
    tolerance: float = 1.0
    window: float = 0.1  # seconds of samples per update
    min_samples: int = 10
    probe_every: int = 600  # updates between RTT_noload resets

    def check(self) -> GradientSettings:
        if not (1 <= self.min_limit <= self.initial <= self.max_limit):
            raise UserError(
                f"gradient min_limit {self.min_limit:g} ≤ initial {self.initial:g} ≤ max_limit "
                f"{self.max_limit:g} does not hold",
                "keep 1 ≤ min_limit ≤ initial ≤ max_limit",
            )
        if not (0 < self.smoothing <= 1) or self.tolerance < 1 or self.window <= 0:
            raise UserError(
                "gradient smoothing must be in (0, 1], tolerance ≥ 1 and window > 0",
                "the defaults (0.2, 1.0, 100 ms) suit most upstreams",
            )
        return self


class GradientLimit:
    """One upstream's concurrency limit; ``admits`` on the request path, ``sample`` after."""

    __slots__ = (
        "_count",
        "_max_in_flight",
        "_started",
        "_sum",
        "limit",
        "rtt_noload",
        "settings",
        "updates",
    )

    def __init__(self, settings: GradientSettings | None = None) -> None:
        self.settings = (settings or GradientSettings()).check()
        self.limit = self.settings.initial
        self.rtt_noload = math.inf
        self.updates = 0
        self._started: float | None = None
        self._sum = 0.0
        self._count = 0
        self._max_in_flight = 0

    def admits(self, in_flight: int) -> bool:
        """Whether one more request may start with ``in_flight`` already running."""
        return in_flight < int(self.limit)

    def sample(self, rtt: float, in_flight: int, now: float) -> float:
        """Account for one finished request (``in_flight``: how many ran with it); returns
        the limit, updated when a window closed."""
        if self._started is None:
            self._started = now
        self._sum += rtt
        self._count += 1
        self._max_in_flight = max(self._max_in_flight, in_flight)
        s = self.settings
        if now - self._started < s.window or self._count < s.min_samples:
            return self.limit
        mean = self._sum / self._count
        busy = self._max_in_flight
        self._started, self._sum, self._count, self._max_in_flight = now, 0.0, 0, 0
        return self._update(mean, busy)

    def _update(self, rtt: float, in_flight: int) -> float:
        s = self.settings
        self.updates += 1
        if self.updates % s.probe_every == 0:
            self.rtt_noload = rtt  # re-base: the upstream may have become slower for good
        elif rtt < self.rtt_noload:
            self.rtt_noload = rtt
        if rtt <= 0 or in_flight < self.limit / 2:
            return self.limit  # app-limited: this window says nothing about the knee
        gradient = max(0.5, min(1.0, s.tolerance * self.rtt_noload / rtt))
        new = self.limit * gradient + math.sqrt(self.limit)
        new = (1 - s.smoothing) * self.limit + s.smoothing * new
        self.limit = max(s.min_limit, min(s.max_limit, new))
        return self.limit
