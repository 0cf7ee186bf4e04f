"""The reconciler (adapter): keeps the instances of every service converging on its desired
state.

Level-triggered, in the controller-runtime shape: a watch on the Store feeds a local cache and
puts service keys on a ``WorkQueue`` (pure, deduplicating, never one key twice at once); a
worker takes ready keys, asks the pure planner what to do given desired and observed state, and
writes the resulting instance specs. A full resync every 30 s re-queues every key, so a lost
event is repaired. Delayed restarts come back as ``requeue_at``. The only decisions made here
are I/O ones (ids, ports); everything else is ``control.planner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral import clock, ids, model
from corral.control import events, planner, releases
from corral.control.workqueue import WorkQueue
from corral.errors import Compacted
from corral.runtime.ports import allocate_port
from corral.store.base import Compare, Delete, Op, Put, Store

log = logging.getLogger("corral.reconciler")

RESYNC_SECONDS = 30.0
EVENTS_KEPT = 5000
# Watch history kept behind the head: enough for any watcher that is seconds behind; one that
# is further behind gets `Compacted` and re-lists.
HISTORY_KEPT = 10_000


class Reconciler:
    def __init__(
        self,
        store: Store,
        *,
        node: str = "local",
        endpoints_file: Path | None = None,
        resync: float = RESYNC_SECONDS,
    ) -> None:
        self.store = store
        self.node = node
        self.endpoints_file = endpoints_file
        self.resync = resync
        self.queue = WorkQueue()
        self.services: dict[str, model.ServiceRecord] = {}
        self.service_status: dict[str, model.ServiceStatus] = {}
        self.specs: dict[str, model.InstanceSpec] = {}
        self.statuses: dict[str, model.InstanceStatus] = {}
        self.rollouts: dict[str, model.Rollout] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._endpoints: dict[str, list[str]] | None = None
        self._seen: dict[str, int] = {}
        self.passes = 0
        self.on_pass: Callable[[float], None] | None = None  # pass duration (metrics)

    async def start(self) -> None:
        revision = await self._relist()
        self._tasks = [
            asyncio.create_task(self._watch(revision + 1)),
            asyncio.create_task(self._worker()),
            asyncio.create_task(self._resync_loop()),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- cache --------------------------------------------------------------------------------

    async def _relist(self) -> int:
        self.services.clear()
        self.service_status.clear()
        self.specs.clear()
        self.statuses.clear()
        self.rollouts.clear()
        listing = await self.store.range(model.PREFIX)
        for kv in listing.kvs:
            self._cache(kv.key, kv.value)
        for name in sorted(set(self.services) | {s.service for s in self.specs.values()}):
            self.queue.add(name)
        self._wake.set()
        return listing.revision

    def _local_write(self, key: str, value: bytes | None, revision: int) -> None:
        """Apply our own write to the cache at once and requeue what it affects (a forgotten
        instance may unblock its service). The watch echoes it later; ``_seen`` makes the
        echo of an older write unable to roll the cache back."""
        self._seen[key] = revision
        for affected in self._cache(key, value):
            self.queue.add(affected)
        self._wake.set()

    def _cache(self, key: str, value: bytes | None) -> list[str]:
        """Update the cache from one key; return the service keys to requeue."""
        if key.startswith(model.SERVICES):
            name = key[len(model.SERVICES) :]
            if value is None:
                self.services.pop(name, None)
            else:
                self.services[name] = model.decode(value, model.ServiceRecord)
            return planner.affected_keys(self.services, name)
        if key.startswith(model.ROLLOUTS):
            name = key[len(model.ROLLOUTS) :]
            if value is None:
                self.rollouts.pop(name, None)
            else:
                self.rollouts[name] = model.decode(value, model.Rollout)
            return [name]
        if key.startswith(model.SERVICE_STATUS):
            name = key[len(model.SERVICE_STATUS) :]
            if value is None:
                self.service_status.pop(name, None)
            else:
                self.service_status[name] = model.decode(value, model.ServiceStatus)
            return []
        if key.startswith(model.INSTANCES):
            instance_id, _, part = key[len(model.INSTANCES) :].rpartition("/")
            service = None
            if part == "spec":
                old = self.specs.get(instance_id)
                if value is None:
                    self.specs.pop(instance_id, None)
                    self.statuses.pop(instance_id, None)
                    service = old.service if old else None
                else:
                    spec = model.decode(value, model.InstanceSpec)
                    self.specs[instance_id] = spec
                    service = spec.service
            elif part == "status":
                if value is None:
                    self.statuses.pop(instance_id, None)
                else:
                    self.statuses[instance_id] = model.decode(value, model.InstanceStatus)
                spec_of = self.specs.get(instance_id)
                service = spec_of.service if spec_of else None
            if service is not None:
                return planner.affected_keys(self.services, service)
        return []

    async def _watch(self, start_revision: int) -> None:
        revision = start_revision
        while True:
            try:
                async for event in self.store.watch(model.PREFIX, revision):
                    revision = event.kv.mod_revision + 1
                    if event.kv.key.startswith(model.EVENTS):
                        continue
                    if self._seen.get(event.kv.key, 0) > event.kv.mod_revision:
                        continue
                    self._seen.pop(event.kv.key, None)
                    value = event.kv.value if event.type == "put" else None
                    for key in self._cache(event.kv.key, value):
                        self.queue.add(key)
                    self._wake.set()
            except Compacted:
                revision = await self._relist() + 1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciler watch failed; re-listing")
                await asyncio.sleep(0.5)
                revision = await self._relist() + 1

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync)
            for name in sorted(set(self.services) | {s.service for s in self.specs.values()}):
                self.queue.add(name)
            self._wake.set()
            with contextlib.suppress(Exception):
                await events.trim(self.store, EVENTS_KEPT)
                head = (await self.store.range(model.PLATFORM, limit=1)).revision
                if head > HISTORY_KEPT:
                    await self.store.compact(head - HISTORY_KEPT)

    # -- worker -------------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            now = clock.monotonic()
            keys: list[str] = []
            while (key := self.queue.get(now)) is not None:
                keys.append(key)
            if not keys:
                deadline = self.queue.next_deadline()
                self._wake.clear()
                timeout = None if deadline is None else max(0.0, deadline - now)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                continue
            await self._process(keys)

    async def _process(self, keys: list[str]) -> None:
        observed = [(spec, self.statuses.get(i)) for i, spec in sorted(self.specs.items())]
        index = planner.build_index(self.services, observed, self.rollouts)
        wall = clock.wall()
        mono = clock.monotonic()
        self.passes += 1
        for key in keys:
            try:
                previous = self.service_status.get(key)
                plan = planner.plan_service(key, index, wall, previous.state if previous else None)
                await self._execute(plan)
                if plan.requeue_at is not None:
                    self.queue.add_after(key, mono + max(0.0, plan.requeue_at - wall))
                self.queue.forget(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling %s failed; retrying with backoff", key)
                self.queue.add_rate_limited(key, clock.monotonic())
            finally:
                self.queue.done(key)
        self._write_endpoints()
        if self.on_pass is not None:
            self.on_pass(clock.monotonic() - mono)

    async def _execute(self, plan: planner.Plan) -> None:
        for action in plan.actions:
            if isinstance(action, planner.Create):
                await self._create(action)
            elif isinstance(action, planner.Restart):
                await self._update_spec(action.instance_id, action.reason, restart=True)
            elif isinstance(action, planner.Stop):
                await self._update_spec(
                    action.instance_id, action.reason, restart=False, drain=action.drain
                )
            elif isinstance(action, planner.Update):
                await self._update_spec(
                    action.instance_id, action.reason, restart=True, update=True
                )
            elif isinstance(action, planner.RolloutProgress):
                await self._rollout_progress(action)
            elif isinstance(action, planner.Forget):
                await self._forget(action.instance_id)
            elif isinstance(action, planner.ForgetService):
                await self._forget_service(action.service, action.reason)
        for name, (state, reason) in sorted(plan.states.items()):
            await self._set_state(name, state, reason)

    async def _create(self, action: planner.Create) -> None:
        record = self.services.get(action.service)
        if record is None:
            return
        if action.ordinal is not None:
            instance_id = planner.pet_id(action.service, action.ordinal)
        else:
            instance_id = ids.cattle_id(action.service)
            while instance_id in self.specs:
                instance_id = ids.cattle_id(action.service)
        # Never hand out a port another instance was given (maybe not listening yet) or one a
        # service declares fixed (the gateway's listener among them).
        taken = {port for spec in self.specs.values() for port in spec.ports.values()}
        for other in self.services.values():
            declared = other.spec.get("ports") or {}
            taken.update(v for v in declared.values() if isinstance(v, int))
        ports = _allocate_ports(record.spec.get("ports") or {}, taken)
        spec = model.InstanceSpec(
            id=instance_id,
            service=action.service,
            release=action.release,
            node=self.node,
            created_at=clock.wall(),
            ordinal=action.ordinal,
            ports=ports,
            restarts=action.restarts,
            consecutive_crashes=action.consecutive_crashes,
            replaces=action.replaces,
            system=record.system,
            digest=record.digest,
            # A replacement inherits when its slot got the template, so a crash loop of fresh
            # replacements still meets the rollout's healthy_deadline.
            since=self._since_of(action.replaces) or clock.wall(),
        )
        key = model.instance_key(instance_id, "spec")
        reason = action.reason or "created"
        event = events.make(
            instance_id, "instance", reason, service=action.service, to_phase="provision"
        )
        txn = await self.store.txn(
            [Compare(key, "exists", "==", False)],
            [Put(key, model.encode(spec)), Put(events.event_key(event.at), model.encode(event))],
        )
        if txn.succeeded:
            self._local_write(key, model.encode(spec), txn.revision)

    def _since_of(self, replaced: str | None) -> float:
        old = self.specs.get(replaced) if replaced else None
        record = self.services.get(old.service) if old else None
        if old is None or record is None or old.digest != record.digest:
            return 0.0
        return old.since

    async def _update_spec(
        self,
        instance_id: str,
        reason: str,
        *,
        restart: bool,
        update: bool = False,
        drain: bool = False,
    ) -> None:
        key = model.instance_key(instance_id, "spec")
        kv = await self.store.get(key)
        if kv is None:
            return
        spec = model.decode(kv.value, model.InstanceSpec)
        record = self.services.get(spec.service)
        if update and record is not None:
            # A pet takes the current template in place: same id, port and DATA_DIR.
            spec.release, spec.digest, spec.since = record.release, record.digest, clock.wall()
        if restart:
            spec.incarnation += 1
        elif spec.desired == "stopped":
            return
        else:
            spec.desired = "stopped"
            spec.drain = record.drain if drain and record is not None else 0.0
        ops: list[Op] = [Put(key, model.encode(spec))]
        if reason and (update or not restart):
            event = events.make(instance_id, "instance", reason, service=spec.service)
            ops.append(Put(events.event_key(event.at), model.encode(event)))
        txn = await self.store.txn([Compare(key, "mod_revision", "==", kv.mod_revision)], ops)
        if txn.succeeded:
            self._local_write(key, model.encode(spec), txn.revision)

    async def _rollout_progress(self, action: planner.RolloutProgress) -> None:
        """Record a rollout's step; finish it, promote its canary, or fail it — and on failure
        roll back automatically when the service asks for it."""
        name = action.service
        revision, rollout = await releases.read_rollout(self.store, name)
        record = self.services.get(name)
        if rollout is None or record is None or rollout.to_digest != record.digest:
            return
        now = clock.wall()
        label = f"v{rollout.from_release} → v{rollout.to_release}"
        ops: list[Op] = []
        note = ""
        if (
            action.outcome == "failed"
            and record.update.auto_rollback
            and (rollout.stable_digest and rollout.stable_digest != record.digest)
        ):
            ops += await releases.set_outcome(
                self.store,
                name,
                rollout.to_release,
                f"failed: {action.reason}; rolled back to v{rollout.stable_release}",
            )
            if ops:
                await self.store.txn([], ops)
            note = (
                f"rollout {label} failed: {action.reason}; "
                f"rolling back to v{rollout.stable_release}"
            )
            await events.record(self.store, events.make(name, "service", note, service=name))
            try:
                await releases.rollback(
                    self.store,
                    name,
                    rollout.stable_release,
                    message=f"automatic rollback: {action.reason}",
                    automatic=True,
                )
                return
            except Exception as exc:
                # Never retry a failing rollback on every pass: fail the rollout and say why.
                log.exception("automatic rollback of %s failed", name)
                action = planner.RolloutProgress(
                    name,
                    action.step,
                    action.progress,
                    "failed",
                    f"{action.reason}; the automatic rollback failed: {exc}",
                )
                revision, current = await releases.read_rollout(self.store, name)
                if current is None:
                    return
                rollout, ops = current, []
        if action.progress != rollout.progress:
            rollout.last_progress_at = now
        rollout.step, rollout.progress = action.step, action.progress
        if action.outcome == "complete":
            rollout.state, rollout.finished_at = "complete", now
            ops += await releases.set_outcome(self.store, name, rollout.to_release, "complete")
            note = f"rollout {label} complete"
        elif action.outcome == "failed":
            rollout.state, rollout.finished_at, rollout.reason = "failed", now, action.reason
            ops += await releases.set_outcome(
                self.store, name, rollout.to_release, f"failed: {action.reason}"
            )
            note = f"rollout {label} failed: {action.reason} (no automatic rollback)"
        elif action.outcome == "promote":
            rollout.promoted = True
            note = f"rollout {label}: canary promoted (auto_promote)"
        ops.append(Put(releases.rollout_key(name), model.encode(rollout)))
        if note:
            event = events.make(name, "service", note, service=name)
            ops.append(Put(events.event_key(event.at), model.encode(event)))
        txn = await self.store.txn(
            [Compare(releases.rollout_key(name), "mod_revision", "==", revision)], ops
        )
        if txn.succeeded:
            self._local_write(releases.rollout_key(name), model.encode(rollout), txn.revision)

    async def _forget(self, instance_id: str) -> None:
        ops: list[Op] = [
            Delete(model.instance_key(instance_id, "spec")),
            Delete(model.instance_key(instance_id, "status")),
        ]
        txn = await self.store.txn([], ops)
        self._local_write(model.instance_key(instance_id, "status"), None, txn.revision)
        self._local_write(model.instance_key(instance_id, "spec"), None, txn.revision)

    async def _forget_service(self, name: str, reason: str) -> None:
        event = events.make(name, "service", reason or "stopped and removed", service=name)
        txn = await self.store.txn(
            [],
            [
                Delete(model.SERVICES + name),
                Delete(model.SERVICE_STATUS + name),
                Put(events.event_key(event.at), model.encode(event)),
            ],
        )
        self._local_write(model.SERVICES + name, None, txn.revision)
        self._local_write(model.SERVICE_STATUS + name, None, txn.revision)

    async def _set_state(self, name: str, state: model.ServiceState, reason: str) -> None:
        record = self.services.get(name)
        if record is None:
            return
        ready = sum(
            1
            for spec in self.specs.values()
            if spec.service == name
            and (st := self.statuses.get(spec.id)) is not None
            and st.phase == "run"
            and st.alive
        )
        old = self.service_status.get(name)
        new = model.ServiceStatus(
            name=name,
            state=state,
            reason=reason,
            ready=ready,
            desired=record.desired,
            release=record.release,
            updated_at=clock.wall(),
        )
        if old is not None and (old.state, old.reason, old.ready, old.desired, old.release) == (
            new.state,
            new.reason,
            new.ready,
            new.desired,
            new.release,
        ):
            return
        ops: list[Op] = [Put(model.SERVICE_STATUS + name, model.encode(new))]
        if old is None or old.state != state:
            event = events.make(
                name,
                "service",
                reason,
                service=name,
                from_phase=old.state if old else "",
                to_phase=state,
            )
            ops.append(Put(events.event_key(event.at), model.encode(event)))
        await self.store.txn([], ops)
        self.service_status[name] = new

    def _write_endpoints(self) -> None:
        """``$CORRAL_HOME/endpoints.json``: the addresses of every service's `run` instances,
        for apps on this node to find their dependencies after a replacement moved them."""
        if self.endpoints_file is None:
            return
        endpoints: dict[str, list[str]] = {}
        for instance_id in sorted(self.specs):
            spec = self.specs[instance_id]
            status = self.statuses.get(instance_id)
            if spec.ports and status is not None and status.alive and status.phase == "run":
                port = next(iter(spec.ports.values()))
                endpoints.setdefault(spec.service, []).append(f"127.0.0.1:{port}")
        if endpoints == self._endpoints:
            return
        self._endpoints = endpoints
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(endpoints, indent=1, sort_keys=True))
        tmp.replace(self.endpoints_file)


def _allocate_ports(declared: dict[str, Any], taken: set[int]) -> dict[str, int]:
    """Free ports for ``auto``. A port just probed free is free again for the next probe, so
    ports already given to other instances (not yet listening) are skipped explicitly."""
    ports: dict[str, int] = {}
    for name, value in declared.items():
        if value in (None, "auto"):
            port = allocate_port()
            while port in taken:
                port = allocate_port()
        else:
            port = int(value)
        ports[name] = port
        taken.add(port)
    return ports
