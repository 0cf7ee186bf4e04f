"""Alert rules (pure core): burn-rate math against brute force, for/keep_firing_for and level
hysteresis, missing data, and the evidence an alert carries."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.telemetry import alerts
from corral.telemetry.alerts import Alert, InstanceObs, Minute, Observations, Rule, Tally

PAGE = alerts.PAGE_BURN


def _run(rule: Rule, obs_at: list[tuple[float, Observations]]) -> list[tuple[float, str]]:
    active: dict[str, Alert] = {}
    seen: list[tuple[float, str]] = []
    for now, obs in obs_at:
        outcome = alerts.evaluate([rule], obs, active, now)
        active = outcome.alerts
        seen += [(now, d.action) for d in outcome.decisions]
    return seen


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0005, 0.05), st.floats(0.0, 0.3))
def test_burn_rate_equals_a_brute_force_count_over_the_requests(
    seed: int, base_error: float, burst_error: float
) -> None:
    rng = random.Random(seed)
    now_s = 100_000 * 60 + rng.uniform(0, 59)
    requests = []  # (time, bad)
    for _ in range(rng.randint(50, 1500)):
        t = now_s - rng.uniform(0, 2 * 3600)
        recent = now_s - t < 600
        requests.append((t, rng.random() < (burst_error if recent else base_error)))
    now_minute = int(now_s // 60)
    minutes: dict[int, Tally] = {}
    for t, bad in requests:
        m = int(t // 60)
        old = minutes.get(m, Tally(0, 0))
        minutes[m] = Tally(old.total + 1, old.bad + bad)
    target = 0.999
    objective = alerts.ObjectiveSeries("orders", "availability", target, 0, minutes)
    obs = Observations(now_minute, objectives=[objective])
    [check] = alerts.checks(PAGE, obs, now_s) or []

    def brute(window_s: int) -> float:
        first_minute = now_minute - window_s // 60 + 1
        inside = [bad for t, bad in requests if int(t // 60) >= first_minute]
        return (sum(inside) / len(inside)) / (1 - target) if inside else 0.0

    assert abs(check.evidence.details["burn_1h"] - brute(3600)) < 1e-3
    assert abs(check.evidence.details["burn_5m"] - brute(300)) < 1e-3
    assert check.breach == (brute(3600) > 14.4 and brute(300) > 14.4)


def test_burn_alert_needs_both_windows_and_clears_with_the_short_one() -> None:
    # An hour of 2 % errors against 99.9 %: 20× burn on both windows → fires.
    minutes = {m: Tally(100, 2) for m in range(0, 60)}
    objective = alerts.ObjectiveSeries("orders", "availability", 0.999, 0, minutes)
    obs = Observations(59, objectives=[objective])
    first = alerts.evaluate([PAGE], obs, {}, 59 * 60.0)
    assert [d.action for d in first.decisions] == ["firing"]
    assert first.decisions[0].alert.id == "slo-burn-page/orders:availability"
    # The fault ends: five clean minutes bring the 5-minute burn to 0 while the hour stays hot.
    healed = {**minutes, **{m: Tally(100, 0) for m in range(60, 65)}}
    obs = Observations(
        64, objectives=[alerts.ObjectiveSeries("orders", "availability", 0.999, 0, healed)]
    )
    second = alerts.evaluate([PAGE], obs, first.alerts, 64 * 60.0)
    assert [d.action for d in second.decisions] == ["resolved"]
    # A short burst alone (low long-window burn) never fires.
    burst = {m: Tally(100, 0) for m in range(0, 60)} | {59: Tally(100, 50)}
    obs = Observations(
        59, objectives=[alerts.ObjectiveSeries("orders", "availability", 0.999, 0, burst)]
    )
    assert alerts.evaluate([PAGE], obs, {}, 59 * 60.0).decisions == []


def _errors(rate_by_minute: dict[int, float], calls: int = 100) -> dict[str, dict[int, Minute]]:
    return {
        "orders": {m: Minute(calls, round(calls * r), [calls]) for m, r in rate_by_minute.items()}
    }


def test_error_rate_fires_only_after_for_and_resolves_only_after_keep_firing_for() -> None:
    rule = Rule("errors", "error_rate", 0.05, window_s=60, for_s=120, keep_firing_for_s=120)
    rates = {0: 0.2, 1: 0.2, 2: 0.2, 3: 0.2, 4: 0.0, 5: 0.0, 6: 0.0, 7: 0.0}
    timeline = [(m * 60.0, Observations(m, services=_errors(rates))) for m in range(8)]
    assert _run(rule, timeline) == [(120.0, "firing"), (360.0, "resolved")]


def test_a_breach_shorter_than_for_never_fires() -> None:
    rule = Rule("errors", "error_rate", 0.05, window_s=60, for_s=120)
    rates = {0: 0.2, 1: 0.2, 2: 0.0, 3: 0.2, 4: 0.0}
    timeline = [(m * 60.0, Observations(m, services=_errors(rates))) for m in range(5)]
    assert _run(rule, timeline) == []


def test_a_value_hovering_at_the_threshold_does_not_flap() -> None:
    # 6 %, 4.8 %, 6 %, 4.8 %…: below 5 % but above the 4.5 % clear level never resolves.
    rule = Rule("errors", "error_rate", 0.05, window_s=60, hysteresis=0.1)
    rates = {m: (0.06 if m % 2 == 0 else 0.048) for m in range(20)}
    rates[20] = 0.01
    timeline = [(m * 60.0, Observations(m, services=_errors(rates, 1000))) for m in range(21)]
    assert _run(rule, timeline) == [(0.0, "firing"), (1200.0, "resolved")]


def test_missing_telemetry_neither_fires_nor_resolves() -> None:
    rule = Rule("errors", "error_rate", 0.05, window_s=60)
    timeline = [
        (0.0, Observations(0, services=_errors({0: 0.5}))),
        (60.0, Observations(1, services=None)),  # the collector did not answer
        (120.0, Observations(2, services=None)),
    ]
    assert _run(rule, timeline) == [(0.0, "firing")]


def test_a_service_that_goes_silent_keeps_its_alert_until_it_is_removed() -> None:
    rule = Rule("errors", "error_rate", 0.05, window_s=60)
    declared = frozenset({"orders"})
    timeline = [
        (0.0, Observations(0, services=_errors({0: 0.5}), declared=declared)),
        (60.0, Observations(1, services={}, declared=declared)),  # down: no spans at all
        (120.0, Observations(2, services={}, declared=declared)),
        (180.0, Observations(3, services={}, declared=frozenset())),  # removed from the manifest
    ]
    assert _run(rule, timeline) == [(0.0, "firing"), (180.0, "resolved")]


def test_latency_alert_carries_its_evidence() -> None:
    rule = Rule("slow", "latency", 300_000, window_s=300, quantile=0.95, min_calls=5)
    hist = [0] * 29
    hist[20] = 10  # (750 ms, 1 s]
    obs = Observations(10, services={"orders": {10: Minute(10, 0, hist)}})
    [decision] = alerts.evaluate([rule], obs, {}, 600.0).decisions
    evidence = decision.alert.evidence
    assert evidence is not None
    assert evidence.metric == "latency_p95_us" and evidence.threshold == 300_000
    assert 750_000 < evidence.value <= 1_000_000 and evidence.window_s == 300
    assert "orders" in decision.alert.summary and "300ms" in decision.alert.summary


def test_failed_instance_fires_and_resolves_when_it_runs_or_is_gone() -> None:
    rule = alerts.INSTANCE_FAILED
    failed = [InstanceObs("web-0", "web", "failed", "exited 1"), InstanceObs("db-0", "db", "run")]
    first = alerts.evaluate([rule], Observations(0, instances=failed), {}, 0.0)
    assert [(d.action, d.alert.id, d.alert.service) for d in first.decisions] == [
        ("firing", "instance-failed/web-0", "web")
    ]
    again = alerts.evaluate([rule], Observations(0, instances=failed), first.alerts, 10.0)
    assert again.decisions == []  # fires once until it resolves
    retrying = [InstanceObs("web-0", "web", "provision")]
    again = alerts.evaluate([rule], Observations(0, instances=retrying), again.alerts, 15.0)
    assert again.decisions == []  # a restart attempt is not a recovery
    running = [InstanceObs("web-0", "web", "run")]
    healed = alerts.evaluate([rule], Observations(0, instances=running), again.alerts, 16.0)
    assert [d.action for d in healed.decisions] == ["resolved"]
    gone = alerts.evaluate([rule], Observations(0, instances=[]), again.alerts, 20.0)
    assert [d.action for d in gone.decisions] == ["resolved"]


def test_host_down_and_disk_headroom() -> None:
    down = Rule("down", "host_down", 60)
    disk = Rule("disk", "disk_headroom", 0.1)
    hosts = {"a": alerts.HostObs(1000.0, disk_used=95, disk_total=100), "b": alerts.HostObs(1095.0)}
    out = alerts.evaluate([down, disk], Observations(0, hosts=hosts), {}, 1100.0)
    assert sorted(d.alert.id for d in out.decisions) == ["disk/a", "down/a"]
