"""The control plane process (`corral server`): Store, agent, reconciler and API in one loop.

Start-up order matters: lock ``$CORRAL_HOME`` (one control plane per home), open the Store,
let the agent re-adopt the shims that outlived a previous control plane *before* the reconciler
plans anything (so nothing running is mistaken for missing), then serve the API and publish
its address in ``$CORRAL_HOME/api``. On SIGTERM/SIGINT or ``POST /shutdown`` it stops serving
and exits; the instances keep running under their shims. ``corral down`` stops them first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from aiohttp import web

from corral.agent.agent import Agent
from corral.agent.usage import CpuUsage
from corral.api.server import Api, listen
from corral.control.autoscaler import Autoscaler
from corral.control.reconciler import Reconciler
from corral.control.system import ensure_collector
from corral.errors import UserError
from corral.home import Home
from corral.store.base import Store
from corral.store.etcd import SCHEME as ETCD_SCHEME
from corral.store.etcd import EtcdStore
from corral.store.sqlite import SQLiteStore

log = logging.getLogger("corral.server")


def configure_logging(home: Home, foreground: bool) -> None:
    handlers: list[logging.Handler] = [logging.FileHandler(home.log_file)]
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=os.environ.get("CORRAL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


STORE_CHOICE = "store"  # $CORRAL_HOME/store: the store URL this home's control plane uses


def store_choice(home: Home, url: str | None) -> str:
    """The store this home runs on: ``url`` (``--store``/``CORRAL_STORE``) if given; else the
    one recorded by the last start, so a start without it does not come up empty on SQLite;
    else ``sqlite``."""
    if url and url.strip():
        return url.strip()
    recorded = home.path / STORE_CHOICE
    if recorded.exists():
        return recorded.read_text().strip() or "sqlite"
    return "sqlite"


async def open_store(home: Home, url: str) -> Store:
    """Open the store ``url`` names and record it as this home's choice."""
    store: Store
    if url.startswith(ETCD_SCHEME):
        store = await EtcdStore.open(url)
    elif url == "sqlite":
        store = await SQLiteStore.open(home.store_path)
    else:
        raise UserError(
            f"unknown store {url!r}",
            "use --store sqlite (the default, $CORRAL_HOME/store.db) or etcd://HOST:PORT[,…]",
        )
    home.write_atomic(STORE_CHOICE, url + "\n")
    return store


async def serve(
    home: Home, host: str = "127.0.0.1", port: int = 0, store_url: str | None = None
) -> None:
    if home.cluster_file.exists():
        raise UserError(
            f"{home.path} is the home of a replicated control plane (see {home.cluster_file})",
            "start its nodes with `corral server --cluster --node-id N --peers …`; set "
            "CORRAL_HOME to another directory for a single control plane",
        )
    lock_fd = home.lock()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tokens = home.ensure_tokens()
    store = await open_store(home, store_choice(home, store_url))
    agent = Agent(store, home)
    reconciler = Reconciler(store, endpoints_file=home.path / "endpoints.json")
    # rps and latency sources plug in here once the gateway publishes its counters.
    autoscaler = Autoscaler(store, {"cpu": CpuUsage(home.instances_dir)})
    runner: web.AppRunner | None = None
    api: Api | None = None
    try:
        await agent.start()
        await ensure_collector(store, home.path)
        await reconciler.start()
        await autoscaler.start()
        api = Api(
            store,
            home,
            tokens,
            on_shutdown=stop.set,
            passes=lambda: reconciler.passes,
            reconciler=reconciler,
        )
        reconciler.on_pass = api.metrics.observe_reconcile
        runner, bound = await listen(api, host, port)
        home.write_atomic("server.pid", f"{os.getpid()}\n")
        home.write_atomic("api", f"http://{host}:{bound}\n")
        log.info(
            "control plane %d serving http://%s:%d for %s", os.getpid(), host, bound, home.path
        )
        await stop.wait()
        log.info("control plane stopping; instances keep running under their shims")
    finally:
        for path in (home.api_file, home.pid_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if runner is not None:
            await runner.cleanup()
        if api is not None:
            await api.close()
        await autoscaler.close()
        await reconciler.close()
        await agent.close()
        await store.close()
        os.close(lock_fd)


def main(
    home: Home, host: str, port: int, foreground: bool = True, store_url: str | None = None
) -> None:
    home.create()
    configure_logging(home, foreground)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep the plain loop working
        pass
    asyncio.run(serve(home, host, port, store_url))
