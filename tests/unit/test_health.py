"""The probe machine of one instance (Kubernetes probe semantics + readiness hysteresis)."""

from __future__ import annotations

from corral.agent.health import (
    InstanceHealth,
    Kill,
    ProbeTiming,
    Routable,
    Started,
    Unroutable,
)

FAST = ProbeTiming(period=1.0, failure_threshold=3, success_threshold=1)


def test_without_probes_an_instance_is_routable_after_staying_up_one_second() -> None:
    health = InstanceHealth({}, spawned_at=100.0)
    assert health.initial_actions() == [Started("process is up")]
    assert health.tick(100.5) == []
    assert health.next_due(100.5) == 101.0
    assert [type(a) for a in health.tick(101.0)] == [Routable]
    assert health.tick(102.0) == []


def test_startup_probe_gates_liveness_and_readiness() -> None:
    health = InstanceHealth({"startup": FAST, "liveness": FAST, "readiness": FAST}, spawned_at=0.0)
    assert health.initial_actions() == []
    assert health.due(0.0) == ["startup"]
    assert health.observe("liveness", False, "refused", 0.0) == []  # not active yet
    assert [type(a) for a in health.observe("startup", True, "HTTP 200", 0.0)] == [Started]
    assert health.due(0.0) == ["liveness", "readiness"]


def test_startup_failing_its_threshold_kills_the_process() -> None:
    health = InstanceHealth({"startup": FAST}, spawned_at=0.0)
    assert health.observe("startup", False, "refused", 1.0) == []
    assert health.observe("startup", False, "refused", 2.0) == []
    [kill] = health.observe("startup", False, "refused", 3.0)
    assert isinstance(kill, Kill) and "startup probe failed 3×" in kill.reason


def test_liveness_failures_in_a_row_kill_but_a_success_resets_the_count() -> None:
    health = InstanceHealth({"liveness": FAST}, spawned_at=0.0)
    health.observe("liveness", False, "timed out", 1.0)
    health.observe("liveness", False, "timed out", 2.0)
    health.observe("liveness", True, "connected", 3.0)
    health.observe("liveness", False, "timed out", 4.0)
    assert health.observe("liveness", False, "timed out", 5.0) == []
    [kill] = health.observe("liveness", False, "timed out", 6.0)
    assert isinstance(kill, Kill) and "liveness failed 3×" in kill.reason


def test_readiness_hysteresis_needs_two_successes_to_reenter_run() -> None:
    health = InstanceHealth({"readiness": FAST}, spawned_at=0.0)
    assert [type(a) for a in health.observe("readiness", True, "HTTP 200", 1.0)] == [Routable]
    for t in (2.0, 3.0):
        assert health.observe("readiness", False, "HTTP 503", t) == []
    [out] = health.observe("readiness", False, "HTTP 503", 4.0)
    assert isinstance(out, Unroutable)
    assert health.observe("readiness", True, "HTTP 200", 5.0) == []  # one is not enough
    assert [type(a) for a in health.observe("readiness", True, "HTTP 200", 6.0)] == [Routable]


def test_probes_come_due_every_period_after_their_initial_delay() -> None:
    timing = ProbeTiming(period=2.0, initial_delay=5.0)
    health = InstanceHealth({"readiness": timing}, spawned_at=10.0)
    assert health.due(14.9) == []
    assert health.next_due(12.0) == 15.0
    assert health.due(15.0) == ["readiness"]
    health.observe("readiness", True, "ok", 15.0)
    assert health.next_due(15.0) == 17.0


def test_an_instance_re_adopted_while_routable_owes_no_started_action() -> None:
    health = InstanceHealth({"liveness": FAST}, spawned_at=100.0)
    health.routable = health.was_routable = True  # what the agent sets for a `run` instance
    assert health.initial_actions() == []
    assert health.active() == ["liveness"]  # and its probes go on
