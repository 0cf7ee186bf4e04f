"""Reconcile engine of the simulator: the real planner, work queue, backoff and lifecycle
tables driving a simulated agent under faults.

Theory of operation (FoundationDB simulation / VOPR): one seed draws every delay, crash, lost
notification and scale change. The world is a dict-backed store (services, instance specs and
statuses) that a **reconciler** (a ``WorkQueue`` of service keys, ``plan_service`` per key,
``requeue_at`` parked with ``add_after``, a full resync every 30 virtual seconds) and an
**agent** (starts a process whenever a spec's incarnation is newer than its status, runs slow
starts and readiness probes through ``lifecycle``, counts crashes with ``backoff``) read and
write. Faults are on for ``faults_for`` virtual seconds, then off:

- processes start slowly (start and probe delays) and crash with random exit codes;
- a watch notification to the reconciler is lost with probability ``lost`` (only the periodic
  resync repairs that); readiness flaps;
- the desired count of services changes ``scale_changes`` times.

Safety is checked as things happen, so the failing step is the one reported:

- never two live processes for one instance id (for a pet: one identity, one process);
- never two records for one pet id;
- an instance is created or restarted only while its dependencies' conditions hold, judged
  from the store by this module's own code (not the planner's);
- stopping goes in reverse dependency order: no instance of S is asked to stop while a service
  depending on S still has a live process.

Liveness after ``heal_for`` more seconds without faults: every service has exactly ``desired``
instances in ``run`` (a task: completed), pets are ``<service>-0 … -(N-1)``, nothing else is
left, and a fresh plan has nothing to do. The ``down`` scenario then stops everything and
checks that the store ends empty.

    python -m corral.sim reconcile --seed 7 [--faults-for 150 --lost 0.2 ...]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from corral.control import backoff, lifecycle
from corral.control.planner import (
    Action,
    Create,
    Forget,
    ForgetService,
    Restart,
    Stop,
    affected_keys,
    build_index,
    pet_id,
    plan,
    plan_service,
)
from corral.control.workqueue import WorkQueue
from corral.model import (
    Condition,
    Dependency,
    ExitInfo,
    InstanceSpec,
    InstanceStatus,
    ServiceRecord,
    ServiceState,
)
from corral.sim.core import Simulation, report

RESYNC_EVERY = 30.0
PROBE_PERIOD = 1.0
RESTART_SLACK = 0.5  # a due restart must happen within this once its dependencies hold
ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True)
class Options:
    faults_for: float = 150.0  # virtual seconds with faults on
    heal_for: float = 250.0  # then this long without faults before liveness is checked
    lost: float = 0.2  # probability a notification to the reconciler is lost
    crash_rate: float = 0.015  # crashes per second per live process while faults are on
    slow_start: float = 4.0  # longest start or probe delay while faults are on
    flap: float = 0.005  # readiness failures per second per `run` process
    scale_changes: int = 6
    scenario: Literal["up", "down"] = "up"


class SafetyViolation(AssertionError):
    pass


@dataclass
class Proc:
    id: str
    incarnation: int
    alive: bool = True
    stopping: bool = False
    readiness: lifecycle.Readiness = field(default_factory=lifecycle.Readiness)


@dataclass
class Result:
    seed: int
    replay: str
    ok: bool
    problem: str = ""
    steps: int = 0
    events: list[str] = field(default_factory=list)

    def report(self) -> str:
        summary = f"steps: {self.steps}"
        return report(self.ok, self.problem, self.replay, summary, self.events, last=25)


def shop() -> dict[str, ServiceRecord]:
    """web → orders → {inventory (pet, after migrate completed), payments (started)}."""

    def rec(name: str, desired: int, deps: dict[str, Condition], **kw: object) -> ServiceRecord:
        depends = [Dependency(s, c) for s, c in sorted(deps.items())]
        base = ServiceRecord(name=name, release=1, desired=desired, min=0, max=4)
        return _with(base, depends_on=depends, **kw)

    return {
        "migrate": rec("migrate", 1, {}, kind="task"),
        "inventory": rec("inventory", 2, {"migrate": "completed"}, mode="pet"),
        "payments": rec("payments", 2, {}),
        "orders": rec("orders", 2, {"inventory": "healthy", "payments": "started"}),
        "web": rec("web", 2, {"orders": "healthy"}),
    }


def _with(record: ServiceRecord, **changes: object) -> ServiceRecord:
    """A copy with ``changes``: records in the simulated store are replaced, never mutated."""
    return msgspec.structs.replace(record, **changes)


class World:
    def __init__(self, seed: int, options: Options) -> None:
        self.opt = options
        self.sim = Simulation(seed, "reconcile", **_nondefault(options))
        self.rng = self.sim.random
        self.services = shop()
        self.specs: dict[str, InstanceSpec] = {}
        self.statuses: dict[str, InstanceStatus] = {}
        self.procs: dict[str, list[Proc]] = {}
        self.queue = WorkQueue()
        self.busy = False
        self.wake_at: float | None = None
        self.last_state: dict[str, ServiceState] = {}
        self.faults_until = options.faults_for
        self.log: list[str] = []
        self.violation = ""
        self.ids_used: set[str] = set()
        # (service, condition) -> since when it has held without a break (None: it does not)
        self.held_since: dict[tuple[str, Condition], float | None] = {}
        # (instance id, exit time) of an exited process -> when a reconcile pass first saw it
        self.exit_seen: dict[tuple[str, float], float] = {}

    # ------------------------------------------------------------------ helpers

    @property
    def faulty(self) -> bool:
        return self.sim.now < self.faults_until

    def note(self, text: str) -> None:
        self.log.append(f"{self.sim.now:9.3f} {text}")
        if len(self.log) > 400:
            del self.log[:200]

    def fail(self, problem: str) -> None:
        if not self.violation:
            self.violation = f"t={self.sim.now:.3f}: {problem}"
            self.note(f"VIOLATION {problem}")

    def check(self) -> None:
        if self.violation:
            raise SafetyViolation(self.violation)

    def delay(self, low: float, high: float) -> float:
        return self.rng.uniform(low, high if self.faulty else min(high, low + 0.2))

    def observed(self) -> list[tuple[InstanceSpec, InstanceStatus | None]]:
        return [(self.specs[i], self.statuses.get(i)) for i in sorted(self.specs)]

    def live_procs(self, service: str) -> list[Proc]:
        return [
            p
            for pid in sorted(self.procs)
            if pid.rpartition("-")[0] == service
            for p in self.procs[pid]
            if p.alive
        ]

    def condition_holds(self, service: str, condition: Condition) -> bool:
        """The dependency rule, judged independently of the planner."""
        for iid in sorted(self.specs):
            spec = self.specs[iid]
            status = self.statuses.get(iid)
            if spec.service != service or status is None:
                continue
            if condition == "healthy" and status.alive and status.phase == "run":
                return True
            if condition == "started" and status.alive and status.phase in ("ready", "run"):
                return True
            if (
                condition == "completed"
                and not status.alive
                and status.exit is not None
                and status.exit.code == 0
                and not status.exit.requested
            ):
                return True
        return False

    # ------------------------------------------------------------------ notifications

    def notify_reconciler(self, service: str) -> None:
        if self.faulty and self.rng.random() < self.opt.lost:
            self.note(f"lost notification for {service}")
            return
        keys = affected_keys(self.services, service)
        self.sim.schedule(self.rng.uniform(0.001, 0.05), lambda: self._enqueue(keys))

    def _enqueue(self, keys: list[str]) -> None:
        for key in keys:
            self.queue.add(key)
        self.pump()

    def notify_agent(self, instance_id: str) -> None:
        self.sim.schedule(self.rng.uniform(0.001, 0.05), lambda: self.agent_sync(instance_id))

    def write_spec(self, spec: InstanceSpec) -> None:
        self.specs[spec.id] = spec
        self.notify_agent(spec.id)
        self.notify_reconciler(spec.service)

    def write_status(self, status: InstanceStatus, service: str) -> None:
        self.statuses[status.id] = status
        self.refresh_conditions(service)
        self.notify_reconciler(service)

    def refresh_conditions(self, service: str) -> None:
        conditions: tuple[Condition, ...] = ("healthy", "started", "completed")
        for condition in conditions:
            holds = self.condition_holds(service, condition)
            since = self.held_since.get((service, condition))
            if holds and since is None:
                self.held_since[(service, condition)] = self.sim.now
            elif not holds:
                self.held_since[(service, condition)] = None

    # ------------------------------------------------------------------ reconciler

    def resync(self) -> None:
        names = sorted(set(self.services) | {s.service for s in self.specs.values()})
        for name in names:
            self.queue.add(name)
        self.pump()
        self.sim.schedule(RESYNC_EVERY, self.resync)

    def pump(self) -> None:
        if self.busy:
            return
        key = self.queue.get(self.sim.now)
        if key is None:
            deadline = self.queue.next_deadline()
            if deadline is not None and (self.wake_at is None or deadline < self.wake_at):
                self.wake_at = deadline
                self.sim.schedule(deadline - self.sim.now, self._woken)
            return
        self.busy = True
        self.sim.schedule(self.rng.uniform(0.001, 0.01), lambda: self.reconcile(key))

    def _woken(self) -> None:
        self.wake_at = None
        self.pump()

    def reconcile(self, key: str) -> None:
        index = build_index(self.services, self.observed())
        result = plan_service(key, index, self.sim.now, self.last_state.get(key))
        for spec, status in index.members.get(key, []):
            if status is not None and not status.alive and status.exit is not None:
                self.exit_seen.setdefault((spec.id, status.exit.at), self.sim.now)
        if key in result.states:
            self.last_state[key] = result.states[key][0]
        for action in result.actions:
            self.execute(action)
        if result.requeue_at is not None:
            self.queue.add_after(key, result.requeue_at)
        self.queue.done(key)
        self.queue.forget(key)
        self.busy = False
        self.pump()

    def execute(self, action: Action) -> None:
        self.note(f"reconciler {action}")
        now = self.sim.now
        if isinstance(action, Create):
            record = self.services[action.service]
            self.check_dependencies(record, f"create {action.service}")
            if action.ordinal is not None:
                iid = pet_id(action.service, action.ordinal)
                if iid in self.specs:
                    self.fail(f"second record for pet id {iid}")
            else:
                iid = self.cattle_id(action.service)
            if action.replaces is not None:
                self.check_not_early(action.replaces)
            spec = InstanceSpec(
                id=iid,
                service=action.service,
                release=action.release,
                node="sim",
                created_at=now,
                ordinal=action.ordinal,
                restarts=action.restarts,
                consecutive_crashes=action.consecutive_crashes,
                replaces=action.replaces,
            )
            self.write_spec(spec)
        elif isinstance(action, Restart):
            spec = self.specs[action.instance_id]
            self.check_dependencies(self.services[spec.service], f"restart {spec.id}")
            self.check_not_early(spec.id)
            self.write_spec(msgspec.structs.replace(spec, incarnation=spec.incarnation + 1))
        elif isinstance(action, Stop):
            spec = self.specs[action.instance_id]
            self.check_reverse_order(spec.service, spec.id)
            self.write_spec(msgspec.structs.replace(spec, desired="stopped"))
        elif isinstance(action, Forget):
            spec = self.specs.pop(action.instance_id)
            self.statuses.pop(action.instance_id, None)
            self.refresh_conditions(spec.service)
            self.notify_agent(spec.id)
            self.notify_reconciler(spec.service)
        elif isinstance(action, ForgetService):
            del self.services[action.service]
            self.notify_reconciler(action.service)

    def cattle_id(self, service: str) -> str:
        while True:
            iid = f"{service}-" + "".join(self.rng.choice(ALPHABET) for _ in range(5))
            if iid not in self.ids_used:
                self.ids_used.add(iid)
                return iid

    def check_dependencies(self, record: ServiceRecord, what: str) -> None:
        for dep in record.depends_on:
            if not self.condition_holds(dep.service, dep.condition):
                self.fail(f"{what} while {dep.service} is not {dep.condition}")

    def check_not_early(self, iid: str) -> None:
        spec = self.specs[iid]
        status = self.statuses.get(iid)
        if status is None or status.exit is None or status.exit.requested:
            return
        policy = self.services[spec.service].backoff
        due = backoff.restart_due(policy, status.exit.at, status.consecutive_crashes, iid)
        if self.sim.now < due:
            self.fail(
                f"{iid} restarted at {self.sim.now:.3f}, before its backoff ends at {due:.3f}"
            )

    def check_restarted(self, iid: str, incarnation: int, exited_at: float, due: float) -> None:
        """A crash the reconciler has seen is acted on within ``RESTART_SLACK`` of its backoff
        ending once its dependencies hold (the planner's ``requeue_at``), not at the next
        resync. A crash whose notification was lost is left to the resync and liveness."""
        seen = self.exit_seen.get((iid, exited_at))
        if seen is None:
            return
        due = max(due, seen)
        if self.sim.now < due + RESTART_SLACK:
            self.sim.schedule(
                due + RESTART_SLACK - self.sim.now,
                lambda: self.check_restarted(iid, incarnation, exited_at, due),
            )
            return
        spec = self.specs.get(iid)
        status = self.statuses.get(iid)
        if spec is None or status is None or spec.desired != "running" or status.alive:
            return
        if status.exit is None or status.exit.at != exited_at:
            return
        record = self.services.get(spec.service)
        if record is None or record.stopping or spec.incarnation != incarnation:
            return
        if spec.ordinal is not None and spec.ordinal >= record.desired:
            return
        for dep in record.depends_on:
            since = self.held_since.get((dep.service, dep.condition))
            if since is None or since > due:
                return
        self.fail(f"restart of {iid} was due at {due:.3f} and has not happened")

    def check_reverse_order(self, service: str, instance_id: str) -> None:
        record = self.services.get(service)
        if record is None or not record.stopping:
            return
        for other in sorted(self.services):
            depends = any(d.service == service for d in self.services[other].depends_on)
            if depends and self.live_procs(other):
                self.fail(f"stop {instance_id} while dependent {other} still runs")

    # ------------------------------------------------------------------ agent

    def agent_sync(self, iid: str) -> None:
        spec = self.specs.get(iid)
        live = [p for p in self.procs.get(iid, []) if p.alive]
        if spec is None or spec.desired == "stopped":
            for proc in live:
                self.stop_proc(proc)
            return
        status = self.statuses.get(iid)
        if status is not None and spec.incarnation <= status.incarnation:
            return
        # A restart of a running instance: the old process goes first. A new record (no status)
        # starts at once, as the agent contract says: that no old process of a forgotten record
        # still runs under this id is the planner's job (it forgets only what has exited).
        if live and status is not None:
            for proc in live:
                self.stop_proc(proc)
            return
        self.spawn(spec, status)

    def spawn(self, spec: InstanceSpec, status: InstanceStatus | None) -> None:
        record = self.services.get(spec.service)
        if record is not None:
            for dep in record.depends_on:
                stopping = self.services.get(dep.service)
                if (
                    stopping is not None
                    and stopping.stopping
                    and any(
                        s.desired == "stopped"
                        for s in self.specs.values()
                        if s.service == dep.service
                    )
                ):
                    self.fail(f"{spec.id} started after its dependency {dep.service} was stopped")
        if status is None:
            status = InstanceStatus(
                id=spec.id,
                restarts=spec.restarts,
                consecutive_crashes=spec.consecutive_crashes,
            )
        else:
            phase = lifecycle.next_phase(status.phase, "spawned", spec.id)
            status = msgspec.structs.replace(status, phase=phase, restarts=status.restarts + 1)
        status = msgspec.structs.replace(
            status,
            incarnation=spec.incarnation,
            alive=True,
            started_at=self.sim.now,
            run_since=None,
            updated_at=self.sim.now,
        )
        proc = Proc(spec.id, spec.incarnation)
        procs = self.procs.setdefault(spec.id, [])
        procs[:] = [p for p in procs if p.alive]
        procs.append(proc)
        if len(procs) > 1:
            self.fail(f"two live processes for {spec.id}")
        self.note(f"agent spawned {spec.id} #{spec.incarnation}")
        self.write_status(status, spec.service)
        self.sim.schedule(self.delay(0.05, self.opt.slow_start), lambda: self.started(proc))
        if self.faulty:
            crash_in = self.rng.expovariate(self.opt.crash_rate)
            if self.sim.now + crash_in < self.faults_until:
                code = self.rng.choice([1, 2, 137, 0])
                self.sim.schedule(crash_in, lambda: self.exit(proc, code))

    def current(self, proc: Proc) -> InstanceStatus | None:
        status = self.statuses.get(proc.id)
        if not proc.alive or status is None or status.incarnation != proc.incarnation:
            return None
        return status

    def transition(self, proc: Proc, event: lifecycle.InstanceEvent, **changes: object) -> None:
        status = self.current(proc)
        spec = self.specs.get(proc.id)
        if status is None or spec is None:
            return
        phase = lifecycle.next_phase(status.phase, event, proc.id)
        self.note(f"agent {proc.id} {status.phase} --{event}--> {phase}")
        self.write_status(msgspec.structs.replace(status, phase=phase, **changes), spec.service)

    def started(self, proc: Proc) -> None:
        status = self.current(proc)
        if status is None or proc.stopping or status.phase != "provision":
            return
        self.transition(proc, "started")
        record = self.services.get(proc.id.rpartition("-")[0])
        if record is not None and record.kind == "task":
            self.sim.schedule(self.delay(0.5, 5.0), lambda: self.exit(proc, 0))
        else:
            self.sim.schedule(self.delay(0.05, self.opt.slow_start), lambda: self.probe(proc))

    def probe(self, proc: Proc) -> None:
        status = self.current(proc)
        if status is None or proc.stopping or status.phase not in ("ready", "run"):
            return
        passed = not (self.faulty and self.rng.random() < 0.2)
        event, proc.readiness = lifecycle.readiness_observed(status.phase, proc.readiness, passed)
        if event is not None:
            changes: dict[str, object] = {}
            if event == "readiness_passed" and status.phase == "ready":
                changes["run_since"] = self.sim.now
            self.transition(proc, event, **changes)
        status = self.current(proc)
        if status is None:
            return
        if status.phase == "ready":
            self.sim.schedule(PROBE_PERIOD, lambda: self.probe(proc))
        elif self.faulty and self.opt.flap > 0:
            flap_in = self.rng.expovariate(self.opt.flap)
            if self.sim.now + flap_in < self.faults_until:
                self.sim.schedule(flap_in, lambda: self.flap(proc))

    def flap(self, proc: Proc) -> None:
        status = self.current(proc)
        if status is None or proc.stopping or status.phase != "run":
            return
        event, proc.readiness = lifecycle.readiness_observed("run", proc.readiness, False)
        if event is not None:
            self.transition(proc, event)
            self.sim.schedule(PROBE_PERIOD, lambda: self.probe(proc))

    def stop_proc(self, proc: Proc) -> None:
        if proc.stopping or not proc.alive:
            return
        proc.stopping = True
        spec = self.specs.get(proc.id)
        if spec is not None and spec.desired == "stopped":
            self.transition(proc, "stop_requested")
        self.sim.schedule(self.delay(0.01, 2.0), lambda: self.exit(proc, None))

    def exit(self, proc: Proc, code: int | None) -> None:
        """The process ends: ``code`` None means the platform stopped it."""
        if not proc.alive:
            return
        requested = code is None
        status = self.current(proc)
        spec = self.specs.get(proc.id)
        record = self.services.get(proc.id.rpartition("-")[0])
        if requested or proc.stopping:
            proc.alive = False
            self.note(f"agent {proc.id} #{proc.incarnation} stopped")
            if status is not None and spec is not None:
                info = ExitInfo(at=self.sim.now, reason="stopped", requested=True)
                phase = status.phase
                if phase == "destroy":
                    phase = lifecycle.next_phase(phase, "stopped", proc.id)
                self.write_status(
                    msgspec.structs.replace(status, alive=False, exit=info, phase=phase),
                    spec.service,
                )
            self.agent_sync(proc.id)  # a restart waits for this exit
            return
        if status is None or spec is None or record is None:
            proc.alive = False
            return
        policy = record.backoff
        info = ExitInfo(at=self.sim.now, reason=f"exited {code}", code=code)
        event: lifecycle.InstanceEvent
        crashes = status.consecutive_crashes
        if record.kind == "task" and code == 0:
            event = "task_completed"
        else:
            crashes = backoff.crashes_after_exit(policy, crashes, status.run_since, info.at)
            looping = backoff.is_crash_looping(policy, crashes)
            event = "exited_crash_looping" if looping else "exited_will_restart"
            due = backoff.restart_due(policy, info.at, crashes, proc.id)
            check_at = due - self.sim.now + RESTART_SLACK
            self.sim.schedule(
                check_at, lambda: self.check_restarted(proc.id, proc.incarnation, info.at, due)
            )
        self.transition(proc, event, alive=False, exit=info, consecutive_crashes=crashes)
        proc.alive = False

    # ------------------------------------------------------------------ scenario

    def scale(self) -> None:
        name = self.rng.choice(["inventory", "orders", "payments", "web"])
        record = self.services.get(name)
        if record is None or record.stopping:
            return
        desired = self.rng.randint(0 if name == "web" else 1, 3)
        self.note(f"scale {name} {record.desired} -> {desired}")
        self.services[name] = _with(record, desired=desired)
        self.notify_reconciler(name)
        if self.rng.random() < 0.5:  # and back soon: catches a pet re-created while stopping
            back = record.desired
            self.sim.schedule(self.rng.uniform(0.05, 3.0), lambda: self.rescale(name, back))

    def rescale(self, name: str, desired: int) -> None:
        record = self.services.get(name)
        if record is not None and not record.stopping:
            self.note(f"scale {name} back {record.desired} -> {desired}")
            self.services[name] = _with(record, desired=desired)
            self.notify_reconciler(name)

    def down(self) -> None:
        self.note("down: every service is stopping")
        for name in sorted(self.services):
            self.services[name] = _with(self.services[name], stopping=True)
            self.notify_reconciler(name)

    def converged(self) -> str:
        """'' when the world is what was desired, else what is off."""
        problems: list[str] = []
        for name in sorted(self.services):
            record = self.services[name]
            specs = [s for s in self.specs.values() if s.service == name]
            ids = sorted(s.id for s in specs)
            good = 0
            for spec in specs:
                status = self.statuses.get(spec.id)
                if spec.desired != "running" or status is None:
                    continue
                if record.kind == "task":
                    good += int(status.exit is not None and status.exit.code == 0)
                else:
                    good += int(status.alive and status.phase == "run")
            if len(specs) != record.desired or good != record.desired:
                problems.append(f"{name}: {good}/{record.desired} in run, records {ids}")
            if record.mode == "pet":
                want = [pet_id(name, k) for k in range(record.desired)]
                if ids != sorted(want):
                    problems.append(f"{name}: pet ids {ids}, want {sorted(want)}")
        final = plan(self.services, self.observed(), self.sim.now, self.last_state)
        if final.actions:
            problems.append(f"plan still has work: {final.actions[:3]}")
        not_run = {n: s for n, s in sorted(final.states.items()) if s[0] != "run"}
        if not_run:
            problems.append(f"states not run: {not_run}")
        return "; ".join(problems)

    def emptied(self) -> str:
        leftovers = sorted(self.services) + sorted(self.specs) + sorted(self.statuses)
        alive = sorted(pid for pid, ps in self.procs.items() if any(p.alive for p in ps))
        if leftovers or alive:
            return f"after down: records {leftovers}, live processes {alive}"
        return ""


def _nondefault(options: Options) -> dict[str, object]:
    defaults = Options()
    return {
        f.name: getattr(options, f.name)
        for f in dataclasses.fields(Options)
        if getattr(options, f.name) != getattr(defaults, f.name)
    }


def run(seed: int, options: Options | None = None) -> Result:
    """Run one seeded scenario; the result carries the replay line and what went wrong."""
    opt = options or Options()
    world = World(seed, opt)
    sim = world.sim
    for _ in range(opt.scale_changes):
        sim.schedule(world.rng.uniform(0, opt.faults_for), world.scale)
    sim.schedule(0.0, world.resync)
    end_up = opt.faults_for + opt.heal_for
    problem = ""
    try:
        sim.run_until(end_up, world.check)
        problem = world.converged()
        if not problem and opt.scenario == "down":
            world.faults_until = end_up + opt.faults_for / 2  # lost events and crashes again
            sim.schedule(0.0, world.down)
            sim.run_until(end_up + opt.faults_for / 2 + opt.heal_for, world.check)
            problem = world.emptied()
    except SafetyViolation as err:
        problem = f"safety: {err}"
    except lifecycle.ImpossibleTransition as err:
        problem = f"lifecycle: {err.message}"
    return Result(seed, sim.replay_line(), not problem, problem, sim.steps, list(world.log))
