"""The rollout planner: surge first, min_healthy, deadlines, pets one at a time, canaries."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral import model
from corral.control.rollout import Observed, decide, resolve, template_digest

NEW, OLD = "new", "old"


def record(desired: int = 4, mode: str = "cattle", **update: object) -> model.ServiceRecord:
    policy = model.UpdatePolicy(**{"min_healthy": 10.0, **update})  # type: ignore[arg-type]
    return model.ServiceRecord(
        name="web",
        release=2,
        desired=desired,
        min=0,
        max=100,
        mode=mode,  # type: ignore[arg-type]
        digest=NEW,
        update=policy,
    )


def inst(
    i: int,
    digest: str,
    *,
    phase: str = "run",
    run_since: float | None = 0.0,
    alive: bool = True,
    crashes: int = 0,
    since: float = 0.0,
    ordinal: int | None = None,
) -> Observed:
    spec = model.InstanceSpec(
        id=f"web-{i}",
        service="web",
        release=2 if digest == NEW else 1,
        node="n",
        created_at=float(i),
        digest=digest,
        since=since,
        ordinal=ordinal,
    )
    status = model.InstanceStatus(
        id=spec.id,
        phase=phase,  # type: ignore[arg-type]
        alive=alive,
        run_since=run_since if phase == "run" else None,
        consecutive_crashes=crashes,
        incarnation=1,
    )
    return spec, status


def test_percentages_round_surge_up_and_unavailable_down() -> None:
    assert resolve("25%", 4, round_up=True) == 1
    assert resolve("25%", 5, round_up=True) == 2
    assert resolve("25%", 5, round_up=False) == 1
    assert resolve(3, 10, round_up=True) == 3


def test_surge_first_creates_before_stopping_anything() -> None:
    old = [inst(i, OLD) for i in range(4)]
    d = decide(record(), None, [], old, now=100.0)
    assert d.creates == 1 and d.stops == []


def test_an_old_instance_stops_only_after_a_new_one_stayed_healthy_for_min_healthy() -> None:
    old = [inst(i, OLD) for i in range(4)]
    new = [inst(10, NEW, run_since=95.0)]
    waiting = decide(record(), None, new, old, now=100.0)
    assert waiting.stops == [] and waiting.requeue_at == 105.0
    ready = decide(record(), None, new, old, now=105.0)
    assert ready.stops == ["web-0"]  # the oldest outdated instance first


def test_outdated_instances_that_serve_nothing_are_removed_at_once() -> None:
    old = [inst(0, OLD, phase="provision", alive=False), inst(1, OLD), inst(2, OLD), inst(3, OLD)]
    d = decide(record(), None, [], old, now=100.0)
    assert d.stops == ["web-0"]


def test_a_crash_looping_new_instance_fails_the_rollout() -> None:
    new = [inst(10, NEW, phase="provision", alive=False, crashes=5)]
    d = decide(record(), None, new, [inst(i, OLD) for i in range(4)], now=100.0)
    assert d.failed is not None and "crash-loops" in d.failed
    assert d.creates == 0 and d.stops == []


def test_a_new_instance_not_healthy_by_healthy_deadline_fails_the_rollout() -> None:
    new = [inst(10, NEW, phase="ready", since=5.0)]
    assert decide(record(healthy_deadline=30.0), None, new, [], now=34.0).failed is None
    failed = decide(record(healthy_deadline=30.0), None, new, [], now=36.0).failed
    assert failed is not None and "healthy_deadline" in failed


def test_no_progress_for_progress_deadline_fails_the_rollout() -> None:
    rollout = model.Rollout(
        service="web",
        kind="update",
        from_release=1,
        to_release=2,
        to_digest=NEW,
        started_at=0.0,
        last_progress_at=10.0,
    )
    new = [inst(10, NEW, run_since=0.0)]
    old = [inst(i, OLD) for i in range(4)]
    d = decide(record(progress_deadline=60.0), rollout, new, old, now=71.0)
    assert d.failed is not None and "progress_deadline" in d.failed


def test_a_paused_rollout_does_nothing() -> None:
    rollout = model.Rollout(
        service="web",
        kind="update",
        from_release=1,
        to_release=2,
        to_digest=NEW,
        started_at=0.0,
        state="paused",
    )
    d = decide(record(), rollout, [], [inst(i, OLD) for i in range(4)], now=1.0)
    assert (d.creates, d.stops, d.step) == (0, [], "paused (corral rollout resume)")


def test_recreate_stops_every_outdated_instance_first() -> None:
    old = [inst(i, OLD) for i in range(3)]
    d = decide(record(desired=3, strategy="recreate"), None, [], old, now=1.0)
    assert d.creates == 0 and sorted(d.stops) == ["web-0", "web-1", "web-2"]


def test_pets_update_one_at_a_time_highest_ordinal_first() -> None:
    pets = [inst(i, OLD, ordinal=i) for i in range(3)]
    first = decide(record(desired=3, mode="pet"), None, [], pets, now=100.0)
    assert first.updates == ["web-2"]
    updated = [inst(2, NEW, ordinal=2, run_since=95.0)]
    waiting = decide(record(desired=3, mode="pet"), None, updated, pets[:2], now=100.0)
    assert waiting.updates == []
    later = decide(record(desired=3, mode="pet"), None, updated, pets[:2], now=106.0)
    assert later.updates == ["web-1"]


def test_a_pet_that_is_not_in_run_is_updated_at_once() -> None:
    pets = [inst(0, OLD, ordinal=0), inst(1, OLD, ordinal=1, phase="failed", alive=False)]
    updated = [inst(2, NEW, ordinal=2, phase="ready")]  # still settling
    d = decide(record(desired=3, mode="pet"), None, updated, pets, now=100.0)
    assert d.updates == ["web-1"]


def test_a_canary_waits_for_promotion_and_stops_nothing() -> None:
    update = model.Rollout(
        service="web", kind="update", from_release=1, to_release=2, to_digest=NEW, started_at=0.0
    )
    old = [inst(i, OLD) for i in range(4)]
    d = decide(record(canary=1), update, [], old, now=1.0)
    assert (d.creates, d.stops) == (1, [])
    healthy = [inst(10, NEW, run_since=0.0)]
    d = decide(record(canary=1), update, healthy, old, now=20.0)
    assert d.creates == 0 and d.stops == [] and "promote" in d.step
    auto = decide(record(canary=1, auto_promote=True), update, healthy, old, now=20.0)
    assert auto.promote
    rollback = model.Rollout(
        service="web",
        kind="rollback",
        from_release=2,
        to_release=3,
        to_digest=NEW,
        started_at=0.0,
    )
    assert decide(record(canary=1), rollback, [], old, now=1.0).creates == 1  # surge, no canary
    assert decide(record(canary=1), rollback, healthy, old, now=20.0).stops == ["web-0"]


def test_the_template_digest_ignores_scale_and_rollout_settings() -> None:
    spec = {"command": ["x"], "instances": 3, "update": {"canary": 0}}
    same = {"command": ["x"], "instances": 9, "update": {"canary": 2}}
    assert template_digest(spec) == template_digest(same)
    assert template_digest(spec) != template_digest({"command": ["y"]})
    assert template_digest(spec, 1) != template_digest(spec, 0)


@settings(max_examples=200, deadline=None)
@given(
    desired=st.integers(1, 12),
    surge=st.sampled_from([0, 1, 2, "25%", "50%", "100%"]),
    unavailable=st.sampled_from([0, 1, "25%"]),
    steps=st.integers(1, 60),
)
def test_a_rolling_update_keeps_availability_and_always_finishes(
    desired: int, surge: int | str, unavailable: int | str, steps: int
) -> None:
    # Simulate: created instances become healthy one tick later; stops take effect at once.
    rec = record(desired=desired, max_surge=surge, max_unavailable=unavailable, min_healthy=0.0)
    surge_n = resolve(surge, desired, round_up=True)
    unavail_n = min(resolve(unavailable, desired, round_up=False), rec.disruption)
    if surge_n == 0 and unavail_n == 0:
        surge_n = 1
    old = [inst(i, OLD) for i in range(desired)]
    new: list[Observed] = []
    pending = 0
    next_id = 100
    for tick in range(200):
        for _ in range(pending):
            new.append(inst(next_id, NEW, run_since=float(tick)))
            next_id += 1
        pending = 0
        d = decide(rec, None, new, old, now=float(tick))
        assert d.failed is None
        old = [o for o in old if o[0].id not in set(d.stops)]
        pending = d.creates
        serving = len(old) + len(new)
        assert serving >= desired - unavail_n, "availability dropped below the budget"
        assert len(old) + len(new) + pending <= desired + surge_n, "surged past max_surge"
        if d.complete:
            break
    else:
        raise AssertionError("the rollout never completed")
    assert not old and len(new) == desired
