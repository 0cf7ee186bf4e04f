"""Standalone mode: ``corral gateway serve --config gw.yaml``, like nginx with a config file.

Processes. A **supervisor** (the process the user started) validates the config, binds the
listen address once (SO_REUSEPORT, not listening — it only reserves the port, and resolves
port 0), and starts ``workers`` **worker** processes (``python -m corral.gateway.serve
--worker``). Each worker binds its own SO_REUSEPORT listening socket on that port, so the kernel
spreads connections across workers, and runs a ``Gateway`` on uvloop. A worker that dies is
started again after a second.

Shared state goes through a small **state directory** (a private temp dir), written by
atomic rename and read by the workers on their periodic sweep (every 0.25 s, checking the
files' mtimes), so every worker sees the same config version and the same upstream health
within about half a second:

- ``config.json`` — ``{version, config}``: the validated config. SIGHUP to the supervisor
  re-reads the file; a valid one becomes the next version, an invalid one is reported on
  stderr and changes nothing. Workers validate and compile it in a thread (off the loop) and
  swap their route table in one assignment.
- ``health.json`` — ``{cluster: [unhealthy addresses]}``: the supervisor runs the active checks
  (``HealthChecker``) once per gateway, not once per worker.
- ``ejections-<i>.json`` — ``[[cluster, address, wall-clock until], …]``: passive outlier
  ejections. A worker that ejects an endpoint (it saw the failures) writes its file at once; the
  others adopt the ejection (``OutlierDetector.adopt``, under the same cap on the ejected share)
  on their next sweep, so all workers stop sending to it within half a second.
- ``actions.json`` — ``[{seq, action, route, prefix}, …]``: admin actions (cache purge, breaker
  reset; ``corral.gateway.admin``) posted to the admin listener with its token. Each worker
  applies the records newer than the last it applied on its next sweep and writes the newest
  ``seq`` to ``actions-done-<i>.json``; the admin request answers once every live worker has
  (or after ``ACTION_WAIT`` seconds), saying how many did. A worker started later skips the
  records already there (its cache is empty and its breakers closed anyway).
- ``metrics-<i>.json`` — each worker's counters, written every second; the supervisor's admin
  listener (``admin: {listen: …}``) sums them for ``GET /metrics`` (Prometheus text) and answers
  ``GET /healthz``.
- ``tier-<i>.json`` — ``{at, demands: {limiter: requests/s}}``: tier-wide rate limits. A
  configured rate limit is the limit of the whole gateway, not of one worker. Every
  ``tier.period`` (1 s) each worker publishes the demand it saw for each limiter (requests
  offered per second, admitted or not) and reads every worker's file; each worker runs the
  same allocation over the same reports (``ratelimit.TierShare``: max-min fair shares of the
  rate, decreases applied at once, increases one period later, a silent worker dropped after
  ``tier.stale_after``) and runs its buckets at its share. Workers start at 1/N each. The error
  is exchange lag: the shares in force never sum above the limit, and the tests measure the
  tier's admissions within 10 % of the configured rate.

TLS (``tls: {cert, key}``) is terminated by the workers; the certificate files are re-read on
every config version and whenever their mtime changes, into the same ``SSLContext``, so new
handshakes use the new certificate without a restart.

SIGTERM or SIGINT: workers stop accepting, finish requests in flight (``limits.drain``), exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hmac
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral import clock, ids
from corral.errors import CorralError
from corral.gateway import admin as gateway_admin
from corral.gateway.config import GatewayConfig, load_gateway_config, parse_address
from corral.gateway.healthcheck import HealthChecker
from corral.gateway.metrics import render
from corral.gateway.proxy import Gateway
from corral.gateway.router import compile_routes
from corral.telemetry.exposition import content_type, wants_openmetrics

if TYPE_CHECKING:  # aiohttp is imported by the supervisor only when it has an admin listener
    from aiohttp import web

__all__ = ["Supervisor", "run_worker", "serve"]

log = logging.getLogger("corral.gateway")

CONFIG_FILE = "config.json"
HEALTH_FILE = "health.json"
EJECTIONS_PREFIX = "ejections-"
METRICS_EVERY = 1.0
ACTIONS_FILE = "actions.json"
ACTIONS_DONE_PREFIX = "actions-done-"
EXPORT_SWITCH_INTERVAL = 0.0005  # seconds; see ``_Worker.start``
ACTION_WAIT = 3.0  # longest an admin action request waits for the workers to apply it


def _write_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _reserve(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class Supervisor:
    def __init__(self, config_path: Path, config: GatewayConfig, state: Path) -> None:
        self.config_path = config_path
        self.config = config
        self.state = state
        self.version = 1
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.stopping = False
        self.checker = HealthChecker(self._health_changed)
        self.actions: list[dict[str, Any]] = []  # the newest gateway_admin.ACTIONS_KEPT
        self.action_seq = 0
        host, port = parse_address(config.listen)
        self.reserved = _reserve(host, port)
        self.host, self.port = host, self.reserved.getsockname()[1]

    def _health_changed(self, unhealthy: dict[str, list[str]]) -> None:
        _write_atomic(self.state / HEALTH_FILE, unhealthy)

    def _publish(self) -> None:
        data = {"version": self.version, "config": self.config.model_dump(mode="json")}
        _write_atomic(self.state / CONFIG_FILE, data)
        self.checker.update(compile_routes(self.config, self.version))

    def reload(self) -> None:
        try:
            config = load_gateway_config(self.config_path)
        except CorralError as error:
            sys.stderr.write(f"gateway: reload refused, keeping version {self.version}: {error}\n")
            return
        if parse_address(config.listen) != parse_address(self.config.listen):
            sys.stderr.write("gateway: listen changed; it applies on restart\n")
        self.config = config
        self.version += 1
        self._publish()
        sys.stderr.write(f"gateway: config version {self.version} loaded\n")

    def _spawn(self, index: int) -> None:
        argv = [
            sys.executable,
            "-m",
            "corral.gateway.serve",
            "--worker",
            str(index),
            "--state",
            str(self.state),
            "--listen",
            f"{self.host}:{self.port}",
        ]
        self.workers[index] = subprocess.Popen(argv)

    async def run(self, ready: Callable[[str, int], None] | None = None) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self._publish()
        for index in range(self.config.workers):
            self._spawn(index)
        admin = await self._start_admin()
        sys.stderr.write(
            f"gateway: listening on {self.host}:{self.port} with {self.config.workers} worker(s)\n"
        )
        if ready is not None:
            ready(self.host, self.port)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                for index, proc in sorted(self.workers.items()):
                    if proc.poll() is not None and not stop.is_set():
                        sys.stderr.write(f"gateway: worker {index} exited ({proc.returncode})\n")
                        self._spawn(index)
        finally:
            for proc in self.workers.values():
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            deadline = loop.time() + self.config.limits.drain + 2
            for proc in self.workers.values():
                while proc.poll() is None and loop.time() < deadline:
                    await asyncio.sleep(0.05)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            await self.checker.close()
            if admin is not None:
                await admin.cleanup()
            self.reserved.close()
        return 0

    async def _start_admin(self) -> Any:
        if self.config.admin is None:
            return None
        from aiohttp import web

        async def metrics(request: web.Request) -> web.Response:
            snapshots = []
            for path in sorted(self.state.glob("metrics-*.json")):
                with contextlib.suppress(OSError, ValueError):
                    snapshots.append(json.loads(path.read_text()))
            om = wants_openmetrics(request.headers.get("Accept"))
            body = render(snapshots, openmetrics=om).encode()
            return web.Response(body=body, headers={"Content-Type": content_type(om)})

        async def healthz(request: web.Request) -> web.Response:
            alive = sum(1 for p in self.workers.values() if p.poll() is None)
            return web.json_response(
                {
                    "version": self.version,
                    "workers": alive,
                    "unhealthy": self.checker.unhealthy(),
                },
                status=200 if alive else 503,
            )

        token = self.config.admin.token

        def refused(request: web.Request) -> web.Response | None:
            if token is None:
                return _problem(
                    403, "admin actions are off", "set admin.token in the gateway config"
                )
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _problem(
                    401, "missing or wrong admin token", "send Authorization: Bearer <token>"
                )
            return None

        def unknown_route(name: str) -> web.Response | None:
            names = [r.name for r in self.config.routes]
            if name in names:
                return None
            return _problem(404, f"no route named {name!r}", f"routes: {', '.join(names)}")

        async def purge(request: web.Request) -> web.Response:
            answer = refused(request)
            if answer is not None:
                return answer
            try:
                body = await request.json() if request.can_read_body else {}
            except ValueError:
                return _problem(400, "the body is not JSON", 'like {"route": "api"}')
            if not isinstance(body, dict):
                return _problem(400, "the body is not a JSON object", 'like {"prefix": "/a"}')
            route, prefix = str(body.get("route") or ""), str(body.get("prefix") or "")
            if route and (answer := unknown_route(route)) is not None:
                return answer
            if prefix and not prefix.startswith("/"):
                return _problem(400, f"prefix {prefix!r} is not a path", "start it with /")
            return await self._act(gateway_admin.GatewayAction("purge", route, prefix))

        async def breaker_reset(request: web.Request) -> web.Response:
            answer = refused(request) or unknown_route(request.match_info["name"])
            if answer is not None:
                return answer
            name = request.match_info["name"]
            return await self._act(gateway_admin.GatewayAction("reset_breaker", route=name))

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_post("/api/v1/gateway/cache/purge", purge)
        app.router.add_post("/api/v1/gateway/routes/{name}/breaker/reset", breaker_reset)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = parse_address(self.config.admin.listen)
        await web.TCPSite(runner, host, port).start()
        return runner

    async def _act(self, action: gateway_admin.GatewayAction) -> web.Response:
        """Hand an admin action to every worker through the state directory; answer once
        they all applied it (or after ``ACTION_WAIT``)."""
        from aiohttp import web

        self.action_seq += 1
        seq = self.action_seq
        record = {"seq": seq, "action": action.action, "route": action.route}
        record["prefix"] = action.prefix
        self.actions = [*self.actions, record][-gateway_admin.ACTIONS_KEPT :]
        _write_atomic(self.state / ACTIONS_FILE, self.actions)
        sys.stderr.write(f"gateway admin: {gateway_admin.describe(action)}\n")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ACTION_WAIT
        while True:
            alive = sorted(i for i, p in self.workers.items() if p.poll() is None)
            applied = [i for i in alive if self._applied(i) >= seq]
            if len(applied) == len(alive) or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        return web.json_response(
            {**record, "workers": len(alive), "applied_by": len(applied)},
            status=200 if len(applied) == len(alive) else 504,
        )

    def _applied(self, index: int) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(json.loads((self.state / f"{ACTIONS_DONE_PREFIX}{index}.json").read_text()))
        return 0


def _problem(status: int, message: str, hint: str) -> web.Response:
    from aiohttp import web

    return web.json_response({"code": "admin", "message": message, "hint": hint}, status=status)


def serve(config_path: str | Path, ready: Callable[[str, int], None] | None = None) -> int:
    """Run a standalone gateway until SIGTERM/SIGINT. Raises CorralError for a bad config."""
    path = Path(config_path)
    config = load_gateway_config(path)
    with tempfile.TemporaryDirectory(prefix="corral-gateway-") as state:
        supervisor = Supervisor(path, config, Path(state))
        return _run_loop(supervisor.run(ready))


def _run_loop(coro: Any) -> int:
    try:
        import uvloop

        return int(uvloop.run(coro))
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio still works
        return int(asyncio.run(coro))


# --- worker -------------------------------------------------------------------------------


class _Worker:
    def __init__(self, index: int, state: Path) -> None:
        self.index = index
        self.state = state
        self.config_mtime = 0.0
        self.health_mtime = 0.0
        self.version = 0
        self.gw: Gateway | None = None
        self.tls: ssl.SSLContext | None = None
        self.tls_files: tuple[str, str] | None = None
        self.tls_mtimes: tuple[float, float] = (0.0, 0.0)
        self.next_metrics = 0.0
        self.next_poll = 0.0
        self.next_tier = 0.0
        self.tier_at = 0.0
        self.tier_period = 1.0
        self.loading = False
        self.ejections: dict[tuple[str, str], float] = {}  # ours: (cluster, address) → wall until
        self.ejection_mtimes: dict[str, float] = {}  # the other workers' files
        self.actions_mtime = 0.0
        self.actions_done = -1  # the newest admin action seq applied; -1: not read yet

    def _read_config(self) -> tuple[int, GatewayConfig]:
        data = json.loads((self.state / CONFIG_FILE).read_text())
        config = GatewayConfig.model_validate(data["config"])
        return int(data["version"]), config

    def _load_tls(self, config: GatewayConfig) -> None:
        if config.tls is None:
            return
        files = (config.tls.cert, config.tls.key)
        mtimes = (Path(files[0]).stat().st_mtime, Path(files[1]).stat().st_mtime)
        if self.tls is None:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if files != self.tls_files or mtimes != self.tls_mtimes:
            # Loading into the live context: new handshakes use the new certificate.
            self.tls.load_cert_chain(files[0], files[1])
            self.tls_files, self.tls_mtimes = files, mtimes

    async def start(self, listen: str) -> Gateway:
        self.config_mtime = os.stat(self.state / CONFIG_FILE).st_mtime  # noqa: PTH116 - once at start, before serving
        self.version, config = self._read_config()
        self._load_tls(config)
        self.tier_period = config.tier.period
        self.gw = gw = Gateway(
            compile_routes(config, self.version),
            config.limits,
            rng=ids.system_random(),
            scheme="https" if config.tls is not None else "http",
            worker=str(self.index),
            workers=config.workers,
        )
        self._poll_health()
        self._poll_actions()  # before serving: what is there now is older than this worker
        host, port = parse_address(listen)
        sock = _reserve(host, port)
        sock.listen(1024)
        sock.setblocking(False)
        await gw.listen(sock=sock, ssl=self.tls)
        gw.on_sweep.append(self._on_sweep)
        gw.on_ejection = self._ejected
        # Everything alive now (modules, config models, the route table) lives as long as the
        # worker: freezing it keeps the collector from re-walking it on every full collection,
        # which otherwise shows up as a latency spike on whichever request triggers it.
        gc.collect()
        gc.freeze()
        # The span export's POST (urllib: Python code) and the access log's write run in a
        # thread: while it holds the GIL a woken loop waits up to the switch interval for it,
        # and CPython's 5 ms is five times a request's p99 at 50 connections. 0.5 ms bounds
        # that wait (the collector does the same).
        sys.setswitchinterval(EXPORT_SWITCH_INTERVAL)
        return gw

    def _on_sweep(self, now: float) -> None:
        gw = self.gw
        assert gw is not None
        if now >= self.next_poll:
            self.next_poll = now + 0.25
            self._poll_config()
            self._poll_health()
            self._poll_ejections()
            self._poll_actions()
            if self.tls_files is not None:
                with contextlib.suppress(OSError, ssl.SSLError):
                    files = self.tls_files
                    mtimes = (Path(files[0]).stat().st_mtime, Path(files[1]).stat().st_mtime)
                    if mtimes != self.tls_mtimes:
                        assert self.tls is not None
                        self.tls.load_cert_chain(files[0], files[1])
                        self.tls_mtimes = mtimes
        policies = gw.policies
        if policies is not None and policies.tier and now >= self.next_tier:
            self.next_tier = now + self.tier_period
            with contextlib.suppress(OSError):
                self._exchange_tier(now)
        if now >= self.next_metrics:
            self.next_metrics = now + METRICS_EVERY
            with contextlib.suppress(OSError):
                _write_atomic(self.state / f"metrics-{self.index}.json", gw.metrics.snapshot())

    def _exchange_tier(self, now: float) -> None:
        """Publish this worker's demand per tier-wide limiter; rebalance from everyone's."""
        gw = self.gw
        assert gw is not None and gw.policies is not None
        policies = gw.policies
        elapsed = now - self.tier_at if self.tier_at else self.tier_period
        self.tier_at = now
        wall = clock.wall()  # reports are compared across processes
        _write_atomic(
            self.state / f"tier-{self.index}.json",
            {"at": wall, "demands": policies.demands(elapsed)},
        )
        reports: dict[str, tuple[float, dict[str, float]]] = {}
        for path in sorted(self.state.glob("tier-*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                data = json.loads(path.read_text())
                worker = path.stem[len("tier-") :]
                reports[worker] = (float(data["at"]), dict(data["demands"]))
        policies.rebalance(reports, wall, gw.loop.time())

    def _poll_config(self) -> None:
        try:
            mtime = Path(self.state / CONFIG_FILE).stat().st_mtime
        except OSError:
            return
        if mtime == self.config_mtime or self.loading:
            return
        self.config_mtime = mtime
        self.loading = True
        asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        gw = self.gw
        assert gw is not None
        try:
            loop = asyncio.get_running_loop()
            version, config = await loop.run_in_executor(None, self._read_config)
            table = await loop.run_in_executor(None, compile_routes, config, version)
            if version > self.version:
                self._load_tls(config)
                self.tier_period = config.tier.period
                gw.apply(table)  # one assignment swaps the table: requests see old or new
                self.version = version
        except Exception:
            log.exception("gateway worker %d: config reload failed", self.index)
        finally:
            self.loading = False

    def _ejected(self, cluster: str, address: str, reason: str) -> None:
        """Publish an ejection this worker decided (rare: a file write on the loop is fine)."""
        gw = self.gw
        assert gw is not None
        pool = gw.pools.get(cluster)
        if pool is None:
            return
        wall = clock.wall()
        self.ejections[(cluster, address)] = wall + pool.outlier.ejected_until(address) - gw.now
        self.ejections = {k: until for k, until in self.ejections.items() if until > wall}
        rows = [[c, a, until] for (c, a), until in sorted(self.ejections.items())]
        with contextlib.suppress(OSError):
            _write_atomic(self.state / f"{EJECTIONS_PREFIX}{self.index}.json", rows)

    def _poll_ejections(self) -> None:
        gw = self.gw
        assert gw is not None
        mine = f"{EJECTIONS_PREFIX}{self.index}.json"
        for path in sorted(self.state.glob(f"{EJECTIONS_PREFIX}*.json")):
            if path.name == mine:
                continue
            try:
                mtime = path.stat().st_mtime
                if self.ejection_mtimes.get(path.name) == mtime:
                    continue
                self.ejection_mtimes[path.name] = mtime
                rows = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            offset = gw.now - clock.wall()  # wall-clock deadlines → this loop's clock
            for cluster, address, until in rows:
                pool = gw.pools.get(cluster)
                if (
                    pool is not None
                    and address in pool.by_address
                    and pool.outlier.adopt(address, float(until) + offset, gw.now)
                ):
                    pool.refresh(gw.now)

    def _poll_actions(self) -> None:
        """Apply admin actions posted since the last sweep; at start, skip the old ones."""
        gw = self.gw
        assert gw is not None
        path = self.state / ACTIONS_FILE
        try:
            mtime = path.stat().st_mtime
            if mtime == self.actions_mtime and self.actions_done >= 0:
                return
            records = json.loads(path.read_text())
        except FileNotFoundError:
            if self.actions_done >= 0:
                return
            records, mtime = [], 0.0
        except (OSError, ValueError):
            return
        self.actions_mtime = mtime
        newest = max((int(r["seq"]) for r in records), default=0)
        if self.actions_done < 0:  # started after these: nothing of ours to purge or reset
            self.actions_done = newest
        else:
            for record in records:
                if int(record["seq"]) <= self.actions_done:
                    continue
                action = gateway_admin.GatewayAction(
                    record["action"], route=record["route"], prefix=record["prefix"]
                )
                touched = gateway_admin.apply(gw, action, gw.loop.time())
                log.info("gateway admin: %s (%d touched)", gateway_admin.describe(action), touched)
            self.actions_done = max(self.actions_done, newest)
        with contextlib.suppress(OSError):
            _write_atomic(self.state / f"{ACTIONS_DONE_PREFIX}{self.index}.json", self.actions_done)

    def _poll_health(self) -> None:
        gw = self.gw
        assert gw is not None
        path = self.state / HEALTH_FILE
        try:
            mtime = Path(path).stat().st_mtime
            if mtime == self.health_mtime:
                return
            self.health_mtime = mtime
            gw.set_unhealthy(json.loads(path.read_text()))
        except (OSError, ValueError):
            return


async def run_worker(index: int, state: Path, listen: str) -> int:
    worker = _Worker(index, state)
    gw = await worker.start(listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor reloads, not us
    await stop.wait()
    await gw.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corral.gateway.serve")
    parser.add_argument("--config", help="the gateway config file (supervisor mode)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--state", help=argparse.SUPPRESS)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.worker is not None:
        return _run_loop(run_worker(args.worker, Path(args.state), args.listen))
    if not args.config:
        parser.error("--config is required")
    try:
        return serve(args.config)
    except CorralError as error:
        sys.stderr.write(f"error: {error}\n")
        if error.hint:
            sys.stderr.write(f"hint: {error.hint}\n")
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
