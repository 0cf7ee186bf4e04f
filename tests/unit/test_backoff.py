"""Restart backoff: the exact curve, its jitter, the reset and the crash-loop threshold."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.control.backoff import (
    base_delay,
    crashes_after_exit,
    is_crash_looping,
    restart_delay,
    restart_due,
)
from corral.model import BackoffPolicy

DEFAULT = BackoffPolicy()  # 1 s doubling to 60 s, ±10 %, reset after 10 min, failed after 5
NO_JITTER = BackoffPolicy(jitter=0.0)

policies = st.builds(
    BackoffPolicy,
    initial=st.floats(0.001, 100.0),
    max=st.floats(0.001, 10_000.0),
    reset_after=st.floats(1.0, 10_000.0),
    failed_after=st.integers(1, 20),
    jitter=st.floats(0.0, 0.5),
)
keys = st.text(min_size=1, max_size=30)


def test_first_crash_restarts_immediately() -> None:
    assert restart_delay(DEFAULT, 1, "web-abcde") == 0.0


def test_default_curve_without_jitter_is_1_2_4_to_60_seconds() -> None:
    curve = [restart_delay(NO_JITTER, n, "web-abcde") for n in range(1, 11)]
    assert curve == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


def test_default_curve_is_within_ten_percent_of_the_doubling() -> None:
    for n, expected in [(2, 1.0), (3, 2.0), (4, 4.0), (7, 32.0), (8, 60.0), (100, 60.0)]:
        delay = restart_delay(DEFAULT, n, "inventory-0")
        assert expected * 0.9 <= delay < expected * 1.1, (n, delay)


def test_jitter_is_stable_across_replanning_and_differs_between_instances() -> None:
    first = [restart_delay(DEFAULT, 5, f"web-{i}") for i in range(20)]
    again = [restart_delay(DEFAULT, 5, f"web-{i}") for i in range(20)]
    assert first == again
    assert len(set(first)) > 10  # spread: instances do not restart in lockstep


def test_restart_due_adds_the_delay_to_the_exit_time() -> None:
    assert restart_due(NO_JITTER, 100.0, 3, "x") == 102.0


def test_huge_crash_counts_stay_at_the_cap() -> None:
    assert restart_delay(NO_JITTER, 10**9, "x") == 60.0
    assert base_delay(BackoffPolicy(initial=1e-300, max=1e300), 5000) == 1e300


def test_crash_count_resets_after_a_healthy_stretch() -> None:
    assert crashes_after_exit(DEFAULT, 4, run_since=0.0, exit_at=600.0) == 1
    assert crashes_after_exit(DEFAULT, 4, run_since=0.0, exit_at=599.0) == 5
    assert crashes_after_exit(DEFAULT, 4, run_since=None, exit_at=10_000.0) == 5
    assert crashes_after_exit(DEFAULT, 0, run_since=None, exit_at=1.0) == 1


def test_fifth_consecutive_crash_shows_failed() -> None:
    assert [is_crash_looping(DEFAULT, n) for n in range(1, 7)] == [False] * 4 + [True] * 2


def test_crash_looping_instance_is_still_retried_at_the_cap() -> None:
    assert is_crash_looping(DEFAULT, 50)
    assert 54.0 <= restart_delay(DEFAULT, 50, "orders-q2x9z") < 66.0


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(policies, st.integers(1, 200), keys)
def test_delay_is_never_negative_nor_above_max_times_1_1(
    policy: BackoffPolicy, crashes: int, key: str
) -> None:
    delay = restart_delay(policy, crashes, key)
    assert 0.0 <= delay <= policy.max * 1.1 + 1e-9


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(policies, st.integers(2, 200), keys)
def test_delay_is_the_capped_doubling_times_jitter(
    policy: BackoffPolicy, crashes: int, key: str
) -> None:
    expected = min(policy.initial * 2.0 ** (crashes - 2), policy.max)
    delay = restart_delay(policy, crashes, key)
    low = expected * (1 - policy.jitter) - 1e-9
    high = min(expected * (1 + policy.jitter), policy.max * 1.1) + 1e-9
    assert low <= delay <= high


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(policies, st.integers(1, 200))
def test_base_delay_never_decreases(policy: BackoffPolicy, crashes: int) -> None:
    assert base_delay(policy, crashes + 1) >= base_delay(policy, crashes)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(policies, st.integers(0, 100), st.floats(0, 1e6), st.floats(0, 1e6))
def test_crash_count_grows_by_one_or_resets_to_one(
    policy: BackoffPolicy, previous: int, run_since: float, exit_after: float
) -> None:
    exit_at = run_since + exit_after
    count = crashes_after_exit(policy, previous, run_since, exit_at)
    assert count == (1 if exit_at - run_since >= policy.reset_after else previous + 1)
