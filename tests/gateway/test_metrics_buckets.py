"""The gateway's latency histograms put each observation in Prometheus' ``le`` bucket."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from corral.gateway.metrics import BUCKETS, RouteStats, _bucket


@given(st.floats(min_value=0.0, max_value=100.0) | st.sampled_from(BUCKETS))
def test_an_observation_lands_in_the_first_bucket_whose_bound_it_does_not_exceed(
    value: float,
) -> None:
    assert _bucket(value) == bisect_left(BUCKETS, value)  # le: a bound counts as inside


def test_a_response_is_counted_by_status_class_and_latency_bucket() -> None:
    stats = RouteStats()
    for _ in range(300):  # past the small-int cache: the counts are real integers
        stats.observe(503, 0.001, 0.0007, b"t" * 32)
    stats.observe(200, 20.0, None)
    assert stats.status[5] == 300 and stats.status[2] == 1
    assert stats.latency[BUCKETS.index(0.001)] == 300
    assert stats.latency[len(BUCKETS)] == 1  # +Inf
    assert stats.upstream[BUCKETS.index(0.001)] == 300
    assert stats.exemplars[BUCKETS.index(0.001)] == (b"t" * 32, 0.001)
