"""The reconcile planner: desired services + observed instances + now → actions.

Theory of operation (Kubernetes controllers: level-triggered reconciliation). ``plan`` looks at
the whole picture every time and says what to do next; it keeps no memory, so a lost watch
event, a restarted control plane or a repeated pass all lead to the same actions. It only
proposes; the reconciler executes (``Create`` → new InstanceSpec; ``Restart`` → spec
incarnation + 1; ``Stop`` → spec desired = stopped; ``Forget`` → delete spec and status;
``ForgetService`` → delete the service record) and the next pass sees the result.

Rules, per service (keys iterated sorted, so the output is deterministic):

- **Dependency gating.** No instance of S is started — created, restarted in place or replaced
  — unless every ``depends_on`` holds now: ``healthy`` = an instance of the dependency in
  ``run``; ``started`` = one in ``ready`` or ``run``; ``completed`` = one exited 0. Running
  instances are never stopped because a dependency went bad.
- **Pets** are exactly ``<service>-0 … <service>-(desired-1)``. A missing id is created (all at
  once); ordinals ≥ desired are stopped, highest first, and forgotten once their process is
  gone. A record is created only for an id that has no record at all, so one pet id never has
  two records; a pet scaled down and up again is forgotten first and created on a later pass.
- **Cattle**: ``desired`` specs with desired=running. Too few → Create; too many → Stop,
  preferring instances not in ``run``, then the newest.
- **A crash** is a spec that should run whose current incarnation exited unasked. The first
  crash restarts at once, later ones after ``backoff.restart_delay`` (stable jitter), so every
  pass computes the same due time; before it, the instance shows ``restart_at`` and the plan's
  ``requeue_at`` says when to look again. A pet is restarted in place (same id, port, data); a
  cattle instance is replaced (new id and port, inheriting ``restarts`` + 1 and the crash
  count, so a crash loop keeps its backoff) and the old record forgotten. A task that exited 0
  is completed and never restarted; a task that failed is retried like a crashed service.
- **Stopped** specs (desired = stopped) whose process is gone are forgotten.
- **Stopping** services go in reverse dependency order: S's instances are stopped only once no
  service that depends on S has an instance that may still run; a stopping service with no
  instance records left is forgotten (``ForgetService``).
- Instances of a service that has no record (orphans) are stopped and forgotten.
- **State** per service comes from ``lifecycle.service_state`` with a human reason.

Contract with the agent (what these rules assume): a new spec's status starts with the spec's
``restarts`` and ``consecutive_crashes``; on an unasked exit the agent sets ``alive`` False,
``exit``, ``consecutive_crashes = backoff.crashes_after_exit(...)``; it starts a process
whenever spec desired = running and spec incarnation > status incarnation; it stops whatever
runs for an id whose spec is deleted or set to stopped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from corral.control import backoff
from corral.control import rollout as rollouts
from corral.control.lifecycle import ServiceFacts, service_state
from corral.model import InstanceSpec, InstanceStatus, Rollout, ServiceRecord, ServiceState

Observed = tuple[InstanceSpec, InstanceStatus | None]


@dataclass(frozen=True)
class Create:
    service: str
    ordinal: int | None  # pets: the ordinal (id is `<service>-<ordinal>`); cattle: None
    release: int
    restarts: int = 0
    consecutive_crashes: int = 0
    replaces: str | None = None
    reason: str = ""


@dataclass(frozen=True)
class Restart:
    instance_id: str
    reason: str = ""


@dataclass(frozen=True)
class Stop:
    instance_id: str
    reason: str = ""
    drain: bool = False  # leave routing for the service's drain period before the signal


@dataclass(frozen=True)
class Forget:
    instance_id: str
    reason: str = ""


@dataclass(frozen=True)
class ForgetService:
    service: str
    reason: str = ""


@dataclass(frozen=True)
class Update:
    """Give a pet the service's current template in place (same id, port, DATA_DIR)."""

    instance_id: str
    reason: str = ""


@dataclass(frozen=True)
class RolloutProgress:
    """Record where the service's rollout stands (the step it waits on, its outcome)."""

    service: str
    step: str
    progress: str
    outcome: str = ""  # "", "complete", "promote", or "failed"
    reason: str = ""


