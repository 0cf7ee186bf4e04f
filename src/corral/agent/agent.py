"""The node agent (adapter): runs the instances the Store assigns to this node.

It watches instance specs, starts a process (through the runtime driver's shim) whenever a
spec's incarnation is newer than the one it last started, stops those whose spec says
``stopped`` or that vanished, runs their probes, and writes each instance's status and every
phase transition as an event. Decisions come from pure cores: ``agent.health`` (probes),
``control.lifecycle`` (phases) and ``control.backoff`` (crash counting); this module only does
the I/O. On start it re-adopts the shims that outlived a previous control plane, so running
apps are never restarted by a control-plane restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral import clock, model
from corral.agent import probes
from corral.agent.health import (
    HealthAction,
    InstanceHealth,
    Kill,
    ProbeName,
    ProbeTiming,
    Routable,
    Started,
    Unroutable,
)
from corral.agent.metrics_loop import ProcessMetricsLoop
from corral.agent.procmetrics import Identity
from corral.control import backoff, events, lifecycle, state
from corral.control.system import COLLECTOR
from corral.errors import Compacted
from corral.home import Home
from corral.manifest.expand import expand
from corral.runtime.driver import LaunchSpec, Running, StartFailed
from corral.runtime.local import LocalDriver
from corral.runtime.ports import port_in_use
from corral.store.base import Compare, Op, Put, Store
from corral.telemetry.inject import AutoInstrument

log = logging.getLogger("corral.agent")

BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR")


@dataclass
class Supervision:
    spec: model.InstanceSpec
    release_spec: dict[str, Any]
    running: Running
    health: InstanceHealth
    env: dict[str, str]
    kill_reason: str | None = None
    stop_requested: bool = False
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Agent:
    def __init__(
        self,
        store: Store,
        home: Home,
        *,
        node: str = "local",
        driver: LocalDriver | None = None,
        cgroup_parent: str | None = None,
    ) -> None:
        self.store = store
        self.home = home
        self.node = node
        self.driver = driver or LocalDriver(home.path)
        self.cgroup_parent = cgroup_parent
        self.supervised: dict[str, Supervision] = {}
        self.statuses: dict[str, model.InstanceStatus] = {}
        self.specs: dict[str, model.InstanceSpec] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.process_metrics = ProcessMetricsLoop(home, self._metric_identities)
        self.auto_instrument = AutoInstrument()
        self._instrument_notes: set[tuple[str, str]] = set()

    # -- lifecycle of the agent itself ------------------------------------------------------

    async def start(self) -> None:
        listing = await self.store.range(model.INSTANCES)
        for kv in listing.kvs:
            self._cache(kv.key, kv.value)
        await self._adopt()
        self._tasks.append(asyncio.create_task(self._watch(listing.revision + 1)))
        self._tasks.append(asyncio.create_task(self._resync_loop()))
        self._tasks.append(asyncio.create_task(self.process_metrics.run()))
        for instance_id in sorted(self.specs):
            self._kick(instance_id)

    async def close(self) -> None:
        """Stop supervising; leave every instance running (its shim keeps it)."""
        self._closing = True
        tasks = list(self._tasks) + [s.task for s in self.supervised.values() if s.task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _cache(self, key: str, value: bytes | None) -> str | None:
        rest = key[len(model.INSTANCES) :]
        instance_id, _, part = rest.rpartition("/")
        if not instance_id:
            return None
        if part == "spec":
            if value is None:
                self.specs.pop(instance_id, None)
            else:
                spec = model.decode(value, model.InstanceSpec)
                if spec.node != self.node:
                    return None
                self.specs[instance_id] = spec
        elif part == "status":
            if value is None:
                self.statuses.pop(instance_id, None)
            else:
                self.statuses[instance_id] = model.decode(value, model.InstanceStatus)
            return None
        return instance_id

    async def _watch(self, start_revision: int) -> None:
        revision = start_revision
        while not self._closing:
            try:
                async for event in self.store.watch(model.INSTANCES, revision):
                    revision = event.kv.mod_revision + 1
                    changed = self._cache(
                        event.kv.key, event.kv.value if event.type == "put" else None
                    )
                    if changed:
                        self._kick(changed)
            except Compacted:
                listing = await self.store.range(model.INSTANCES)
                self.specs.clear()
                for kv in listing.kvs:
                    self._cache(kv.key, kv.value)
                revision = listing.revision + 1
                for instance_id in sorted(set(self.specs) | set(self.supervised)):
                    self._kick(instance_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("agent watch failed; retrying")
                await asyncio.sleep(0.5)

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            for instance_id in sorted(set(self.specs) | set(self.supervised)):
                self._kick(instance_id)

    def _metric_identities(self) -> list[tuple[Identity, Path]]:
        """The instances this agent supervises, with the labels of their process metrics."""
        out = []
        for instance_id, sup in sorted(self.supervised.items()):
            status = self.statuses.get(instance_id)
            restarts = status.restarts if status is not None else sup.spec.restarts
            identity = Identity(
                sup.spec.service, instance_id, sup.spec.release, self.node, restarts
            )
            out.append((identity, self.driver.instance_dir(instance_id)))
        return out

    def _kick(self, instance_id: str) -> None:
        task = asyncio.create_task(self._converge(instance_id))
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    # -- converging one instance -------------------------------------------------------------

    async def _converge(self, instance_id: str) -> None:
        lock = self._locks.setdefault(instance_id, asyncio.Lock())
        async with lock:
            try:
                await self._converge_locked(instance_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("converging %s failed", instance_id)

    async def _converge_locked(self, instance_id: str) -> None:
        spec = self.specs.get(instance_id)
        sup = self.supervised.get(instance_id)
        if spec is None or spec.desired == "stopped":
            if sup is not None:
                await self._stop(sup, "stop requested" if spec else "instance removed")
            if spec is None:
                self.driver.forget(instance_id)
            return
        status = self.statuses.get(instance_id)
        started = status.incarnation if status else 0
        if sup is not None:
            if spec.incarnation > sup.spec.incarnation:
                await self._stop(sup, "restart requested", restarting=True)
            else:
                sup.spec = spec
                return
        elif spec.incarnation <= started:
            return
        await self._launch(spec, status)

    async def _stop(self, sup: Supervision, reason: str, restarting: bool = False) -> None:
        sup.stop_requested = True
        if not restarting:
            await self._set_phase(sup.spec, "destroy", reason, "stop_requested")
            spec = self.specs.get(sup.spec.id)
            if spec is not None and spec.drain > 0:
                # Out of `run` first (the gateway stops routing to it), then the signal.
                await asyncio.sleep(spec.drain)
        with contextlib.suppress(Exception):
            await self.driver.stop(sup.spec.id)
        if sup.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sup.task

    async def _release_spec(self, spec: model.InstanceSpec) -> dict[str, Any]:
        kv = await self.store.get(model.release_key(spec.service, spec.release))
        if kv is not None:
            return model.decode(kv.value, model.Release).spec
        svc = await self.store.get(model.SERVICES + spec.service)
        if svc is None:
            return {}
        return model.decode(svc.value, model.ServiceRecord).spec

    async def _environment(
        self, spec: model.InstanceSpec, release_spec: Mapping[str, Any]
    ) -> dict[str, str]:
        env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
        platform = {
            "CORRAL_SERVICE": spec.service,
            "CORRAL_INSTANCE": spec.id,
            "CORRAL_RELEASE": str(spec.release),
            "CORRAL_NODE": spec.node,
            "CORRAL_ENDPOINTS": str(self.home.path / "endpoints.json"),
            "PYTHONUNBUFFERED": "1",
        }
        if spec.ports:
            platform["PORT"] = str(next(iter(spec.ports.values())))
            for name, port in spec.ports.items():
                platform[f"PORT_{name.upper().replace('-', '_')}"] = str(port)
        platform.update(self._telemetry_env(spec))
        if spec.ordinal is not None:
            platform["DATA_DIR"] = str(self.home.data_dir(spec.id))
            platform["CORRAL_ORDINAL"] = str(spec.ordinal)
            platform.update(self._peer_env(spec))
        platform.update(await self._dependency_env(release_spec))
        env.update(platform)
        for key, value in dict(release_spec.get("env") or {}).items():
            if isinstance(value, dict) and "secret" in value:
                secret = await self.store.get(model.SECRETS + str(value["secret"]))
                if secret is None:
                    raise LaunchFailure(
                        f"secret {value['secret']!r} (env {key}) is not set; "
                        f"run `corral secret set {value['secret']}`"
                    )
                env[key] = secret.value.decode()
            else:
                env[key] = expand(_env_text(value), env)
        env.update(platform)  # the platform's own variables cannot be overridden
        return env

    def _peer_env(self, spec: model.InstanceSpec) -> dict[str, str]:
        """``PEERS_<NAME>``: port NAME of the service's other pets, as ``host:port,…``, so the
        nodes of a data service (``kind: kv``) can find each other whatever order they start in."""
        others = sorted(
            (s for s in self.specs.values() if s.service == spec.service and s.id != spec.id),
            key=lambda s: s.id,
        )
        return {
            f"PEERS_{name.upper().replace('-', '_')}": ",".join(
                f"127.0.0.1:{s.ports[name]}"
                for s in others
                if s.ordinal is not None and name in s.ports
            )
            for name in spec.ports
        }

    def _telemetry_env(self, spec: model.InstanceSpec) -> dict[str, str]:
        """OpenTelemetry settings pointing at the platform's collector, with the resource
        attributes only the platform knows. Instances get the ingest token, never another."""
        collector = next(
            (s for s in self.specs.values() if s.service == COLLECTOR and s.ports), None
        )
        if collector is None or spec.service == COLLECTOR:
            return {}
        url = f"http://127.0.0.1:{next(iter(collector.ports.values()))}"
        env = {
            "OTEL_SERVICE_NAME": spec.service,
            "OTEL_RESOURCE_ATTRIBUTES": ",".join(
                [
                    f"service.instance.id={spec.id}",
                    f"deployment.release=v{spec.release}",
                    f"host.name={socket.gethostname()}",
                    f"corral.node={spec.node}",
                ]
            ),
            "OTEL_EXPORTER_OTLP_ENDPOINT": url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT": f"{url}/api/v2/spans",
            "CORRAL_COLLECTOR": url,
        }
        token = self.home.token("ingest")
        if token:
            env["OTEL_EXPORTER_OTLP_HEADERS"] = f"authorization=Bearer%20{token}"
        return env

    async def _auto_instrumented(
        self, spec: model.InstanceSpec, release_spec: Mapping[str, Any], env: dict[str, str]
    ) -> dict[str, str]:
        """Zero-touch tracing for Python services (``telemetry.inject``); when it cannot be
        done, the instance starts as it is and an event says why (once per instance)."""
        if spec.system:
            return env
        argv = [expand(str(part), env) for part in release_spec.get("command") or []]
        cwd = str(release_spec.get("cwd") or self.home.path)
        injection = await self.auto_instrument.prepare(argv, env, release_spec, cwd)
        if injection.note and (spec.id, injection.note) not in self._instrument_notes:
            self._instrument_notes.add((spec.id, injection.note))
            await events.record(
                self.store,
                events.make(spec.id, "instance", injection.note, service=spec.service),
            )
        return injection.env

    async def _dependency_env(self, release_spec: Mapping[str, Any]) -> dict[str, str]:
        """``<DEP>_URL`` for each dependency: one of its instances in ``run`` right now."""
        out: dict[str, str] = {}
        deps = release_spec.get("depends_on") or {}
        names = sorted(deps)
        if not names:
            return out
        observed = await state.load_instances(self.store)
        for name in names:
            for other, st in observed:
                if other.service == name and other.ports and st and st.phase == "run":
                    port = next(iter(other.ports.values()))
                    out[f"{name.upper().replace('-', '_')}_URL"] = f"http://127.0.0.1:{port}"
                    break
        return out

    async def _launch(self, spec: model.InstanceSpec, status: model.InstanceStatus | None) -> None:
        release_spec = await self._release_spec(spec)
        now = clock.wall()
        base = status or model.InstanceStatus(id=spec.id)
        restarts = spec.restarts + (spec.incarnation - 1)
        try:
            env = await self._environment(spec, release_spec)
            # Only the app gets the tracing bootstrap: exec probes keep the plain environment.
            app_env = await self._auto_instrumented(spec, release_spec, env)
            for name, port in spec.ports.items():
                if port_in_use(port):
                    raise LaunchFailure(f"port {port} ({name}) is already in use")
            launch = self._launch_spec(spec, release_spec, app_env)
            result = await self.driver.start(launch)
        except LaunchFailure as exc:
            failure = model.ExitInfo(at=now, reason=str(exc), start_failed=True)
            await self._record_exit(spec, base, failure, restarts, release_spec, None)
            return
        except StartFailed as exc:
            await self._record_exit(spec, base, exc.exit, restarts, release_spec, None)
            return
        health = InstanceHealth(_probe_timings(release_spec), spawned_at=clock.monotonic())
        sup = Supervision(spec, release_spec, result, health, env)
        self.supervised[spec.id] = sup
        reason = f"started pid {result.app_pid}" + (f" (restart #{restarts})" if restarts else "")
        if release_spec.get("resources", {}).get("cpu") and not result.cpu_enforced:
            reason += "; CPU limit not enforced: no usable cgroup cpu controller"
        new = model.InstanceStatus(
            id=spec.id,
            phase="provision",
            reason=reason,
            incarnation=spec.incarnation,
            alive=True,
            pid=result.app_pid,
            shim_pid=result.shim_pid,
            started_at=result.started_at,
            exit=base.exit,
            restarts=restarts,
            consecutive_crashes=base.consecutive_crashes or spec.consecutive_crashes,
            updated_at=now,
        )
        await self._write_status(new, base.phase if status else "", spec.service)
        sup.task = asyncio.create_task(self._supervise(sup))

    def _launch_spec(
        self, spec: model.InstanceSpec, release_spec: Mapping[str, Any], env: Mapping[str, str]
    ) -> LaunchSpec:
        command = release_spec.get("command") or []
        argv = [expand(str(part), env) for part in command]
        resources = release_spec.get("resources") or {}
        stop = release_spec.get("stop") or {}
        data_dir = str(self.home.data_dir(spec.id)) if spec.ordinal is not None else None
        return LaunchSpec(
            instance_id=spec.id,
            service=spec.service,
            incarnation=spec.incarnation,
            argv=argv,
            cwd=str(release_spec.get("cwd") or self.home.path),
            env=dict(env),
            user=release_spec.get("user"),
            data_dir=data_dir,
            memory_bytes=resources.get("memory"),
            cpu=resources.get("cpu"),
            stop_signal=_signal_number(stop.get("signal", "TERM")),
            stop_grace=float(stop.get("grace", 30.0)),
            cgroup_parent=self.cgroup_parent,
        )

    # -- supervising one running instance ----------------------------------------------------

    async def _supervise(self, sup: Supervision) -> None:
        exit_task = asyncio.create_task(self.driver.wait_exit(sup.spec.id))
        try:
            await self._probe_until_exit(sup, exit_task)
        except asyncio.CancelledError:
            exit_task.cancel()
            raise
        except Exception:
            # Probing broke (a bug): keep watching the process itself, never lose its exit.
            log.exception("probing %s failed; still watching its process", sup.spec.id)
        exit_info = await exit_task
        if sup.kill_reason is not None:
            exit_info = model.ExitInfo(
                at=exit_info.at,
                reason=f"{sup.kill_reason}; {exit_info.reason}",
                code=exit_info.code,
                signal=exit_info.signal,
                oom=exit_info.oom,
            )
        self.supervised.pop(sup.spec.id, None)
        status = self.statuses.get(sup.spec.id) or model.InstanceStatus(id=sup.spec.id)
        spec = self.specs.get(sup.spec.id, sup.spec)
        await self._record_exit(
            spec, status, exit_info, status.restarts, sup.release_spec, sup, sup.spec.incarnation
        )
        if not self._closing and spec.id in self.specs:
            self._kick(spec.id)

    async def _probe_until_exit(
        self, sup: Supervision, exit_task: asyncio.Task[model.ExitInfo]
    ) -> None:
        await self._apply_health(sup, sup.health.initial_actions())
        while not exit_task.done():
            now = clock.monotonic()
            await self._apply_health(sup, sup.health.tick(now))
            due = sup.health.due(now)
            if due:
                results = await asyncio.gather(*(self._probe(sup, name) for name in due))
                now = clock.monotonic()
                for name, (ok, detail) in zip(due, results, strict=True):
                    await self._apply_health(sup, sup.health.observe(name, ok, detail, now))
                continue
            delay = max(0.01, sup.health.next_due(now) - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await asyncio.shield(exit_task)

    async def _probe(self, sup: Supervision, name: ProbeName) -> tuple[bool, str]:
        probe = (sup.release_spec.get("health") or {}).get(name) or {}
        return await probes.run_probe(probe, sup.spec.ports, sup.env, sup.release_spec.get("cwd"))

    async def _apply_health(self, sup: Supervision, actions: list[HealthAction]) -> None:
        for action in actions:
            if sup.stop_requested:
                return
            if isinstance(action, Started):
                await self._set_phase(sup.spec, "ready", action.reason, "started")
            elif isinstance(action, Routable):
                await self._set_phase(sup.spec, "run", action.reason, "readiness_passed")
            elif isinstance(action, Unroutable):
                await self._set_phase(sup.spec, "ready", action.reason, "readiness_failed")
            elif isinstance(action, Kill):
                if not _alive(sup.running.app_pid):
                    return  # it died on its own: its exit, not the probe, is the reason
                sup.kill_reason = action.reason
                await events.record(
                    self.store,
                    events.make(sup.spec.id, "instance", action.reason, service=sup.spec.service),
                )
                # Not awaited: the exit arrives through wait_exit like any other.
                self._tasks.append(asyncio.create_task(self._kill(sup.spec.id)))

    async def _kill(self, instance_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.driver.stop(instance_id)

    async def _set_phase(
        self, spec: model.InstanceSpec, phase: model.Phase, reason: str, event: str
    ) -> None:
        status = self.statuses.get(spec.id) or model.InstanceStatus(id=spec.id)
        if status.phase == phase:
            return
        new_phase = lifecycle.next_phase(status.phase, event)  # type: ignore[arg-type]
        now = clock.wall()
        run_since = status.run_since
        if new_phase == "run" and status.phase != "run":
            run_since = now
        elif new_phase != "run":
            run_since = None if new_phase != "ready" else run_since
        updated = model.InstanceStatus(
            **{
                **_fields(status),
                "phase": new_phase,
                "reason": reason,
                "run_since": run_since if new_phase == "run" else status.run_since,
                "updated_at": now,
            }
        )
        await self._write_status(updated, status.phase if status.phase != new_phase else None)

    async def _record_exit(
        self,
        spec: model.InstanceSpec,
        status: model.InstanceStatus,
        exit_info: model.ExitInfo,
        restarts: int,
        release_spec: Mapping[str, Any],
        sup: Supervision | None,
        incarnation: int | None = None,
    ) -> None:
        """Record how the process of ``incarnation`` (default: the spec's) ended."""
        policy = _backoff_policy(release_spec)
        crashes = status.consecutive_crashes or spec.consecutive_crashes
        requested = exit_info.requested and (sup is None or sup.kill_reason is None)
        # A requested exit while the spec still wants the instance running is a restart in
        # place (`corral restart`), not a stop: the phase goes back to provision, not destroy.
        restarting = requested and spec.desired == "running" and spec.id in self.specs
        stopped = requested and not restarting
        completed = (
            release_spec.get("kind") == "task" and exit_info.code == 0 and not exit_info.requested
        )
        restart_at: float | None = None
        if restarting:
            event, reason = "exited_will_restart", f"restarting on request ({exit_info.reason})"
        elif stopped:
            event, reason = "stop_requested", f"stopped ({exit_info.reason})"
        elif completed:
            event, reason = "task_completed", "task completed (exit 0)"
            crashes = 0
        else:
            crashes = backoff.crashes_after_exit(policy, crashes, status.run_since, exit_info.at)
            delay = backoff.restart_delay(policy, crashes, spec.id)
            restart_at = exit_info.at + delay
            looping = backoff.is_crash_looping(policy, crashes)
            event = "exited_crash_looping" if looping else "exited_will_restart"
            reason = exit_info.reason + (
                f"; restarting in {delay:.1f}s" if delay else "; restarting now"
            )
            if looping:
                reason += f" ({crashes} crashes in a row)"
        try:
            phase = lifecycle.next_phase(status.phase, event)  # type: ignore[arg-type]
        except Exception:
            phase = "destroy" if stopped or completed else "provision"
        updated = model.InstanceStatus(
            id=spec.id,
            phase=phase,
            reason=reason,
            incarnation=incarnation if incarnation is not None else spec.incarnation,
            alive=False,
            pid=None,
            shim_pid=None,
            started_at=status.started_at,
            run_since=None,
            exit=exit_info,
            restarts=restarts,
            consecutive_crashes=crashes,
            restart_at=restart_at,
            updated_at=clock.wall(),
        )
        await self._write_status(updated, status.phase, spec.service)

    async def _write_status(
        self,
        status: model.InstanceStatus,
        from_phase: str | None = None,
        service: str = "",
    ) -> None:
        """Write ``status``; with ``from_phase``, record the transition as an event in the same
        transaction. Only while the spec exists: a status written after the reconciler forgot
        the instance would be an orphan nobody deletes."""
        spec_key = model.instance_key(status.id, "spec")
        ops: list[Op] = [Put(model.instance_key(status.id, "status"), model.encode(status))]
        if from_phase is not None:
            spec = self.specs.get(status.id)
            event = events.make(
                status.id,
                "instance",
                status.reason,
                service=service or (spec.service if spec else ""),
                from_phase=from_phase,
                to_phase=status.phase,
            )
            ops.append(Put(events.event_key(event.at), model.encode(event)))
        txn = await self.store.txn([Compare(spec_key, "exists", "==", True)], ops)
        if txn.succeeded:
            self.statuses[status.id] = status

    # -- re-adoption after a control-plane restart -------------------------------------------

    async def _adopt(self) -> None:
        adopted_ids = await self._adopt_shims()
        # A status that says "alive" with no shim behind it (the machine rebooted, the state
        # was restored from a backup, the instance dir was removed) is a lost process: record
        # it as an exit so the planner restarts or replaces it, instead of trusting a ghost.
        for instance_id in sorted(self.specs):
            status = self.statuses.get(instance_id)
            if instance_id in adopted_ids or status is None or not status.alive:
                continue
            spec = self.specs[instance_id]
            lost = model.ExitInfo(
                at=clock.wall(),
                reason="lost: no shim is running for it (machine restart or restored state)",
            )
            release_spec = await self._release_spec(spec)
            await self._record_exit(
                spec, status, lost, status.restarts, release_spec, None, status.incarnation
            )

    async def _adopt_shims(self) -> set[str]:
        seen: set[str] = set()
        for adopted in await self.driver.adopt():
            seen.add(adopted.instance_id)
            spec = self.specs.get(adopted.instance_id)
            status = self.statuses.get(adopted.instance_id)
            if spec is None:
                # An instance nobody wants any more: stop it rather than leak it.
                if adopted.running is not None:
                    with contextlib.suppress(Exception):
                        await self.driver.stop(adopted.instance_id)
                self.driver.forget(adopted.instance_id)
                continue
            release_spec = await self._release_spec(spec)
            if adopted.running is not None:
                running = adopted.running
                health = InstanceHealth(_probe_timings(release_spec), spawned_at=clock.monotonic())
                try:
                    env = await self._environment(spec, release_spec)
                except LaunchFailure:
                    env = {}  # only exec probes use it; the process itself keeps its own
                sup = Supervision(spec, release_spec, running, health, env)
                if status is not None and status.phase in ("ready", "run"):
                    # Keep it routable while probes re-confirm; no restart, no flap.
                    health.started = True
                    health.routable = health.was_routable = status.phase == "run"
                self.supervised[spec.id] = sup
                sup.task = asyncio.create_task(self._supervise(sup))
                await events.record(
                    self.store,
                    events.make(
                        spec.id,
                        "instance",
                        f"re-adopted running pid {running.app_pid}",
                        service=spec.service,
                    ),
                )
            elif adopted.exit is not None and (
                status is None or status.alive or status.incarnation <= adopted.incarnation
            ):
                if status is not None and not status.alive and status.exit == adopted.exit:
                    continue
                base = status or model.InstanceStatus(id=spec.id)
                await self._record_exit(
                    spec, base, adopted.exit, base.restarts, release_spec, None, adopted.incarnation
                )
        return seen


class LaunchFailure(Exception):
    """A start failure the user can fix (missing secret, port taken); becomes an ExitInfo."""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _signal_number(name: object) -> int:
    text = str(name).upper()
    if not text.startswith("SIG"):
        text = "SIG" + text
    return int(getattr(signal, text, signal.SIGTERM))


def _probe_timings(release_spec: Mapping[str, Any]) -> dict[ProbeName, ProbeTiming]:
    out: dict[ProbeName, ProbeTiming] = {}
    health = release_spec.get("health") or {}
    names: tuple[ProbeName, ...] = ("startup", "liveness", "readiness")
    for name in names:
        probe = health.get(name)
        if probe:
            out[name] = ProbeTiming(
                period=float(probe.get("period", 1.0)),
                timeout=float(probe.get("timeout", 1.0)),
                failure_threshold=int(probe.get("failure_threshold", 3)),
                success_threshold=int(probe.get("success_threshold", 1)),
                initial_delay=float(probe.get("initial_delay", 0.0)),
            )
    return out


def _backoff_policy(release_spec: Mapping[str, Any]) -> model.BackoffPolicy:
    restart = release_spec.get("restart") or {}
    b = restart.get("backoff") or {}
    return model.BackoffPolicy(
        initial=float(b.get("initial", 1.0)),
        max=float(b.get("max", 60.0)),
        reset_after=float(b.get("reset_after", 600.0)),
        failed_after=int(restart.get("failed_after", 5)),
    )


def _fields(status: model.InstanceStatus) -> dict[str, Any]:
    return {f: getattr(status, f) for f in status.__struct_fields__}
