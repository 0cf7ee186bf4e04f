"""Passive ejection, panic routing, the retry budget and body framing."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from corral.gateway.config import Outlier
from corral.gateway.framing import BodyFramer, FramingError
from corral.gateway.outlier import OutlierDetector, routable
from corral.gateway.retry import RetryBudget, may_retry

ADDRS = [f"10.0.0.{i}:80" for i in range(4)]


def detector(**kw: float) -> OutlierDetector:
    d = OutlierDetector(Outlier(**kw))  # type: ignore[arg-type]
    d.set_pool(ADDRS)
    return d


def test_consecutive_5xx_eject_for_base_times_count() -> None:
    d = detector(consecutive_5xx=3, base_ejection=10)
    assert d.record(ADDRS[0], "5xx", 0) is None
    assert d.record(ADDRS[0], "5xx", 1) is None
    ejection = d.record(ADDRS[0], "5xx", 2)
    assert ejection is not None and ejection.until == 12
    assert d.is_ejected(ADDRS[0], 11.9) and not d.is_ejected(ADDRS[0], 12)
    for t in (13, 14, 15):
        second = d.record(ADDRS[0], "5xx", t)
    assert second is not None and second.until == 15 + 20  # base × times ejected


def test_a_success_resets_the_streak() -> None:
    d = detector(consecutive_5xx=2)
    d.record(ADDRS[0], "5xx", 0)
    d.record(ADDRS[0], "ok", 1)
    assert d.record(ADDRS[0], "5xx", 2) is None


def test_connect_failures_have_their_own_threshold() -> None:
    d = detector(consecutive_connect_failures=2)
    d.record(ADDRS[1], "connect", 0)
    assert d.record(ADDRS[1], "connect", 0) is not None


def test_never_more_than_max_ejection_percent_are_ejected() -> None:
    d = detector(consecutive_5xx=1, max_ejection_percent=50)
    for a in ADDRS:
        d.record(a, "5xx", 0)
    assert len(d.ejected(0)) == 2


@given(
    st.lists(st.tuples(st.integers(0, 3), st.sampled_from(["ok", "5xx", "connect"])), max_size=80)
)
def test_ejected_count_stays_within_the_cap(events: list[tuple[int, str]]) -> None:
    d = detector(consecutive_5xx=1, consecutive_connect_failures=1, max_ejection_percent=25)
    for now, (i, outcome) in enumerate(events):
        d.record(ADDRS[i], outcome, float(now))  # type: ignore[arg-type]
        assert len(d.ejected(float(now))) <= 1


def test_an_ejection_adopted_from_another_worker_lasts_as_long_and_respects_the_cap() -> None:
    d = detector(max_ejection_percent=50)  # room for 2 of 4
    assert d.adopt(ADDRS[0], until=30, now=0)
    assert d.is_ejected(ADDRS[0], 29.9) and not d.is_ejected(ADDRS[0], 30)
    assert not d.adopt(ADDRS[0], until=20, now=1)  # an older verdict changes nothing
    assert d.adopt(ADDRS[1], until=30, now=1)
    assert not d.adopt(ADDRS[2], until=30, now=2)  # a third would exceed 50 %
    assert not d.adopt(ADDRS[3], until=5, now=6)  # already over
    assert d.ejected(10) == ADDRS[:2]


def test_panic_routes_to_every_endpoint_rather_than_none() -> None:
    assert routable(ADDRS, set(ADDRS), 50) == (ADDRS, True)
    assert routable(ADDRS, set(ADDRS[:3]), 50) == (ADDRS, True)
    assert routable(ADDRS, {ADDRS[0]}, 50) == (ADDRS[1:], False)


def test_only_idempotent_or_declared_requests_are_retried_on_gateway_errors() -> None:
    assert may_retry("GET", False, None)
    assert may_retry("PUT", False, 503)
    assert not may_retry("GET", False, 500)
    assert not may_retry("POST", False, None)
    assert may_retry("POST", True, 502)


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 0.5)), max_size=300))
def test_retries_never_exceed_the_budget(steps: list[tuple[bool, float]]) -> None:
    budget = RetryBudget(percent=20, min_per_second=3)
    now = requests = retries = 0.0
    for is_request, dt in steps:
        now += dt
        if is_request:
            budget.on_request()
            requests += 1
        elif budget.try_spend(now):
            retries += 1
    assert retries <= 0.2 * requests + 3 * (now + 1) + 1e-9


def test_a_retry_storm_is_cut_to_a_fifth_of_traffic() -> None:
    budget = RetryBudget(percent=20, min_per_second=0)
    granted = 0
    for _ in range(1000):
        budget.on_request()
        granted += budget.try_spend(0.0)
    assert 195 <= granted <= 200


CHUNKED = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"


@given(st.lists(st.integers(1, len(CHUNKED)), max_size=10))
def test_chunked_end_is_found_however_the_bytes_are_split(cuts: list[int]) -> None:
    data = CHUNKED + b"GET /next"
    points = sorted({0, *[c for c in cuts if c < len(CHUNKED)], len(data)})
    framer = BodyFramer(chunked=True)
    held = b""
    consumed = 0
    done = False
    for a, b in itertools.pairwise(points):
        held += data[a:b]
        n, done = framer.feed(held)
        consumed += n
        held = held[n:]
        if done:
            break
    assert done and consumed == len(CHUNKED) and framer.body_bytes == 11


def test_content_length_body_stops_at_its_length() -> None:
    framer = BodyFramer(4)
    assert framer.feed(b"abcdefg") == (4, True)


def test_bad_chunk_size_is_refused() -> None:
    for bad in (b"zz\r\n", b"+5\r\n", b"0x5\r\n", b"1_0\r\n"):
        try:
            BodyFramer(chunked=True).feed(bad)
        except FramingError:
            continue
        raise AssertionError(bad)