Action = Create | Restart | Stop | Forget | ForgetService | Update | RolloutProgress


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    states: dict[str, tuple[ServiceState, str]] = field(default_factory=dict)
    requeue_at: float | None = None  # earliest time a delayed restart becomes due
    restart_at: dict[str, float] = field(default_factory=dict)  # instance id -> next restart

    def _due(self, instance_id: str, at: float) -> None:
        self.restart_at[instance_id] = at
        if self.requeue_at is None or at < self.requeue_at:
            self.requeue_at = at


@dataclass(frozen=True)
class _DependencyFacts:
    healthy: bool = False
    started: bool = False
    completed: bool = False
    may_run: bool = False  # some instance runs or may still be (re)started


@dataclass
class PlanIndex:
    """The observed state grouped for planning; build once per snapshot with ``build_index``."""

    services: Mapping[str, ServiceRecord]
    members: dict[str, list[Observed]]  # service -> its instances, sorted by id
    dependents: dict[str, list[str]]  # service -> services whose depends_on names it, sorted
    facts: dict[str, _DependencyFacts]
    rollouts: Mapping[str, Rollout] = field(default_factory=dict)

    def names(self) -> list[str]:
        return sorted(set(self.services) | set(self.members))


def pet_id(service: str, ordinal: int) -> str:
    return f"{service}-{ordinal}"


def exited(spec: InstanceSpec, status: InstanceStatus | None) -> bool:
    """The current incarnation's process ran and is gone (crashed, completed or stopped)."""
    return (
        status is not None
        and not status.alive
        and status.exit is not None
        and status.incarnation == spec.incarnation
    )


def completed(
    record: ServiceRecord | None, spec: InstanceSpec, status: InstanceStatus | None
) -> bool:
    """A task instance whose current incarnation exited 0 on its own."""
    if record is None or record.kind != "task" or not exited(spec, status):
        return False
    assert status is not None and status.exit is not None
    return status.exit.code == 0 and not status.exit.requested


def may_run(
    record: ServiceRecord | None, spec: InstanceSpec, status: InstanceStatus | None
) -> bool:
    """A process runs for this instance now, or will be started without a new decision."""
    if status is not None and status.alive:
        return True
    if spec.desired == "stopped":
        return False
    if status is None or status.incarnation < spec.incarnation:
        return True  # the agent is about to start it
    if record is None or record.stopping:
        return False  # exited, and a stopping or removed service is never restarted
    return not completed(record, spec, status)


def build_index(
    services: Mapping[str, ServiceRecord],
    instances: Sequence[Observed],
    rollouts: Mapping[str, Rollout] | None = None,
) -> PlanIndex:
    members: dict[str, list[Observed]] = {}
    for observed in instances:
        members.setdefault(observed[0].service, []).append(observed)
    for group in members.values():
        group.sort(key=lambda o: o[0].id)
    dependents: dict[str, list[str]] = {}
    for name in sorted(services):
        for dep in services[name].depends_on:
            dependents.setdefault(dep.service, []).append(name)
    facts: dict[str, _DependencyFacts] = {}
    for name, group in members.items():
        record = services.get(name)
        healthy = started = done = running = False
        for spec, status in group:
            running = running or may_run(record, spec, status)
            if status is None:
                continue
            if status.alive:
                healthy = healthy or status.phase == "run"
                started = started or status.phase in ("ready", "run")
            elif not done and status.exit is not None:
                done = (
                    status.exit.code == 0
                    and not status.exit.requested
                    and status.incarnation == spec.incarnation
                )
        facts[name] = _DependencyFacts(healthy, started, done, running)
    return PlanIndex(services, members, dependents, facts, rollouts or {})


def affected_keys(services: Mapping[str, ServiceRecord], name: str) -> list[str]:
    """Service keys to requeue when anything about ``name`` or its instances changes: itself,
    the services that depend on it (their gating may open) and its dependencies (their
    reverse-order stop may be unblocked)."""
    keys = {name}
    record = services.get(name)
    if record is not None:
        keys.update(dep.service for dep in record.depends_on)
    for other in services.values():
        if any(dep.service == name for dep in other.depends_on):
            keys.add(other.name)
    return sorted(k for k in keys if k in services or k == name)


