"""The gateway in platform mode (`python -m corral.gateway.platform`), run by the agent as the
system service ``corral-gateway``.

It follows two prefixes of the Store through the API's remote Store: the live gateway config
(``/corral/gateway/config``) and the instances (``/corral/instances/``). A config change is
validated and compiled off the hot path and swapped in whole; a route's endpoints are its
service's instances in phase ``run``, so scaling, draining, crashes and readiness changes
reach routing as soon as the watch delivers them (milliseconds on one node). When the control
plane cannot be reached the gateway keeps serving the last good config — kept on disk in
``$CORRAL_HOME/gateway/last-good.json`` — and reports itself stale in
``$CORRAL_HOME/gateway/status.json`` until it is back.

Traffic splits between releases of a service route to ``<service>@<release>`` clusters: the
endpoints of each release are published beside the service's, from the instances' ``release``.
Admin actions (cache purge, breaker reset: ``corral.gateway.admin``) arrive by a third watch,
on ``/corral/gateway/actions/``, and are applied as they come; after a lost connection the
watch resumes after the last action applied.

Edge spans go to the config's ``telemetry.zipkin`` or, when it names none, to the platform's
collector (the URL in ``$CORRAL_HOME/collector``, re-read when the file changes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
from typing import Any

from corral import clock, model
from corral.errors import Compacted, CorralError
from corral.gateway import admin
from corral.gateway.config import GatewayConfig, parse_address, validate_gateway_data
from corral.gateway.proxy import Gateway
from corral.gateway.router import compile_routes
from corral.home import Home
from corral.store.base import Store
from corral.store.remote import RemoteStore

log = logging.getLogger("corral.gateway.platform")

CONFIG_KEY = model.PREFIX + "gateway/config"
RETRY_SECONDS = 0.5


class PlatformGateway:
    def __init__(self, home: Home, store: Store) -> None:
        self.home = home
        self.store = store
        self.state_dir = home.path / "gateway"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.gateway: Gateway | None = None
        self.version = 0
        self.config: GatewayConfig | None = None
        self.stale = False
        self.specs: dict[str, model.InstanceSpec] = {}
        self.statuses: dict[str, model.InstanceStatus] = {}
        self.endpoints: dict[str, tuple[tuple[str, int], ...]] = {}
        self._collector: tuple[float, str | None] = (0.0, None)
        self.actions_seen = 0  # the revision of the last admin action applied (or skipped)

    # -- config ------------------------------------------------------------------------------

    def _compile(self, data: dict[str, Any], version: int) -> GatewayConfig:
        config = validate_gateway_data(data, source=f"gateway config v{version}", mode="platform")
        table = compile_routes(config, version)
        if self.gateway is not None:
            self.gateway.apply(table)
            for service, endpoints in self.endpoints.items():
                self.gateway.set_endpoints(service, endpoints)
        self.config, self.version = config, version
        return config

    def _load_last_good(self) -> tuple[dict[str, Any], int] | None:
        try:
            saved = json.loads((self.state_dir / "last-good.json").read_text())
            return saved["config"], int(saved["version"])
        except (OSError, ValueError, KeyError):
            return None

    def _save_last_good(self, data: dict[str, Any], version: int) -> None:
        tmp = self.state_dir / "last-good.json.tmp"
        tmp.write_text(json.dumps({"config": data, "version": version}))
        tmp.replace(self.state_dir / "last-good.json")

    def _write_status(self) -> None:
        address = self.config.listen if self.config else ""
        status = {
            "version": self.version,
            "stale": self.stale,
            "listen": address,
            "pid": os.getpid(),
            "updated_at": clock.wall(),
        }
        tmp = self.state_dir / "status.json.tmp"
        tmp.write_text(json.dumps(status))
        tmp.replace(self.state_dir / "status.json")

    def _apply_config(self, value: bytes) -> None:
        record = json.loads(value)
        try:
            self._compile(record["config"], int(record["version"]))
        except CorralError as exc:
            # The API validated it; refuse anyway rather than serve something broken.
            log.error("gateway config v%s refused: %s", record.get("version"), exc)
            return
        self._save_last_good(record["config"], int(record["version"]))
        log.info("gateway config v%d live", self.version)

    # -- endpoints ---------------------------------------------------------------------------

    def _instance_changed(self, key: str, value: bytes | None) -> str | None:
        instance_id, _, part = key[len(model.INSTANCES) :].rpartition("/")
        if part == "spec":
            if value is None:
                old = self.specs.pop(instance_id, None)
                return old.service if old else None
            spec = model.decode(value, model.InstanceSpec)
            self.specs[instance_id] = spec
            return spec.service
        if part == "status":
            if value is None:
                self.statuses.pop(instance_id, None)
            else:
                self.statuses[instance_id] = model.decode(value, model.InstanceStatus)
            spec_of = self.specs.get(instance_id)
            return spec_of.service if spec_of else None
        return None

    def collector_url(self) -> str | None:
        """The platform collector's Zipkin endpoint, if one runs (re-read when it moves)."""
        path = self.home.path / "collector"
        try:
            mtime = path.stat().st_mtime
            if mtime != self._collector[0]:
                base = path.read_text().strip().rstrip("/")
                self._collector = (mtime, f"{base}/api/v2/spans" if base else None)
        except OSError:
            self._collector = (0.0, None)
        return self._collector[1]

    def _refresh(self, service: str) -> None:
        endpoints: list[tuple[str, int]] = []
        releases: dict[int, list[tuple[str, int]]] = {}
        for instance_id in sorted(self.specs):
            spec = self.specs[instance_id]
            status = self.statuses.get(instance_id)
            if (
                spec.service == service
                and spec.desired == "running"
                and spec.ports
                and status is not None
                and status.alive
                and status.phase == "run"
            ):
                endpoint = (f"127.0.0.1:{next(iter(spec.ports.values()))}", 1)
                endpoints.append(endpoint)
                releases.setdefault(spec.release, []).append(endpoint)
        wanted = {service: tuple(endpoints)}
        for release, members in releases.items():
            wanted[f"{service}@{release}"] = tuple(members)
        for key in sorted(self.endpoints):  # releases that no longer run anything
            if key.startswith(service + "@") and key not in wanted:
                wanted[key] = ()
        for key in sorted(wanted):
            frozen = wanted[key]
            if self.endpoints.get(key) != frozen:
                self.endpoints[key] = frozen
                if self.gateway is not None:
                    self.gateway.set_endpoints(key, frozen)

    # -- running -----------------------------------------------------------------------------

    async def _list(self) -> tuple[int, int]:
        config = await self.store.range(CONFIG_KEY)
        for kv in config.kvs:
            if kv.key == CONFIG_KEY:
                self._apply_config(kv.value)
        instances = await self.store.range(model.INSTANCES)
        self.specs.clear()
        self.statuses.clear()
        for kv in instances.kvs:
            self._instance_changed(kv.key, kv.value)
        services = {s.service for s in self.specs.values()}
        services.update(key.split("@", 1)[0] for key in self.endpoints)
        for service in sorted(services):
            self._refresh(service)
        return config.revision, instances.revision

    async def start(self) -> None:
        try:
            await self._list()
        except CorralError as exc:
            saved = self._load_last_good()
            if saved is None:
                raise
            log.warning("control plane unreachable (%s): serving the last good config", exc)
            self._compile(*saved)
            self.stale = True
        if self.config is None:
            raise SystemExit("no gateway config in the Store: apply a manifest with gateway:")
        host, port = parse_address(self.config.listen)
        self.gateway = Gateway(
            compile_routes(self.config, self.version),
            self.config.limits,
            rng=random.Random(),
            collector=self.collector_url,
        )
        for service, endpoints in self.endpoints.items():
            self.gateway.set_endpoints(service, endpoints)
        await self.gateway.listen(host, port)
        self._write_status()
        log.info("gateway v%d listening on %s", self.version, self.config.listen)

    async def follow(self) -> None:
        """Keep routing in step with the Store; survive the control plane going away."""
        while True:
            try:
                config_rev, instances_rev = await self._list()
                if not self.actions_seen:  # older actions are not replayed
                    self.actions_seen = config_rev
                self.stale = False
                self._write_status()
                await asyncio.gather(
                    self._watch(CONFIG_KEY, config_rev + 1),
                    self._watch(model.INSTANCES, instances_rev + 1),
                    self._watch_actions(),
                )
            except (CorralError, OSError) as exc:
                if not self.stale:
                    log.warning(
                        "lost the control plane (%s): serving config v%d", exc, self.version
                    )
                self.stale = True
                self._write_status()
                await asyncio.sleep(RETRY_SECONDS)

    async def _watch(self, prefix: str, start: int) -> None:
        async for event in self.store.watch(prefix, start):
            value = event.kv.value if event.type == "put" else None
            if event.kv.key == CONFIG_KEY:
                if value is not None:
                    self._apply_config(value)
                    self._write_status()
            else:
                service = self._instance_changed(event.kv.key, value)
                if service is not None:
                    self._refresh(service)
        raise OSError(f"the watch on {prefix} ended")

    async def _watch_actions(self) -> None:
        try:
            async for event in self.store.watch(admin.ACTIONS, self.actions_seen + 1):
                self.actions_seen = event.kv.mod_revision
                if event.type == "put" and self.gateway is not None:
                    self._apply_action(event.kv.value)
        except Compacted as exc:  # actions in the gap are lost: say so, go on from here
            log.warning("gateway admin actions before revision %d were compacted", exc.revision)
            self.actions_seen = exc.revision
        raise OSError("the watch on gateway actions ended")

    def _apply_action(self, value: bytes) -> None:
        assert self.gateway is not None
        try:
            action = model.decode(value, admin.GatewayAction)
        except Exception:  # a record this version cannot read must not stop the gateway
            log.exception("gateway admin action unreadable")
            return
        touched = admin.apply(self.gateway, action, self.gateway.loop.time())
        log.info("gateway admin: %s (%d touched)", admin.describe(action), touched)

    async def close(self) -> None:
        if self.gateway is not None:
            await self.gateway.close()


async def run(home: Home) -> None:
    store = (
        RemoteStore.for_home(home) if home.api_url() else RemoteStore("http://127.0.0.1:1", None)
    )
    gateway = PlatformGateway(home, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    follower = asyncio.create_task(gateway.follow())
    await stop.wait()
    follower.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await follower
    await gateway.close()
    await store.close()


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("CORRAL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    home = Home.resolve(os.environ.get("CORRAL_HOME"))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    try:
        asyncio.run(run(home))
    except CorralError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
