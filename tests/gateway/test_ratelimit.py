"""Rate limits: token bucket and sliding window per key, eviction that grants nothing, 429
headers, key extraction, and the tier-wide share allocation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.gateway.ratelimit import (
    MISSING_KEY,
    Decision,
    RateLimiter,
    SlidingWindow,
    TierShare,
    TokenBucket,
    allocate,
    limit_key,
    rate_limit_headers,
)


def test_a_burst_is_admitted_then_refused_with_the_wait_until_the_next_token() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    results = [bucket.check("a", 0.0) for _ in range(6)]
    assert [d.allowed for d in results] == [True] * 5 + [False]
    refused = results[-1]
    assert abs(refused.retry_after - 0.1) < 1e-9
    assert refused.remaining == 0 and refused.limit == 5
    assert bucket.check("a", 0.1).allowed
    assert bucket.check("b", 0.0).allowed  # keys are independent


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(0.5, 100),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 0.5), min_size=1, max_size=300),
)
def test_a_token_bucket_never_admits_more_than_rate_times_t_plus_burst(
    rate: float, burst: int, gaps: list[float]
) -> None:
    bucket = TokenBucket(rate, burst)
    now = 0.0
    admitted: list[float] = []
    for gap in gaps:
        now += gap
        if bucket.check("k", now).allowed:
            admitted.append(now)
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= rate * (admitted[j] - start) + burst + 1e-6


def test_an_evicted_key_does_not_come_back_with_a_full_bucket() -> None:
    bucket = TokenBucket(rate=1, burst=10, max_keys=2)
    for _ in range(10):
        assert bucket.check("abuser", 0.0).allowed
    assert not bucket.check("abuser", 0.0).allowed
    bucket.check("x", 0.1)
    bucket.check("y", 0.2)  # evicts "abuser"
    assert len(bucket) == 2
    back = bucket.check("abuser", 1.0)  # one second refilled one token, no more
    assert back.allowed
    assert not bucket.check("abuser", 1.0).allowed
    # Once its bucket would have been full again, the debt is forgotten by time alone.
    bucket.check("x", 30.0)
    bucket.check("y", 30.0)
    assert sum(bucket.check("abuser", 30.0).allowed for _ in range(10)) == 10


def test_a_sliding_window_admits_its_limit_per_fixed_window_and_weights_the_previous() -> None:
    window = SlidingWindow(limit=10, window=1.0)
    assert sum(window.check("k", 0.0).allowed for _ in range(15)) == 10
    # Half way through the next window the previous 10 weigh 5: five more pass.
    assert sum(window.check("k", 1.5).allowed for _ in range(15)) == 5
    refused = window.check("k", 1.5)
    assert not refused.allowed and refused.retry_after > 0


def test_an_evicted_sliding_window_key_keeps_its_count() -> None:
    window = SlidingWindow(limit=5, window=10.0, max_keys=1)
    assert sum(window.check("a", 0.0).allowed for _ in range(5)) == 5
    window.check("b", 1.0)  # evicts "a"
    assert not window.check("a", 2.0).allowed


def test_429_headers_carry_limit_remaining_reset_and_retry_after() -> None:
    assert rate_limit_headers(Decision(False, 100, 0, 2.2, 0.3)) == (
        b"RateLimit-Limit: 100\r\nRateLimit-Remaining: 0\r\nRateLimit-Reset: 3\r\n"
        b"Retry-After: 1\r\n"
    )
    assert b"Retry-After" not in rate_limit_headers(Decision(True, 100, 99, 0.01))


def test_keys_come_from_ip_header_cookie_or_path_and_missing_ones_share_a_bucket() -> None:
    headers = {"x-api-key": "k1"}
    cookies = {"uid": "u7"}
    args = ("10.0.0.1", headers.get, cookies.get, {"id": "42"})
    assert limit_key("client_ip", *args) == "10.0.0.1"
    assert limit_key("header:x-api-key", *args) == "k1"
    assert limit_key("cookie:uid", *args) == "u7"
    assert limit_key("param:id", *args) == "42"
    assert limit_key("none", *args) == ""
    assert limit_key("header:x-other", *args) == MISSING_KEY


def test_a_worker_share_scales_the_buckets_but_headers_show_the_configured_limit() -> None:
    limiter = RateLimiter("token_bucket", 100, burst=100, fraction=0.25)
    decisions = [limiter.check("k", 0.0) for _ in range(30)]
    assert sum(d.allowed for d in decisions) == 25
    assert decisions[0].limit == 100 and decisions[0].remaining == 96
    assert limiter.take_offered() == 30 and limiter.take_offered() == 0
    limiter.set_fraction(0.5, 1.0)  # a larger share grants no tokens, it refills faster
    assert sum(limiter.check("k", 1.0).allowed for _ in range(100)) == 25
    assert sum(limiter.check("k", 2.0).allowed for _ in range(100)) == 50


def test_allocation_is_max_min_fair_and_sums_to_the_limit() -> None:
    shares = allocate(100.0, {"a": 10.0, "b": 500.0, "c": 0.0}, headroom=1.0, floor=0.0)
    assert abs(sum(shares.values()) - 100.0) < 1e-9
    assert shares["a"] >= 10.0 and shares["b"] > 80.0
    even = allocate(90.0, {"a": 0.0, "b": 0.0, "c": 0.0})
    assert all(abs(v - 30.0) < 1e-9 for v in even.values())


def test_tier_share_decreases_at_once_and_increases_a_period_later() -> None:
    share = TierShare("w1", 100.0, initial_workers=2, floor=0.0, headroom=1.0)
    share.report("w1", 10.0, 0.0)
    share.report("w2", 90.0, 0.0)
    assert abs(share.rebalance(0.0) - 0.1) < 1e-9  # down at once
    share.report("w1", 90.0, 1.0)
    share.report("w2", 10.0, 1.0)
    assert abs(share.rebalance(1.0) - 0.1) < 1e-9  # up only next period
    share.report("w1", 90.0, 2.0)
    share.report("w2", 10.0, 2.0)
    assert abs(share.rebalance(2.0) - 0.9) < 1e-9
    # w2 stops reporting: its share returns to w1 once it is stale.
    share.report("w1", 90.0, 6.0)
    share.rebalance(6.0)
    assert share.rebalance(7.0) == 1.0