def unmet_dependencies(record: ServiceRecord, index: PlanIndex) -> list[str]:
    """``["db (healthy)", …]``: the dependencies of ``record`` whose condition does not hold."""
    unmet: list[str] = []
    for dep in record.depends_on:
        facts = index.facts.get(dep.service)
        if dep.service not in index.services:
            unmet.append(f"{dep.service} (not in the manifest)")
        elif facts is None or not getattr(facts, dep.condition):
            unmet.append(f"{dep.service} ({dep.condition})")
    return unmet


def plan(
    services: Mapping[str, ServiceRecord],
    instances: Sequence[Observed],
    now: float,
    previous: Mapping[str, ServiceState] | None = None,
) -> Plan:
    """One full pass over every service. ``previous`` is the state each service showed last
    (from its ServiceStatus), used to tell ``scale`` from ``provision``; optional."""
    index = build_index(services, instances)
    result = Plan()
    prev = previous or {}
    for name in index.names():
        _plan_into(result, name, index, now, prev.get(name))
    return result


def plan_service(
    name: str, index: PlanIndex, now: float, previous: ServiceState | None = None
) -> Plan:
    """The actions and state for one service key, over a prebuilt index."""
    result = Plan()
    _plan_into(result, name, index, now, previous)
    return result


def _plan_into(
    out: Plan, name: str, index: PlanIndex, now: float, previous: ServiceState | None
) -> None:
    record = index.services.get(name)
    members = index.members.get(name, [])
    if record is None:
        _plan_orphans(out, members)
    elif record.stopping:
        _plan_stopping(out, record, members, index)
    else:
        _plan_running(out, record, members, index, now, previous)


def _plan_orphans(out: Plan, members: list[Observed]) -> None:
    for spec, status in members:
        if not may_run(None, spec, status):
            if status is None or not status.alive:
                out.actions.append(Forget(spec.id, "its service is gone"))
        elif spec.desired == "running":
            out.actions.append(Stop(spec.id, "its service is gone"))


def _plan_stopping(
    out: Plan, record: ServiceRecord, members: list[Observed], index: PlanIndex
) -> None:
    name = record.name
    if not members:
        out.actions.append(ForgetService(name, "stopped: no instances left"))
        out.states[name] = ("destroy", "stopped")
        return
    blockers = [d for d in index.dependents.get(name, []) if index.facts.get(d, _NONE).may_run]
    waiting = False
    for spec, status in members:
        if not may_run(record, spec, status):
            if status is None or not status.alive:
                out.actions.append(Forget(spec.id, "stopped"))
        elif spec.desired == "stopped":
            pass  # its process is on the way out
        elif blockers:
            waiting = True
        else:
            out.actions.append(Stop(spec.id, "service is stopping"))
    left = len(members)
    noun = "instance" if left == 1 else "instances"
    if waiting:
        out.states[name] = ("destroy", f"waiting for {', '.join(blockers)} to stop first")
    else:
        out.states[name] = ("destroy", f"stopping: {left} {noun} left")


