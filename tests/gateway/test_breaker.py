"""Circuit breaker: trips on error and slow-call rates, refuses while open, probes, closes —
only along its table — and its docs are generated from that table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from corral.gateway.breaker import (
    TRANSITIONS,
    BreakerMisuse,
    BreakerSettings,
    CircuitBreaker,
    render_markdown,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "breaker.md"
FAST = BreakerSettings(
    window=10.0,
    min_calls=4,
    error_rate=50,
    slow_call_duration=1.0,
    slow_call_rate=75,
    open_time=5.0,
    max_open_time=20.0,
    half_open_probes=2,
)


def test_few_calls_never_trip_the_breaker_whatever_their_outcome() -> None:
    breaker = CircuitBreaker(FAST)
    for i in range(3):
        assert breaker.record(False, 0.1, float(i)) is None
    assert breaker.state == "closed"


def test_an_error_rate_over_the_threshold_opens_it_with_a_reason() -> None:
    breaker = CircuitBreaker(FAST)
    breaker.record(True, 0.1, 0.0)
    breaker.record(True, 0.1, 0.1)
    breaker.record(False, 0.1, 0.2)
    transition = breaker.record(False, 0.1, 0.3)
    assert transition is not None
    assert (transition.source, transition.target, transition.event) == (
        "closed",
        "open",
        "error_rate_exceeded",
    )
    assert "2 of 4 calls failed" in transition.reason
    assert not breaker.allow(1.0)


def test_slow_calls_open_it_even_when_they_succeed() -> None:
    breaker = CircuitBreaker(FAST)
    events = [breaker.record(True, 2.0, i * 0.1) for i in range(4)]
    assert events[-1] is not None and events[-1].event == "slow_rate_exceeded"


def test_old_results_slide_out_of_the_window() -> None:
    breaker = CircuitBreaker(FAST)
    for i in range(3):
        breaker.record(False, 0.1, i * 0.1)
    # 20 s later the failures are gone; fresh successes do not trip anything.
    for i in range(4):
        assert breaker.record(True, 0.1, 20.0 + i) is None
    assert breaker.snapshot(23.5)["errors"] == 0


def _open(breaker: CircuitBreaker, now: float = 0.0) -> None:
    for i in range(4):
        breaker.record(False, 0.1, now + i * 0.01)
    assert breaker.state == "open"


def test_after_the_open_time_only_n_probes_pass_and_their_success_closes_it() -> None:
    breaker = CircuitBreaker(FAST)
    _open(breaker)
    assert not breaker.allow(4.9)
    assert breaker.allow(5.1) and breaker.state == "half_open"
    assert breaker.allow(5.1)
    assert not breaker.allow(5.1)  # only half_open_probes=2 calls
    assert breaker.record(True, 0.1, 5.2) is None
    closed = breaker.record(True, 0.1, 5.3)
    assert closed is not None and closed.event == "probes_succeeded"
    assert breaker.allow(5.4) and breaker.snapshot(5.4)["calls"] == 0


def test_a_failed_probe_reopens_it_for_twice_as_long_capped() -> None:
    breaker = CircuitBreaker(FAST)
    _open(breaker)
    now = 5.1
    waits = []
    for _ in range(4):
        assert breaker.allow(now)
        breaker.record(False, 0.1, now)
        waits.append(breaker.open_time)
        now += breaker.open_time
    assert waits == [10.0, 20.0, 20.0, 20.0]
    assert breaker.reset(now).target == "closed" and breaker.open_time == 5.0


def test_every_state_change_is_an_entry_of_the_table() -> None:
    breaker = CircuitBreaker(FAST)
    seen = []
    now = 0.0
    for step in range(400):
        now += 0.37
        if breaker.allow(now):
            t = breaker.record(step % 3 != 0 or step > 300, 0.1, now)
            if t is not None:
                seen.append(t)
        if breaker.last_transition is not None and breaker.last_transition not in seen:
            seen.append(breaker.last_transition)
    assert {(t.source, t.event) for t in seen} >= {
        ("closed", "error_rate_exceeded"),
        ("open", "open_time_elapsed"),
    }
    for t in seen:
        assert TRANSITIONS[(t.source, t.event)] == t.target


def test_an_event_the_table_forbids_is_refused_with_a_hint() -> None:
    breaker = CircuitBreaker(FAST)
    with pytest.raises(BreakerMisuse) as caught:
        breaker._fire("probe_failed", "", 0.0)
    assert "docs/breaker.md" in caught.value.hint


def test_docs_breaker_md_is_generated_from_the_table() -> None:
    assert DOC.read_text() == render_markdown(), (
        "docs/breaker.md is stale: run `python -m corral.gateway.breaker_doc > docs/breaker.md`"
    )
    out = subprocess.run(
        [sys.executable, "-m", "corral.gateway.breaker_doc"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == render_markdown()
