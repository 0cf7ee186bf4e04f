"""The autoscale rule: the Kubernetes HPA's math, windows and rate limits, exactly.

Reference: kubernetes.io, "Horizontal Pod Autoscaling" — algorithm details (tolerance 0.1,
missing and not-ready pods) and configurable scaling behavior (the default policies)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.control.autoscale import Decision, Policy, State, decide, format_value, recommend
from corral.errors import ManifestError
from corral.manifest import parse_manifest
from corral.manifest.records import service_record, service_spec, spec_from_dict
from corral.model import AutoscalePolicy

CPU = Policy(metric="cpu", target=0.7, min=1, max=20)


def step(
    policy: Policy, state: State, current: int, observed: float | None, now: float
) -> Decision:
    """One evaluation with every instance measured; records the change as written."""
    decision = decide(
        policy,
        state,
        current=current,
        observed=observed,
        measured=current if observed is not None else 0,
        now=now,
    )
    state.scaled(now, decision.current, decision.desired)
    return decision


def test_cpu_above_target_scales_out_to_ceil_of_current_times_ratio_with_its_inputs() -> None:
    decision = step(CPU, State(), 3, 0.91, now=0.0)
    assert (decision.desired, decision.kind) == (4, "scale")
    assert decision.reason == "cpu 91 % vs 70 % target over 3 instances → 4"


def test_a_ratio_within_the_tolerance_keeps_the_count() -> None:
    for observed in (0.64, 0.7, 0.76):
        decision = step(CPU, State(), 3, observed, now=0.0)
        assert (decision.desired, decision.kind) == (3, "steady"), observed
        assert "within tolerance 10%" in decision.reason
    assert step(CPU, State(), 3, 0.78, now=0.0).desired == 4  # ratio 1.11


def test_an_exact_multiple_of_the_target_does_not_round_up_on_float_noise() -> None:
    assert step(CPU, State(), 3, 1.4, now=0.0).desired == 6  # 1.4 / 0.7 × 3 = 6.000…1
    assert recommend(CPU, current=5, observed=0.35, measured=5) == 3  # 2.5 → 3


def test_scale_out_is_limited_to_double_or_four_more_per_15_seconds() -> None:
    policy = Policy(metric="cpu", target=0.5, min=1, max=100)
    state = State()
    first = step(policy, state, 1, 5.0, now=0.0)  # wants 10; +4 beats +100 % from 1
    assert (first.desired, first.raw) == (5, 10)
    assert "limited to 5 (at most +100 % or +4 per 15s)" in first.reason
    held = step(policy, state, 5, 5.0, now=10.0)  # the 15 s period that started at 1 is full
    assert (held.desired, held.kind) == (5, "held")
    again = step(policy, state, 5, 5.0, now=15.0)  # a new period: doubling beats +4
    assert again.desired == 10
    assert step(policy, state, 10, 5.0, now=30.0).desired == 20


def test_scale_in_waits_for_the_window_then_removes_one_instance_per_minute() -> None:
    state = State()
    counts = []
    current = 4
    for now in range(0, 481, 15):
        decision = step(CPU, state, current, 0.05, now=float(now))
        current = decision.desired
        counts.append((now, current))
    assert all(count == 4 for now, count in counts if now < 300)
    assert dict(counts)[300] == 3
    assert dict(counts)[345] == 3
    assert dict(counts)[360] == 2
    assert dict(counts)[420] == 1
    assert dict(counts)[480] == 1  # min


def test_the_window_holds_at_the_highest_recent_recommendation_and_says_so() -> None:
    state = State()
    step(CPU, state, 4, 0.7, now=0.0)
    step(CPU, state, 4, 0.7 * 6 / 4, now=15.0)  # asks for 6 …
    decision = decide(CPU, state, current=6, observed=0.1, measured=6, now=30.0)
    assert (decision.desired, decision.kind) == (6, "held")
    assert decision.reason == (
        "cpu 10 % vs 70 % target over 6 instances → 1; held at 6 by the 300s scale-down window"
    )


def test_counts_stay_within_min_and_max() -> None:
    policy = Policy(metric="cpu", target=0.5, min=2, max=6)
    capped = step(policy, State(), 4, 2.0, now=0.0)
    assert capped.desired == 6 and "bounded to max 6" in capped.reason
    state = State()
    floor = [step(policy, state, 3, 0.0, now=float(t)) for t in (0, 300)][-1]
    assert floor.desired == 2
    assert step(policy, State(), 9, None, now=0.0).desired == 6  # outside: no metric needed
    assert step(policy, State(), 1, None, now=0.0).desired == 2


def test_a_missing_metric_changes_nothing_and_says_so() -> None:
    state = State()
    step(CPU, state, 3, 0.7, now=0.0)
    before = list(state.recommendations)
    decision = step(CPU, state, 3, None, now=15.0)
    assert (decision.desired, decision.kind) == (3, "missing")
    assert decision.reason == "no cpu samples over 3 instances: no change"
    assert state.recommendations == before


def test_a_service_scaled_to_zero_is_not_autoscaled() -> None:
    policy = Policy(metric="cpu", target=0.5, min=1, max=4)
    decision = step(policy, State(), 0, 5.0, now=0.0)
    assert (decision.desired, decision.kind) == (0, "disabled")


def test_instances_not_yet_measured_count_as_idle_on_the_way_up() -> None:
    # 2 of 4 measured at 91 %: with the 2 new ones at 0 the average is 46 %: no second scale-out.
    assert recommend(CPU, current=4, observed=0.91, measured=2) == 4
    # 3 of 4 at 140 %: 105 % over 4 → 6.
    assert recommend(CPU, current=4, observed=1.4, measured=3) == 6


def test_instances_not_yet_measured_count_as_busy_on_the_way_down() -> None:
    # 1 of 4 measured at 7 %; the 3 others count as 100 % (cpu fallback): 76.75 % → no change.
    assert recommend(CPU, current=4, observed=0.07, measured=1) == 4
    rps = Policy(metric="rps", target=100.0, min=1, max=20)
    # rps falls back to the target: (10 × 2 + 100 × 2) / 4 = 55 → ceil(0.55 × 4) = 3.
    assert recommend(rps, current=4, observed=10.0, measured=2) == 3


def test_a_restarted_autoscaler_does_not_scale_in_before_a_full_window() -> None:
    fresh = State()
    decisions = [step(CPU, fresh, 5, 0.05, now=1000.0 + t) for t in range(0, 300, 15)]
    assert all(d.desired == 5 for d in decisions)
    assert step(CPU, fresh, 5, 0.05, now=1300.0).desired == 4


def test_a_flapping_metric_does_not_flap_the_scale() -> None:
    state = State()
    current, history = 2, [2]
    for i in range(240):  # an hour, alternating far above and far below the target
        observed = 1.2 if i % 2 == 0 else 0.1
        current = step(CPU, state, current, observed, now=i * 15.0).desired
        history.append(current)
    changes = [b - a for a, b in itertools.pairwise(history) if b != a]
    assert changes and all(change > 0 for change in changes), changes
    assert history[-1] == max(history)


def test_metric_values_read_as_people_write_them() -> None:
    assert format_value("cpu", 0.914) == "91 %"
    assert format_value("rps", 120.0) == "120 rps"
    assert format_value("latency_p95", 0.25) == "250ms"


# -- the manifest ------------------------------------------------------------------------------


def service(autoscale: str, instances: str = "{min: 1, max: 4}") -> str:
    return f"services: {{web: {{command: x, instances: {instances}, autoscale: {autoscale}}}}}"


def test_an_autoscale_policy_is_stored_with_its_target_as_a_fraction() -> None:
    text = service("{target: 70%, period: 5s, scale_down_window: 1m}")
    web = parse_manifest(text, source="m", base_dir=Path("/")).manifest.services["web"]
    record = service_record("web", web, release=1, base_dir=Path("/"))
    assert record.autoscale == AutoscalePolicy(
        metric="cpu", target=0.7, period=5.0, scale_down_window=60.0
    )
    spec = service_spec("web", web, Path("/"))
    assert spec["autoscale"]["target"] == "70%"
    assert spec_from_dict(spec).autoscale == web.autoscale  # a stored spec validates back


def test_latency_and_rps_targets_are_seconds_and_a_number() -> None:
    for text, target in (
        ("{metric: latency_p95, target: 250ms}", 0.25),
        ("{metric: rps, target: 50}", 50.0),
    ):
        web = parse_manifest(service(text), source="m", base_dir=Path("/")).manifest.services["web"]
        policy = service_record("web", web, release=1, base_dir=Path("/")).autoscale
        assert policy is not None and policy.target == target


@pytest.mark.parametrize(
    ("text", "instances", "path", "hint"),
    [
        ("{target: 70%}", "3", "services.web.autoscale", "instances: {min: 3, max: 6}"),
        ("{target: 70%}", "{min: 0, max: 3}", "services.web.autoscale", "min: 1"),
        ("{target: 0.7}", "{min: 1, max: 3}", "services.web.autoscale.target", "70%"),
        ("{metric: rpm, target: 5}", "{min: 1, max: 3}", "services.web.autoscale.metric", "rps"),
    ],
)
def test_a_bad_autoscale_policy_is_a_problem_at_its_path_with_a_hint(
    text: str, instances: str, path: str, hint: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(service(text, instances), source="m", base_dir=Path("/"))
    [problem] = caught.value.problems
    assert problem.path == path
    assert hint in problem.hint


# -- properties ------------------------------------------------------------------------------

policies = st.builds(
    lambda low, span, target, window: Policy(
        metric="cpu", target=target, min=low, max=low + span, scale_down_window=window
    ),
    st.integers(1, 5),
    st.integers(0, 30),
    st.floats(0.1, 2.0),
    st.floats(60.0, 600.0),
)
observations = st.lists(st.one_of(st.none(), st.floats(0.0, 10.0)), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(policies, observations, st.floats(1.0, 60.0), st.data())
def test_any_run_stays_in_bounds_and_within_the_rate_limits(
    policy: Policy, values: list[float | None], period: float, data: st.DataObject
) -> None:
    current = data.draw(st.integers(policy.min, policy.max))
    state = State()
    timeline: list[tuple[float, int]] = [(-1e9, current)]

    def count_at(t: float) -> int:
        return [c for at, c in timeline if at <= t][-1]

    for i, observed in enumerate(values):
        now = i * period
        decision = step(policy, state, current, observed, now)
        assert policy.min <= decision.desired <= policy.max
        if observed is None:
            assert decision.desired == current
        start_up = count_at(now - policy.limits.up_period)
        assert decision.desired <= max(2 * start_up, start_up + 4, current)
        assert decision.desired >= count_at(now - policy.limits.down_period) - 1
        current = decision.desired
        timeline.append((now, current))


@settings(max_examples=100, deadline=None)
@given(policies, st.floats(1.5, 5.0), st.floats(0.0, 0.5), st.integers(20, 80))
def test_a_metric_swinging_around_the_target_never_scales_in_within_the_window(
    policy: Policy, high: float, low: float, steps: int
) -> None:
    state = State()
    current = policy.min
    last_up: float | None = None
    for i in range(steps):
        now = i * 15.0
        observed = (high if i % 3 == 0 else low) * policy.target
        decision = step(policy, state, current, observed, now)
        if decision.raw is not None and decision.raw > decision.current:
            last_up = now
        if decision.desired < current:
            assert last_up is None or now - last_up >= policy.scale_down_window
        current = decision.desired