def _plan_running(
    out: Plan,
    record: ServiceRecord,
    members: list[Observed],
    index: PlanIndex,
    now: float,
    previous: ServiceState | None,
) -> None:
    name = record.name
    unmet = unmet_dependencies(record, index)
    can_start = not unmet
    first_action = len(out.actions)
    waiting_stop = False
    counted: list[Observed] = []
    present: set[str] = set()
    for spec, status in members:
        present.add(spec.id)
        if spec.desired == "stopped":
            if status is None or not status.alive:
                out.actions.append(Forget(spec.id, "stopped"))
            else:
                waiting_stop = True
        else:
            counted.append((spec, status))

    rollout = index.rollouts.get(name)
    active = (
        rollout is not None
        and rollout.to_digest == record.digest
        and rollout.state in ("progressing", "paused")
    )
    outdated = [o for o in counted if not rollouts.is_current(record, o[0])]
    rolling_kind: str | None = None
    rollout_note = ""
    if outdated or active:
        keep, supervised, rollout_note = _plan_rollout(
            out, record, rollout if active else None, counted, present, can_start, now
        )
        rolling_kind = rollout.kind if rollout is not None and active else "update"
        if rollout is not None and active and rollout.from_release == 0:
            rolling_kind = None  # a first release is provisioning, not an update
    else:
        if record.mode == "pet":
            keep = _scale_pets(out, record, counted, present, can_start)
        else:
            keep = _scale_cattle(out, record, counted, can_start, waiting_stop)
        supervised = keep

    ready = failing = 0
    crash_note = ""
    supervised_ids = {spec.id for spec, _ in supervised}
    for spec, status in keep:
        if completed(record, spec, status):
            ready += 1
            continue
        if status is not None and status.alive and status.phase == "run":
            ready += 1
            continue
        crashes = status.consecutive_crashes if status is not None else spec.consecutive_crashes
        # A crash-looping instance shows `failed` until it is up again: also while its
        # replacement or restart is starting (still in `provision`).
        starting = status is None or status.phase == "provision" or exited(spec, status)
        looping = (status is not None and status.phase == "failed") or (
            starting and backoff.is_crash_looping(record.backoff, crashes)
        )
        note = ""
        if exited(spec, status) and spec.id in supervised_ids:
            assert status is not None
            note = _handle_exit(out, record, spec, status, now, can_start)
        if looping:
            failing += 1
            if not crash_note:
                last = status.exit.reason if status is not None and status.exit else "crashed"
                crash_note = f"{spec.id} is crash-looping ({crashes} crashes, last: {last}){note}"

    n = len(keep)
    facts = ServiceFacts(
        stopping=False,
        desired=record.desired,
        counted=len(counted),
        ready=ready,
        failed=failing,
        pending=waiting_stop or len(out.actions) > first_action or n != record.desired,
        was_running=previous in ("run", "scale", "update", "rollback")
        or (previous is None and ready > 0),
        previous=previous,
        rolling=rolling_kind,  # type: ignore[arg-type]  # "update", "rollback" or "restart"
    )
    state = service_state(facts)
    progress = f"{ready}/{record.desired} {'completed' if record.kind == 'task' else 'ready'}"
    if state == "failed":
        reason = crash_note or f"an instance is crash-looping; {progress}"
    elif unmet and state != "run":
        reason = f"waiting for {', '.join(unmet)}; {progress}"
    elif state in ("update", "rollback"):
        reason = f"{rollout_note}; {progress}" if rollout_note else progress
    elif state == "scale":
        reason = f"scaling to {record.desired}: {progress}"
    else:
        reason = progress
    out.states[name] = (state, reason)


def _plan_rollout(
    out: Plan,
    record: ServiceRecord,
    rollout: Rollout | None,
    counted: list[Observed],
    present: set[str],
    can_start: bool,
    now: float,
) -> tuple[list[Observed], list[Observed], str]:
    """One step of the service's rollout (``control.rollout``). Returns the instances that
    count towards the service, those whose crashes are handled as usual (current ones), and
    a note for the state reason."""
    if record.mode == "pet":
        counted = _scale_pets(out, record, counted, present, can_start)
    current = [o for o in counted if rollouts.is_current(record, o[0])]
    outdated = [o for o in counted if not rollouts.is_current(record, o[0])]
    decision = rollouts.decide(record, rollout, current, outdated, now)
    if decision.requeue_at is not None:
        out.requeue_at = (
            decision.requeue_at
            if out.requeue_at is None
            else min(out.requeue_at, decision.requeue_at)
        )
    label = (
        f"v{rollout.from_release} → v{rollout.to_release}" if rollout else f"to v{record.release}"
    )
    if decision.failed is None:
        if can_start:
            for _ in range(decision.creates):
                out.actions.append(Create(record.name, None, record.release, reason=label))
        by_id = {o[0].id: o for o in counted}
        for instance_id in decision.stops:
            spec, status = by_id[instance_id]
            _remove(out, spec, status, f"replaced by the rollout {label}", drain=True)
        for instance_id in decision.updates:
            out.actions.append(Update(instance_id, f"rollout {label}"))
    outcome = ""
    if decision.failed is not None:
        outcome = "failed"
    elif decision.complete:
        outcome = "complete"
    elif decision.promote:
        outcome = "promote"
    if rollout is not None and (
        outcome or rollout.step != decision.step or rollout.progress != decision.progress
    ):
        out.actions.append(
            RolloutProgress(
                record.name, decision.step, decision.progress, outcome, decision.failed or ""
            )
        )
    stopping = set(decision.stops)
    keep = [o for o in counted if o[0].id not in stopping]
    return keep, current, f"rollout {label}: {decision.step}"


