"""Load shedding: concurrency limits with a priority queue, adaptive protection by priority,
and the gradient concurrency limit."""

from __future__ import annotations

from corral.gateway.shed import AdaptiveShedder, ConcurrencyLimiter


def test_requests_over_the_limit_wait_and_start_as_others_finish() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=2, queue_size=2, queue_timeout=1.0)
    assert limiter.acquire("normal", 0.0).kind == "admit"
    assert limiter.acquire("normal", 0.0).kind == "admit"
    waiting = limiter.acquire("normal", 0.0)
    assert waiting.kind == "queue"
    assert limiter.release(0.1) == [waiting.ticket]
    assert limiter.in_flight == 2 and limiter.queued == 0


def test_a_full_queue_sheds_best_effort_before_critical() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=1, queue_size=2)
    limiter.acquire("normal", 0.0)
    low = limiter.acquire("best_effort", 0.0)
    mid = limiter.acquire("normal", 0.0)
    critical = limiter.acquire("critical", 0.0)
    assert critical.kind == "queue" and critical.displaced == low.ticket
    shed = limiter.acquire("best_effort", 0.0)
    assert shed.kind == "shed" and "queue is full" in shed.reason
    # The critical waiter starts first, although it came last.
    assert limiter.release(0.1) == [critical.ticket]
    assert limiter.release(0.2) == [mid.ticket]


def test_waiters_past_their_queue_timeout_are_shed_and_the_next_one_starts() -> None:
    limiter = ConcurrencyLimiter(max_in_flight=1, queue_size=3, queue_timeout=0.2)
    limiter.acquire("normal", 0.0)
    old = limiter.acquire("normal", 0.0)
    assert limiter.next_deadline() == 0.2
    gone, started = limiter.expire(0.3)
    assert gone == [old.ticket] and started == []
    fresh = limiter.acquire("normal", 0.3)
    cancelled = limiter.acquire("normal", 0.3)
    limiter.cancel(cancelled.ticket)
    assert limiter.release(0.4) == [fresh.ticket]
    assert limiter.release(0.5) == [] and limiter.in_flight == 0


def _warm(shedder: AdaptiveShedder, in_flight: int) -> None:
    # 10 requests of 100 ms complete per 100 ms bucket for a second: capacity ≈ 10.
    now = 0.0
    for _ in range(10):
        for _ in range(10):
            assert shedder.admit("normal", now)
            shedder.done(0.1, now + 0.05)
        now += 0.1
    for _ in range(in_flight):
        shedder.admit("critical", 1.0)


def test_a_cool_system_sheds_only_a_surge_far_above_capacity() -> None:
    shedder = AdaptiveShedder(window=1.0, buckets=10, surge=2.0)
    _warm(shedder, 15)
    assert abs(shedder.capacity() - 10.0) < 1e-6
    assert shedder.admit("best_effort", 1.0)  # 15 < 10 × 0.8 × 2
    assert not shedder.admit("best_effort", 1.0)  # 16 ≥ 16
    assert shedder.admit("critical", 1.0)


def test_a_hot_system_sheds_best_effort_first_and_critical_last() -> None:
    shedder = AdaptiveShedder(window=1.0, buckets=10, cpu_threshold=0.8, cool_off=1.0)
    _warm(shedder, 9)
    shedder.observe_load(cpu=0.95, loop_lag=0.0, now=1.0)
    assert not shedder.admit("best_effort", 1.0)  # 9 ≥ 10 × 0.8
    assert shedder.admit("normal", 1.0)  # 9 < 10
    assert not shedder.admit("normal", 1.0)  # 10 ≥ 10
    assert shedder.admit("critical", 1.0)  # 10 < 15
    # The cool-off ends: nothing is shed although in-flight stays high.
    assert shedder.admit("best_effort", 2.5)
