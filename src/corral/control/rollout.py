"""Rollouts: moving a service's instances from one template to the next, step by step.

Theory of operation (Kubernetes Deployment and Nomad update stanzas, with Corral's defaults):
- An instance is **current** when it runs the service's template (``digest``: the spec plus the
  restart generation); the others are **outdated**. A rollout is in progress while any
  outdated instance remains or a current one has not yet proved itself healthy.
- **Rolling (cattle), surge first.** At most ``desired + max_surge`` instances exist (surge
  rounded up, from a count or a percentage of desired); at least ``desired - max_unavailable``
  are available (rounded down, and never more unavailable than the disruption budget). A
  current instance counts as available only after staying in ``run`` for ``min_healthy``;
  an outdated one counts while it is in ``run``. Outdated instances that are not in ``run``
  are removed at once — they serve nothing. If surge and unavailable are both 0 the surge is 1
  (otherwise nothing could move).
- **Recreate**: stop every outdated instance, then create current ones.
- **Pets**, one at a time, highest ordinal first, updated in place (identity and ``DATA_DIR``
  kept); a pet that is not in ``run`` is updated at once — never wait on a broken pet.
- **Canary**: ``canary: N`` creates N current instances beside the outdated ones and stops
  nothing until the rollout is promoted (``corral rollout promote``, or ``auto_promote`` once
  the canaries are healthy).
- **Failure**: a current instance that crash-loops, or is not healthy ``healthy_deadline``
  after it got the template, or no progress for ``progress_deadline``. The caller rolls back
  to the last fully healthy template when ``auto_rollback`` holds.

Pure: ``now`` is passed in; the returned decision says what to create, stop or update and
when to look again.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from corral import model
from corral.control import backoff

Observed = tuple[model.InstanceSpec, model.InstanceStatus | None]


# Parts of a release that say how to run a rollout or how many instances to run, not what an
# instance is: changing them replaces no instance.
NOT_TEMPLATE = frozenset({"instances", "update", "disruption", "history", "autoscale"})


def template_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in NOT_TEMPLATE}


def template_digest(spec: dict[str, Any], restart_generation: int = 0) -> str:
    """A short stable digest of a service's instance template (the spec without the parts in
    ``NOT_TEMPLATE``, plus the restart generation): equal templates, equal digests."""
    data = model.encode_value({"spec": template_of(spec), "restart": restart_generation})
    return hashlib.sha256(data).hexdigest()[:16]


def resolve(value: int | str, desired: int, *, round_up: bool) -> int:
    """A count, or a percentage of ``desired`` (``"25%"``) rounded up or down."""
    if isinstance(value, int):
        return value
    exact = float(value.rstrip("%")) * desired / 100.0
    return math.ceil(exact - 1e-9) if round_up else math.floor(exact + 1e-9)


def is_current(record: model.ServiceRecord, spec: model.InstanceSpec) -> bool:
    if record.digest and spec.digest:
        return spec.digest == record.digest
    return spec.release == record.release


def in_run(observed: Observed) -> bool:
    """In ``run`` with the incarnation its spec asks for (a pet just given a new template is
    still running the old one until the agent restarts it)."""
    spec, status = observed
    return (
        status is not None
        and status.alive
        and status.phase == "run"
        and status.incarnation == spec.incarnation
    )


def healthy_at(observed: Observed, min_healthy: float) -> float | None:
    """When this instance counts as healthy (in ``run`` for ``min_healthy``), if in run."""
    status = observed[1]
    if not in_run(observed) or status is None:
        return None
    since = status.run_since if status.run_since is not None else status.updated_at
    return since + min_healthy


@dataclass
class Decision:
    creates: int = 0
    stops: list[str] = field(default_factory=list)  # outdated instance ids to stop (drained)
    updates: list[str] = field(default_factory=list)  # pets to update in place
    step: str = ""
    failed: str | None = None
    complete: bool = False
    promote: bool = False
    requeue_at: float | None = None
    progress: str = ""  # changes whenever the rollout moved forward

    def wake(self, at: float) -> None:
        if self.requeue_at is None or at < self.requeue_at:
            self.requeue_at = at


def decide(
    record: model.ServiceRecord,
    rollout: model.Rollout | None,
    current: Sequence[Observed],
    outdated: Sequence[Observed],
    now: float,
) -> Decision:
    policy = record.update
    decision = Decision()
    # A service's first release replaces nothing: it is done once its instances are in run.
    min_healthy = 0.0 if rollout is not None and rollout.from_release == 0 else policy.min_healthy
    healthy = 0
    for observed in current:
        at = healthy_at(observed, min_healthy)
        if at is not None and at <= now:
            healthy += 1
        elif at is not None:
            decision.wake(at)
    decision.progress = f"{healthy}/{len(current)} current healthy, {len(outdated)} outdated"
    decision.failed = _failure(record, rollout, current, now, decision)
    if decision.failed is not None:
        decision.step = f"failed: {decision.failed}"
        return decision
    if rollout is not None and rollout.state == "paused":
        decision.step = "paused (corral rollout resume)"
        return decision
    if not outdated:
        if record.mode == "cattle":
            decision.creates = max(0, record.desired - len(current))
        if healthy >= record.desired:
            decision.complete = True
            decision.step = "complete"
        else:
            decision.step = (
                f"waiting for {record.desired - healthy} current instance(s) to be healthy"
            )
        return decision
    # Only a forward update waits on canaries: a rollback or a restart goes straight through.
    canary = 0
    if rollout is not None and rollout.kind == "update" and not rollout.promoted:
        canary = policy.canary
    if record.mode == "pet":
        _pets(record, current, outdated, now, decision)
    elif canary:
        _canary(record, canary, current, outdated, healthy, decision)
    elif policy.strategy == "recreate":
        _recreate(record, current, outdated, decision)
    else:
        _rolling(record, current, outdated, healthy, decision)
    return decision


def _failure(
    record: model.ServiceRecord,
    rollout: model.Rollout | None,
    current: Sequence[Observed],
    now: float,
    decision: Decision,
) -> str | None:
    policy = record.update
    for spec, status in current:
        if in_run((spec, status)):
            continue
        if status is not None and backoff.is_crash_looping(
            record.backoff, status.consecutive_crashes
        ):
            last = status.exit.reason if status.exit else "crashed"
            return f"{spec.id} crash-loops ({status.consecutive_crashes} crashes, last: {last})"
        since = spec.since or spec.created_at
        if now - since > policy.healthy_deadline:
            return (
                f"{spec.id} was not healthy within healthy_deadline ({policy.healthy_deadline:g}s)"
            )
        decision.wake(since + policy.healthy_deadline)
    if rollout is not None and rollout.state == "progressing" and rollout.last_progress_at:
        deadline = rollout.last_progress_at + policy.progress_deadline
        if now > deadline:
            return f"no progress for progress_deadline ({policy.progress_deadline:g}s)"
        decision.wake(deadline)
    return None


def _rolling(
    record: model.ServiceRecord,
    current: Sequence[Observed],
    outdated: Sequence[Observed],
    healthy: int,
    decision: Decision,
) -> None:
    policy = record.update
    desired = record.desired
    surge = resolve(policy.max_surge, desired, round_up=True)
    unavailable = min(resolve(policy.max_unavailable, desired, round_up=False), record.disruption)
    if surge == 0 and unavailable == 0:
        surge = 1
    room = desired + surge - len(current) - len(outdated)
    decision.creates = max(0, min(desired - len(current), room))
    serving = sorted((o for o in outdated if in_run(o)), key=lambda o: (o[0].created_at, o[0].id))
    broken = [o[0].id for o in outdated if not in_run(o)]
    available = len(serving) + healthy
    can_stop = max(0, available - (desired - unavailable))
    decision.stops = broken + [o[0].id for o in serving[:can_stop]]
    waiting = [o[0].id for o in current if not in_run(o)]
    if decision.creates or decision.stops:
        decision.step = (
            f"{len(current) + decision.creates}/{desired} current, "
            f"{len(outdated) - len(decision.stops)} outdated left"
        )
    elif waiting:
        decision.step = f"waiting for {', '.join(waiting[:3])} to reach run"
    else:
        decision.step = f"waiting for current instances to stay in run {policy.min_healthy:g}s"


def _recreate(
    record: model.ServiceRecord,
    current: Sequence[Observed],
    outdated: Sequence[Observed],
    decision: Decision,
) -> None:
    decision.stops = [o[0].id for o in outdated]
    decision.step = f"recreate: stopping {len(outdated)} outdated instance(s)"


def _canary(
    record: model.ServiceRecord,
    canary: int,
    current: Sequence[Observed],
    outdated: Sequence[Observed],
    healthy: int,
    decision: Decision,
) -> None:
    decision.creates = max(0, canary - len(current))
    # Outdated instances that stopped serving are not restarted with the old template.
    decision.stops = [o[0].id for o in outdated if not in_run(o)]
    if healthy >= canary:
        if record.update.auto_promote:
            decision.promote = True
            decision.step = "canary healthy: promoting"
        else:
            decision.step = (
                f"canary: {healthy}/{canary} healthy; waiting for `corral rollout promote`"
            )
    else:
        decision.step = f"canary: {healthy}/{canary} healthy"


def _pets(
    record: model.ServiceRecord,
    current: Sequence[Observed],
    outdated: Sequence[Observed],
    now: float,
    decision: Decision,
) -> None:
    by_ordinal = sorted(outdated, key=lambda o: -(o[0].ordinal or 0))
    broken = [o[0].id for o in by_ordinal if not in_run(o)]
    if broken:
        decision.updates = broken
        decision.step = f"updating {', '.join(broken)} at once (not in run)"
        return
    settling = [
        o[0].id
        for o in current
        if (at := healthy_at(o, record.update.min_healthy)) is None or at > now
    ]
    if settling:
        decision.step = f"waiting for {settling[0]} to be healthy before the next pet"
        return
    decision.updates = [by_ordinal[0][0].id]
    decision.step = f"updating {by_ordinal[0][0].id} ({len(outdated)} pet(s) left)"