def _scale_pets(
    out: Plan,
    record: ServiceRecord,
    counted: list[Observed],
    present: set[str],
    can_start: bool,
) -> list[Observed]:
    keep: list[Observed] = []
    excess: list[tuple[int, Observed]] = []
    for observed in counted:
        spec = observed[0]
        ordinal = spec.ordinal
        if ordinal is None or ordinal >= record.desired or spec.id != pet_id(spec.service, ordinal):
            excess.append((-1 if ordinal is None else ordinal, observed))
        else:
            keep.append(observed)
    for _, (spec, status) in sorted(excess, key=lambda e: (-e[0], e[1][0].id)):
        _remove(out, spec, status, f"scale down to {record.desired}")
    if can_start:
        for ordinal in range(record.desired):
            if pet_id(record.name, ordinal) not in present:
                out.actions.append(
                    Create(
                        record.name, ordinal, record.release, reason=f"ordinal {ordinal} missing"
                    )
                )
    return keep


def _scale_cattle(
    out: Plan,
    record: ServiceRecord,
    counted: list[Observed],
    can_start: bool,
    waiting_stop: bool = False,
) -> list[Observed]:
    extra = len(counted) - record.desired
    if extra > 0:
        # Stop the least useful first: not in `run`, then the newest. Instances in `run` go
        # at most `disruption` at a time (the disruption budget), the others at once.
        ranked = sorted(counted, key=_stop_preference)[:extra]
        budget = 0 if waiting_stop else record.disruption
        chosen: list[Observed] = []
        for observed in ranked:
            if rollouts.in_run(observed):
                if budget <= 0:
                    continue
                budget -= 1
            chosen.append(observed)
        for spec, status in chosen:
            _remove(out, spec, status, f"scale down to {record.desired}", drain=True)
        gone = {spec.id for spec, _ in chosen}
        return [o for o in counted if o[0].id not in gone]
    if extra < 0 and can_start:
        for _ in range(-extra):
            out.actions.append(
                Create(record.name, None, record.release, reason=f"scale up to {record.desired}")
            )
    return counted


def _stop_preference(observed: Observed) -> tuple[bool, float, str]:
    spec, status = observed
    in_run = status is not None and status.alive and status.phase == "run"
    return (in_run, -spec.created_at, spec.id)


def _remove(
    out: Plan,
    spec: InstanceSpec,
    status: InstanceStatus | None,
    reason: str,
    drain: bool = False,
) -> None:
    # An instance whose process already exited needs no stop: forget it at once.
    if exited(spec, status):
        out.actions.append(Forget(spec.id, reason))
    else:
        out.actions.append(Stop(spec.id, reason, drain=drain))


def _handle_exit(
    out: Plan,
    record: ServiceRecord,
    spec: InstanceSpec,
    status: InstanceStatus,
    now: float,
    can_start: bool,
) -> str:
    """Restart or replace an exited instance once its backoff has passed; returns a note for
    the state reason."""
    exit_info = status.exit
    assert exit_info is not None
    if exit_info.requested:
        due = exit_info.at  # stopped by the platform yet still desired: no crash, no backoff
    else:
        due = backoff.restart_due(record.backoff, exit_info.at, status.consecutive_crashes, spec.id)
    if now < due:
        out._due(spec.id, due)
        return f", next restart in {due - now:.0f}s"
    if not can_start:
        return ", restart waits for its dependencies"
    reason = f"{exit_info.reason}; restart {status.restarts + 1}"
    if record.mode == "pet":
        out.actions.append(Restart(spec.id, reason))
    else:
        out.actions.append(
            Create(
                record.name,
                None,
                record.release,
                restarts=status.restarts + 1,
                consecutive_crashes=status.consecutive_crashes,
                replaces=spec.id,
                reason=reason,
            )
        )
        out.actions.append(Forget(spec.id, f"replaced after {exit_info.reason}"))
    return ""


_NONE = _DependencyFacts()
