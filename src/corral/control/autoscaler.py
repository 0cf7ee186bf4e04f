"""The autoscaler (adapter): every ``period`` it reads each autoscaled service's metric, asks the
pure rule in ``control.autoscale`` how many instances to run, and writes a new ``desired``.

For each service with an ``autoscale`` policy (and not stopping), once per its ``period``:

1. read the service record (and its revision) and its instances; the instances in ``run`` are
   the ones measured;
2. ask the ``MetricSource`` registered for the policy's metric for their average
   (``None``: no sample); a metric without a source is a missing metric ("metric rps has no
   source yet") — adding one later is registering a source under that name;
3. run ``autoscale.decide``; when the count changes, write ``desired`` with a compare-and-set on
   the record's revision (as ``corral scale`` does) together with an event that carries the
   inputs ("autoscale: cpu 91 % vs 70 % target over 3 instances → 4"). A record that changed
   meanwhile (an apply, a manual scale) makes the write fail and the next period decide again.

Events are written for every change of count, and when the kind of decision changes (a
metric goes missing, the scale-down window starts holding a scale-in): not every period.

The rule's memory (recent recommendations, recent changes) lives here, in memory. A restarted
control plane starts it afresh, seeded with the current count — so the scale-down window starts
again and nothing is scaled in early; at worst a scale-out right after a restart is not counted
against the rate limit of the minute before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from typing import Protocol

from corral import clock as clocks
from corral import model
from corral.control import autoscale, events, state
from corral.control.rollout import in_run
from corral.store.base import Compare, Put, Store

log = logging.getLogger("corral.autoscaler")

TICK_SECONDS = 1.0


class MetricSource(Protocol):
    """Where one metric comes from (the agent's CPU accounting; the gateway's counters)."""

    async def sample(self, service: str, metric: str, instances: list[str]) -> float | None:
        """The metric averaged over ``instances`` (ids of the service's instances in ``run``)
        since the previous sample: cpu as a fraction of each instance's CPU limit, rps per
        instance, latency_p95 in seconds. ``None`` when there is no sample yet."""
        ...


@dataclasses.dataclass
class _Tracked:
    state: autoscale.State
    due: float  # monotonic time of the next evaluation
    last_kind: str = ""  # of the last decision an event was written for


class Autoscaler:
    def __init__(
        self,
        store: Store,
        sources: Mapping[str, MetricSource],
        *,
        clock: clocks.Clock = clocks.SYSTEM,
        tick: float = TICK_SECONDS,
        limits: autoscale.Limits = autoscale.DEFAULT_LIMITS,
    ) -> None:
        self.store = store
        self.sources = dict(sources)
        self.clock = clock
        self.tick = tick
        self.limits = limits
        self.tracked: dict[str, _Tracked] = {}
        self.decisions: dict[str, autoscale.Decision] = {}  # the latest, per service
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("autoscaler pass failed; trying again")
            await asyncio.sleep(self.tick)

    async def run_once(self, *, force: bool = False) -> dict[str, autoscale.Decision]:
        """Evaluate every autoscaled service that is due (all of them with ``force``)."""
        services = await state.load_services(self.store)
        now = self.clock.monotonic()
        policies = {
            name: record.autoscale
            for name, record in sorted(services.items())
            if record.autoscale is not None and not record.stopping and not record.system
        }
        for name in sorted(set(self.tracked) - set(policies)):
            del self.tracked[name]
            self.decisions.pop(name, None)
        due: list[str] = []
        for name, policy in policies.items():
            tracked = self.tracked.get(name)
            if tracked is None:
                # The first look waits one period: a new service's instances are still starting.
                self.tracked[name] = _Tracked(autoscale.State(), now + policy.period)
                if force:
                    due.append(name)
            elif force or now >= tracked.due:
                due.append(name)
        if not due:
            return {}
        instances = await state.load_instances(self.store)
        decided: dict[str, autoscale.Decision] = {}
        for name in due:
            decision = await self._evaluate(name, instances)
            if decision is not None:
                decided[name] = decision
        return decided

    async def _evaluate(
        self, name: str, instances: list[state.Observed]
    ) -> autoscale.Decision | None:
        kv = await self.store.get(model.SERVICES + name)
        tracked = self.tracked.get(name)
        if kv is None or tracked is None:
            return None
        record = model.decode(kv.value, model.ServiceRecord)
        policy = record.autoscale
        if policy is None or record.stopping:
            return None
        measured = sorted(
            spec.id
            for spec, status in instances
            if spec.service == name and spec.desired == "running" and in_run((spec, status))
        )
        source = self.sources.get(policy.metric)
        observed: float | None = None
        if source is not None and measured:
            try:
                observed = await source.sample(name, policy.metric, measured)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sampling %s of %s failed", policy.metric, name)
        now = self.clock.monotonic()
        tracked.due = now + policy.period
        rule = autoscale.Policy(
            metric=policy.metric,
            target=policy.target,
            min=record.min,
            max=record.max,
            scale_down_window=policy.scale_down_window,
            limits=self.limits,
        )
        decision = autoscale.decide(
            rule,
            tracked.state,
            current=record.desired,
            observed=observed,
            measured=len(measured) if observed is not None else 0,
            now=now,
        )
        if source is None:
            decision = dataclasses.replace(
                decision, reason=f"metric {policy.metric} has no source yet: no change"
            )
        self.decisions[name] = decision
        if decision.changed:
            if await self._write(name, kv.mod_revision, record, decision):
                tracked.state.scaled(now, decision.current, decision.desired)
                tracked.last_kind = decision.kind
        elif decision.kind not in (tracked.last_kind, "steady"):
            await events.record(self.store, _event(name, decision))
            tracked.last_kind = decision.kind
        elif decision.kind == "steady":
            tracked.last_kind = decision.kind
        return decision

    async def _write(
        self, name: str, revision: int, record: model.ServiceRecord, decision: autoscale.Decision
    ) -> bool:
        record.desired = decision.desired
        event = _event(name, decision)
        txn = await self.store.txn(
            [Compare(model.SERVICES + name, "mod_revision", "==", revision)],
            [
                Put(model.SERVICES + name, model.encode(record)),
                Put(events.event_key(event.at), model.encode(event)),
            ],
        )
        if not txn.succeeded:
            log.info("%s changed while autoscaling; deciding again next period", name)
        return txn.succeeded


def _event(name: str, decision: autoscale.Decision) -> model.Event:
    return events.make(name, "service", f"autoscale: {decision.reason}", service=name)
