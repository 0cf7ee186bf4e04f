"""The reconcile planner: what it decides for pets, cattle, crashes, dependencies and `down`."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.control.backoff import restart_delay
from corral.control.planner import (
    Action,
    Create,
    Forget,
    ForgetService,
    Observed,
    Restart,
    RolloutProgress,
    Stop,
    affected_keys,
    build_index,
    plan,
    plan_service,
)
from corral.model import (
    BackoffPolicy,
    Condition,
    Dependency,
    ExitInfo,
    InstanceSpec,
    InstanceStatus,
    Kind,
    Mode,
    Phase,
    ServiceRecord,
)


def svc(
    name: str,
    desired: int = 1,
    mode: Mode = "cattle",
    kind: Kind = "service",
    deps: dict[str, Condition] | None = None,
    stopping: bool = False,
) -> ServiceRecord:
    return ServiceRecord(
        name=name,
        release=3,
        desired=desired,
        min=0,
        max=10,
        mode=mode,
        kind=kind,
        depends_on=[Dependency(s, c) for s, c in sorted((deps or {}).items())],
        stopping=stopping,
    )


def inst(
    id: str,
    phase: Phase = "run",
    *,
    alive: bool = True,
    desired: str = "running",
    incarnation: int = 1,
    exit: ExitInfo | None = None,
    crashes: int = 0,
    restarts: int = 0,
    created_at: float = 0.0,
    status: bool = True,
) -> Observed:
    service, _, tail = id.rpartition("-")
    spec = InstanceSpec(
        id=id,
        service=service,
        release=3,
        node="local",
        created_at=created_at,
        ordinal=int(tail) if tail.isdigit() else None,
        desired="stopped" if desired == "stopped" else "running",
        incarnation=incarnation,
    )
    if not status:
        return spec, None
    return spec, InstanceStatus(
        id=id,
        phase=phase,
        incarnation=incarnation,
        alive=alive,
        exit=exit,
        consecutive_crashes=crashes,
        restarts=restarts,
    )


def crashed(id: str, at: float = 100.0, crashes: int = 1, code: int = 1, **kw: Any) -> Observed:
    info = ExitInfo(at=at, reason=f"exited {code}", code=code)
    phase: Phase = "failed" if crashes >= 5 else "provision"
    return inst(id, phase, alive=False, exit=info, crashes=crashes, **kw)


def services(*records: ServiceRecord) -> dict[str, ServiceRecord]:
    return {r.name: r for r in records}


def kinds(actions: Sequence[Action]) -> list[tuple[str, str]]:
    out = []
    for a in actions:
        if isinstance(a, Create):
            what = a.service if a.ordinal is None else f"{a.service}-{a.ordinal}"
        elif isinstance(a, ForgetService | RolloutProgress):
            what = a.service
        else:
            what = a.instance_id
        out.append((type(a).__name__, what))
    return out


# ----------------------------------------------------------------------------- scaling


def test_new_cattle_service_gets_desired_creates_at_its_release() -> None:
    p = plan(services(svc("web", 3)), [], now=0.0)
    assert kinds(p.actions) == [("Create", "web")] * 3
    assert all(isinstance(a, Create) and a.release == 3 for a in p.actions)
    assert p.states["web"] == ("provision", "0/3 ready")


def test_pets_get_exactly_ordinals_zero_to_n_minus_one() -> None:
    p = plan(services(svc("db", 3, "pet")), [inst("db-1")], now=0.0)
    assert kinds(p.actions) == [("Create", "db-0"), ("Create", "db-2")]


def test_pet_scale_down_stops_highest_ordinals_first_then_forgets_them() -> None:
    world = [inst("db-0"), inst("db-1"), inst("db-2"), inst("db-3")]
    p = plan(services(svc("db", 2, "pet")), world, now=0.0)
    assert kinds(p.actions) == [("Stop", "db-3"), ("Stop", "db-2")]
    world = [inst("db-0"), inst("db-1"), inst("db-2", "destroy", alive=False, desired="stopped")]
    p = plan(services(svc("db", 2, "pet")), world, now=0.0)
    assert kinds(p.actions) == [("Forget", "db-2")]


def test_pet_scaled_up_while_its_old_self_is_stopping_is_not_created_twice() -> None:
    stopping = inst("db-1", "destroy", alive=True, desired="stopped")
    p = plan(services(svc("db", 2, "pet")), [inst("db-0"), stopping], now=0.0)
    assert p.actions == []  # wait: db-1's process is still there
    gone = inst("db-1", "destroy", alive=False, desired="stopped")
    p = plan(services(svc("db", 2, "pet")), [inst("db-0"), gone], now=0.0)
    assert kinds(p.actions) == [("Forget", "db-1")]  # created on the next pass
    p = plan(services(svc("db", 2, "pet")), [inst("db-0")], now=0.0)
    assert kinds(p.actions) == [("Create", "db-1")]


def test_cattle_scale_down_stops_instances_not_in_run_first_then_the_newest() -> None:
    world = [
        inst("web-aaaaa", created_at=1.0),
        inst("web-bbbbb", created_at=5.0),
        inst("web-ccccc", "ready", created_at=2.0),
        inst("web-ddddd", created_at=3.0),
    ]
    p = plan(services(svc("web", 2)), world, now=10.0)
    assert kinds(p.actions) == [("Stop", "web-ccccc"), ("Stop", "web-bbbbb")]


def test_stopped_instance_is_forgotten_once_its_process_is_gone() -> None:
    world = [
        inst("web-aaaaa"),
        inst("web-bbbbb", "destroy", desired="stopped", alive=True),
        inst("web-ccccc", "destroy", desired="stopped", alive=False),
        inst("web-ddddd", desired="stopped", status=False),
    ]
    p = plan(services(svc("web", 1)), world, now=0.0)
    assert kinds(p.actions) == [("Forget", "web-ccccc"), ("Forget", "web-ddddd")]


# ----------------------------------------------------------------------------- crashes


def test_first_crash_of_a_pet_restarts_it_in_place_at_once() -> None:
    p = plan(services(svc("db", 1, "pet")), [crashed("db-0", at=100.0)], now=100.0)
    assert kinds(p.actions) == [("Restart", "db-0")]
    assert p.requeue_at is None


def test_crashed_cattle_is_replaced_by_a_new_instance_that_inherits_its_history() -> None:
    world = [crashed("web-aaaaa", at=50.0, crashes=1, restarts=4)]
    p = plan(services(svc("web", 1)), world, now=50.0)
    create, forget = p.actions
    assert create == Create(
        "web",
        None,
        3,
        restarts=5,
        consecutive_crashes=1,
        replaces="web-aaaaa",
        reason=create.reason,
    )
    assert "exited 1" in create.reason
    assert forget == Forget("web-aaaaa", forget.reason)


def test_repeated_crash_waits_for_its_backoff_and_says_when() -> None:
    policy = BackoffPolicy()
    delay = restart_delay(policy, 3, "db-0")
    world = [crashed("db-0", at=100.0, crashes=3)]
    p = plan(services(svc("db", 1, "pet")), world, now=100.0 + delay - 0.01)
    assert p.actions == []
    assert p.requeue_at == 100.0 + delay
    assert p.restart_at == {"db-0": 100.0 + delay}
    p = plan(services(svc("db", 1, "pet")), world, now=100.0 + delay)
    assert kinds(p.actions) == [("Restart", "db-0")]


def test_requeue_at_is_the_earliest_due_restart() -> None:
    world = [crashed("web-aaaaa", at=10.0, crashes=4), crashed("web-bbbbb", at=10.0, crashes=2)]
    p = plan(services(svc("web", 2)), world, now=10.0)
    assert p.requeue_at == min(p.restart_at.values())
    assert set(p.restart_at) == {"web-aaaaa", "web-bbbbb"}


def test_crash_looping_instance_makes_the_service_failed_with_the_reason() -> None:
    world = [crashed("db-0", at=100.0, crashes=5, code=3)]
    p = plan(services(svc("db", 1, "pet")), world, now=101.0)
    state, reason = p.states["db"]
    assert state == "failed"
    assert "db-0" in reason and "exited 3" in reason and "next restart in" in reason


def test_completed_task_is_never_restarted_and_counts_as_done() -> None:
    world = [crashed("migrate-aaaaa", at=5.0, code=0)]
    p = plan(services(svc("migrate", 1, kind="task")), world, now=500.0)
    assert p.actions == []
    assert p.states["migrate"][0] == "run"


def test_failed_task_is_retried_like_a_crashed_service() -> None:
    world = [crashed("migrate-aaaaa", at=5.0, code=2)]
    p = plan(services(svc("migrate", 1, kind="task")), world, now=5.0)
    assert kinds(p.actions) == [("Create", "migrate"), ("Forget", "migrate-aaaaa")]


def test_service_that_exits_0_is_still_a_crash() -> None:
    p = plan(services(svc("db", 1, "pet")), [crashed("db-0", code=0)], now=100.0)
    assert kinds(p.actions) == [("Restart", "db-0")]


def test_restarted_pet_waiting_for_its_new_process_is_left_alone() -> None:
    spec, status = crashed("db-0", at=1.0)
    spec.incarnation = 2  # Restart executed; the agent has not started it yet
    p = plan(services(svc("db", 1, "pet")), [(spec, status)], now=100.0)
    assert p.actions == []


# ----------------------------------------------------------------------------- dependencies


def test_service_waits_for_its_dependency_to_be_healthy_and_says_so() -> None:
    recs = services(svc("web", 2, deps={"orders": "healthy"}), svc("orders"))
    p = plan(recs, [inst("orders-aaaaa", "ready")], now=0.0)
    assert p.actions == []
    assert p.states["web"] == ("provision", "waiting for orders (healthy); 0/2 ready")
    p = plan(recs, [inst("orders-aaaaa", "run")], now=0.0)
    assert kinds(p.actions) == [("Create", "web")] * 2


def test_started_condition_is_met_by_ready_but_not_provision() -> None:
    recs = services(svc("web", deps={"orders": "started"}), svc("orders"))
    assert plan(recs, [inst("orders-aaaaa", "provision")], now=0.0).actions == []
    assert kinds(plan(recs, [inst("orders-aaaaa", "ready")], now=0.0).actions) == [
        ("Create", "web")
    ]


def test_completed_condition_needs_a_task_that_exited_0() -> None:
    recs = services(svc("db", 1, "pet", deps={"migrate": "completed"}), svc("migrate", kind="task"))
    assert plan(recs, [crashed("migrate-aaaaa", code=1, at=0.0)], now=0.0).states["db"][1] == (
        "waiting for migrate (completed); 0/1 ready"
    )
    p = plan(recs, [crashed("migrate-aaaaa", code=0)], now=200.0)
    assert ("Create", "db-0") in kinds(p.actions)


def test_unknown_dependency_blocks_with_a_clear_reason() -> None:
    p = plan(services(svc("web", deps={"ghost": "healthy"})), [], now=0.0)
    assert p.states["web"][1].startswith("waiting for ghost (not in the manifest)")


def test_running_instances_are_not_stopped_when_a_dependency_goes_bad() -> None:
    recs = services(svc("web", 1, deps={"orders": "healthy"}), svc("orders"))
    p = plan(recs, [inst("web-aaaaa"), crashed("orders-bbbbb", crashes=3)], now=100.0)
    assert all(a.instance_id != "web-aaaaa" for a in p.actions if isinstance(a, Stop | Forget))


def test_crash_restart_also_waits_for_dependencies() -> None:
    recs = services(svc("web", 1, deps={"orders": "healthy"}), svc("orders"))
    p = plan(recs, [crashed("web-aaaaa"), inst("orders-bbbbb", "ready")], now=100.0)
    assert [a for a in p.actions if isinstance(a, Create | Restart)] == []
    assert "restart waits for its dependencies" not in p.states["web"][1]  # not crash-looping
    assert p.states["web"][1].startswith("waiting for orders (healthy)")


def test_affected_keys_are_the_service_its_dependents_and_its_dependencies() -> None:
    recs = services(
        svc("web", deps={"orders": "healthy"}),
        svc("orders", deps={"inventory": "healthy", "payments": "started"}),
        svc("inventory"),
        svc("payments"),
    )
    assert affected_keys(recs, "orders") == ["inventory", "orders", "payments", "web"]
    assert affected_keys(recs, "inventory") == ["inventory", "orders"]
    assert affected_keys(recs, "gone") == ["gone"]


# ----------------------------------------------------------------------------- down


def shop(stopping: bool) -> dict[str, ServiceRecord]:
    return services(
        svc("web", 1, deps={"orders": "healthy"}, stopping=stopping),
        svc("orders", 1, deps={"inventory": "healthy", "payments": "healthy"}, stopping=stopping),
        svc("inventory", 1, "pet", stopping=stopping),
        svc("payments", 1, stopping=stopping),
    )


def test_down_stops_in_reverse_dependency_order() -> None:
    world = [inst("web-aaaaa"), inst("orders-bbbbb"), inst("inventory-0"), inst("payments-ccccc")]
    p = plan(shop(True), world, now=0.0)
    assert kinds(p.actions) == [("Stop", "web-aaaaa")]
    assert p.states["orders"] == ("destroy", "waiting for web to stop first")
    world[0] = inst("web-aaaaa", "destroy", alive=False, desired="stopped")
    p = plan(shop(True), world, now=0.0)
    assert kinds(p.actions) == [("Stop", "orders-bbbbb"), ("Forget", "web-aaaaa")]


def test_stopping_service_with_no_instances_is_forgotten() -> None:
    p = plan(shop(True), [inst("inventory-0"), inst("payments-ccccc")], now=0.0)
    assert ("ForgetService", "web") in kinds(p.actions)
    assert ("ForgetService", "orders") in kinds(p.actions)
    assert ("Stop", "inventory-0") in kinds(p.actions)


def test_crashed_instance_of_a_stopping_service_is_forgotten_not_restarted() -> None:
    p = plan(shop(True), [crashed("payments-ccccc")], now=1000.0)
    assert ("Forget", "payments-ccccc") in kinds(p.actions)
    assert p.states["payments"][0] == "destroy"


def test_instances_of_a_removed_service_are_stopped_then_forgotten() -> None:
    p = plan({}, [inst("old-aaaaa"), inst("old-bbbbb", alive=False, desired="stopped")], now=0.0)
    assert kinds(p.actions) == [("Stop", "old-aaaaa"), ("Forget", "old-bbbbb")]
    assert p.states == {}


# ----------------------------------------------------------------------------- states


def test_service_with_every_instance_in_run_is_in_run() -> None:
    p = plan(services(svc("web", 2)), [inst("web-aaaaa"), inst("web-bbbbb")], now=0.0)
    assert p.actions == []
    assert p.states["web"] == ("run", "2/2 ready")


def test_running_service_whose_desired_changed_shows_scale() -> None:
    world = [inst("web-aaaaa"), inst("web-bbbbb")]
    p = plan(services(svc("web", 4)), world, now=0.0, previous={"web": "run"})
    assert p.states["web"] == ("scale", "scaling to 4: 2/4 ready")
    world += [inst("web-ccccc", "provision"), inst("web-ddddd", "provision")]
    p = plan(services(svc("web", 4)), world, now=0.0, previous={"web": "scale"})
    assert p.states["web"][0] == "scale"
    p = plan(services(svc("web", 4)), world, now=0.0, previous={"web": "provision"})
    assert p.states["web"][0] == "provision"


# ----------------------------------------------------------------------------- properties


def test_plan_service_over_an_index_matches_the_full_pass() -> None:
    recs = shop(False)
    world = [inst("orders-bbbbb"), crashed("inventory-0"), inst("payments-ccccc", "ready")]
    full = plan(recs, world, now=100.0)
    index = build_index(recs, world)
    for name in sorted(recs):
        one = plan_service(name, index, now=100.0)
        assert one.states[name] == full.states[name]
        assert all(a in full.actions for a in one.actions)


def test_plan_does_not_depend_on_the_order_instances_are_listed_in() -> None:
    recs = shop(False)
    world = [
        inst("orders-bbbbb"),
        crashed("inventory-0", crashes=3),
        inst("payments-ccccc", "ready"),
        inst("payments-ddddd", created_at=4.0),
        inst("web-eeeee"),
        crashed("web-fffff", crashes=1),
    ]
    expected = plan(recs, world, now=100.0)
    for seed in range(5):
        shuffled = list(world)
        random.Random(seed).shuffle(shuffled)
        assert plan(recs, shuffled, now=100.0) == expected


_phases: list[Phase] = ["provision", "ready", "run", "destroy", "failed"]


@st.composite
def worlds(draw: st.DrawFn) -> tuple[dict[str, ServiceRecord], list[Observed]]:
    names = ["a", "b", "c", "d"]
    recs = {}
    for i, name in enumerate(names):
        deps = {n: draw(st.sampled_from(["healthy", "started", "completed"])) for n in names[:i]}
        deps = {n: c for n, c in deps.items() if draw(st.booleans())}
        recs[name] = svc(
            name,
            draw(st.integers(0, 3)),
            draw(st.sampled_from(["cattle", "pet"])),
            draw(st.sampled_from(["service", "task"])),
            deps,  # type: ignore[arg-type]  # drawn from the Condition literals
            stopping=draw(st.booleans()),
        )
    world: list[Observed] = []
    for name in [*names, "zz"]:
        for j in range(draw(st.integers(0, 4))):
            pet = recs.get(name) is not None and recs[name].mode == "pet"
            iid = f"{name}-{j}" if pet else f"{name}-x{j}"
            alive = draw(st.booleans())
            exit_info = None
            if not alive and draw(st.booleans()):
                exit_info = ExitInfo(
                    at=draw(st.floats(0, 100)),
                    reason="x",
                    code=draw(st.sampled_from([0, 1])),
                    requested=draw(st.booleans()),
                )
            world.append(
                inst(
                    iid,
                    draw(st.sampled_from(_phases)),
                    alive=alive,
                    desired=draw(st.sampled_from(["running", "stopped"])),
                    exit=exit_info,
                    crashes=draw(st.integers(0, 7)),
                    status=draw(st.booleans()) or alive,
                )
            )
    return recs, world


@settings(max_examples=200, deadline=None)
@given(worlds(), st.floats(0, 200))
def test_plan_invariants_hold_for_any_world(
    world: tuple[dict[str, ServiceRecord], list[Observed]], now: float
) -> None:
    recs, observed = world
    p = plan(recs, observed, now)
    ids = {spec.id for spec, _ in observed}
    by_id = {spec.id: (spec, status) for spec, status in observed}
    index = build_index(recs, observed)
    touched: list[str] = []
    for action in p.actions:
        if isinstance(action, Create):
            record = recs[action.service]
            assert not record.stopping
            # never a second record for one pet id
            if action.ordinal is not None:
                assert f"{action.service}-{action.ordinal}" not in ids
            # never started before the dependencies hold
            for dep in record.depends_on:
                assert getattr(index.facts[dep.service], dep.condition)
        elif isinstance(action, Restart):
            spec, status = by_id[action.instance_id]
            assert status is not None and not status.alive
            touched.append(action.instance_id)
        elif isinstance(action, Forget):
            spec, status = by_id[action.instance_id]
            assert status is None or not status.alive  # never forget a running process
            touched.append(action.instance_id)
        elif isinstance(action, Stop):
            spec, _ = by_id[action.instance_id]
            assert spec.desired == "running"
            record_or_none = recs.get(spec.service)
            if record_or_none is not None and record_or_none.stopping:
                for other in recs.values():
                    if any(d.service == spec.service for d in other.depends_on):
                        assert (
                            not index.facts.get(other.name) or not index.facts[other.name].may_run
                        )
            touched.append(action.instance_id)
        elif isinstance(action, ForgetService):
            assert recs[action.service].stopping and action.service not in index.members
    assert len(touched) == len(set(touched)), "one action per instance per pass"
    assert sorted(p.states) == sorted(recs)
