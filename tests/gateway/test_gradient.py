"""The gradient concurrency limit (Netflix concurrency-limits' GradientLimit) in a seeded
simulation: an upstream whose latency rises past its knee, closed-loop clients offering more
than it can take; the limit must settle near the knee and keep latency near no-load."""

from __future__ import annotations

import heapq
import math
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.errors import UserError
from corral.gateway.gradient import GradientLimit, GradientSettings


def simulate(
    knee: int, clients: int, seed: int, seconds: float = 8.0, base: float = 0.01
) -> tuple[GradientLimit, list[float], float]:
    """Clients send back to back; over the limit they are refused and retry after 5 ms. The
    upstream serves ``knee`` at ``base`` latency; past it, latency grows with the queue.
    Returns the limiter, the limits of the last quarter, and the mean RTT of that quarter."""
    rng = Random(seed)
    limiter = GradientLimit(GradientSettings(initial=10, min_limit=2))
    in_flight = 0
    events: list[tuple[float, int, int]] = [(rng.random() * 0.01, 0, i) for i in range(clients)]
    heapq.heapify(events)
    done: dict[int, float] = {}
    late_limits: list[float] = []
    late_rtts: list[float] = []
    while events:
        now, kind, who = heapq.heappop(events)
        if now > seconds:
            break
        if kind == 0:  # a client wants to send
            if not limiter.admits(in_flight):
                heapq.heappush(events, (now + 0.005, 0, who))
                continue
            in_flight += 1
            rtt = base * max(1.0, in_flight / knee) * (1 + 0.1 * rng.random())
            done[who] = rtt
            heapq.heappush(events, (now + rtt, 1, who))
        else:  # a response
            rtt = done.pop(who)
            limiter.sample(rtt, in_flight, now)
            in_flight -= 1
            if now > seconds * 0.75:
                late_limits.append(limiter.limit)
                late_rtts.append(rtt)
            heapq.heappush(events, (now, 0, who))
    return limiter, late_limits, sum(late_rtts) / len(late_rtts)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("knee", [20, 60])
def test_the_limit_converges_near_the_knee_when_latency_rises_with_load(
    knee: int, seed: int
) -> None:
    limiter, late, mean_rtt = simulate(knee, clients=4 * knee, seed=seed)
    settled = sum(late) / len(late)
    assert knee * 0.8 <= settled <= knee + 2 * math.sqrt(knee) + 2, (knee, seed, settled)
    assert max(late) - min(late) <= 0.5 * knee  # settled, not oscillating wildly
    # Admitted requests see close to no-load latency instead of a 4x queue.
    assert mean_rtt <= 0.01 * 1.1 * (1 + (2 * math.sqrt(knee) + 2) / knee)
    assert limiter.rtt_noload == pytest.approx(0.0105, rel=0.05)


def test_an_app_limited_upstream_keeps_its_limit() -> None:
    limiter = GradientLimit(GradientSettings(initial=50, window=0.1, min_samples=1))
    for i in range(100):
        limiter.sample(0.5 if i % 2 else 0.01, in_flight=3, now=i * 0.2)
    assert limiter.limit == 50


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.001, 2.0), st.integers(0, 2000)), max_size=300))
def test_the_limit_stays_in_bounds_and_moves_by_at_most_one_smoothed_step(
    samples: list[tuple[float, int]],
) -> None:
    s = GradientSettings(initial=20, min_limit=4, max_limit=200, min_samples=1, window=0.01)
    limiter = GradientLimit(s)
    for i, (rtt, in_flight) in enumerate(samples):
        before = limiter.limit
        after = limiter.sample(rtt, in_flight, now=i * 0.02)
        assert s.min_limit <= after <= s.max_limit
        assert abs(after - before) <= s.smoothing * (before / 2 + math.sqrt(before)) + 1e-9


def test_impossible_settings_are_refused_with_a_hint() -> None:
    with pytest.raises(UserError, match="min_limit"):
        GradientLimit(GradientSettings(initial=2, min_limit=4))
