"""Hot-parameter limiting: one hammered value is capped in fixed memory while the long tail
passes, and values fade out by window."""

from __future__ import annotations

from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.gateway.hotparam import HotParamLimiter


def test_a_hammered_value_is_capped_while_the_long_tail_passes() -> None:
    limiter = HotParamLimiter(limit=50, window=1.0, width=1024)
    rng = Random(7)
    hot_admitted = 0
    tail_refused = 0
    for i in range(20_000):
        now = i * 0.0001  # 2 s of traffic
        if i % 2 == 0:
            hot_admitted += limiter.check("product-42", now).allowed
        else:
            tail_refused += not limiter.check(f"product-{rng.randrange(10**6)}", now).allowed
    assert hot_admitted <= 2 * 50 + 50  # two windows, plus the sliding weight of the first
    assert tail_refused == 0
    assert limiter.hot()[0][0] == "product-42"


def test_memory_does_not_grow_with_distinct_values() -> None:
    limiter = HotParamLimiter(limit=5, width=256)
    before = len(limiter._curr) + len(limiter._prev)
    for i in range(5_000):
        limiter.check(f"v{i}", i * 0.001)
    assert len(limiter._curr) + len(limiter._prev) == before
    assert len(limiter.hot()) <= limiter.top_k


def test_overrides_give_one_value_its_own_limit() -> None:
    limiter = HotParamLimiter(limit=2, overrides={"vip": 10})
    assert sum(limiter.check("vip", 0.0).allowed for _ in range(20)) == 10
    assert sum(limiter.check("other", 0.0).allowed for _ in range(20)) == 2
    refused = limiter.check("other", 0.0)
    assert refused.retry_after > 0 and refused.limit == 2


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(0, 300), min_size=50, max_size=600),
    width=st.sampled_from([8, 32, 256]),
)
def test_no_value_ever_gets_more_than_its_limit_in_a_fixed_window(
    values: list[int], width: int
) -> None:
    limiter = HotParamLimiter(limit=3, window=1.0, width=width)
    admitted: dict[tuple[int, int], int] = {}
    for i, value in enumerate(values):
        now = i * 0.01
        if limiter.check(str(value), now).allowed:
            key = (value, int(now))
            admitted[key] = admitted.get(key, 0) + 1
    assert max(admitted.values(), default=0) <= 3
