"""One node of the replicated control plane (``corral server --cluster``).

Every node opens its ``RaftStore`` member, serves the whole API (followers forward writes
through Raft and read linearizably through ReadIndex) and publishes its API URL in the Store;
only the leader runs the controllers (``control.leader_watch``). Nothing here needs quorum to
start: a node that cannot reach a majority serves ``GET /cluster`` and answers everything
else with ``no_quorum`` until the others return.

Where things live. On one machine every node shares ``$CORRAL_HOME`` — the machine's tokens,
instances, pets' data, the collector and gateway files — and keeps its own files under
``$CORRAL_HOME/nodes/<id>/`` (``store/`` with its Raft log and store file, ``server.log``,
``server.pid``, ``api``). So whichever node leads runs *this machine's* agent and re-adopts the
instances the previous leader's agent started: placement stays on the one machine node
(``local``). Spreading instances over several machines needs node liveness and placement,
which this module does not do. Each node holds ``$CORRAL_HOME/lock`` shared, so no single
control plane starts on the same home meanwhile; ``$CORRAL_HOME/cluster`` marks the home as a
cluster's. ``$CORRAL_HOME/api`` lists every member's API URL, the leader's first, so clients
and the platform's own processes reach a node that can answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal

import msgspec
from aiohttp import web

from corral import clock
from corral.api.cluster import ClusterApi
from corral.api.server import Api, listen
from corral.consensus.config import PRESETS
from corral.consensus.messages import NONE
from corral.control import cluster_view
from corral.control.cluster_view import MEMBERS, MemberRecord, member_key
from corral.control.leader_watch import Controllers, LeaderWatch
from corral.control.leadership import Leadership
from corral.errors import Compacted, CorralError, UserError
from corral.home import Home
from corral.server import configure_logging
from corral.store.base import Put
from corral.store.raft import RaftStore

log = logging.getLogger("corral.cluster")

PUBLISH_EVERY = 0.2  # seconds between checks of this node's member record and the api file


class ClusterNode:
    def __init__(self, home: Home, node_id: int, peers: dict[int, str]) -> None:
        self.home = home
        self.node_id = node_id
        self.peers = peers
        self.node_home = Home(home.node_dir(node_id))
        self.members: dict[int, MemberRecord] = {}
        self.url = ""
        self.store: RaftStore | None = None
        self.cluster_api: ClusterApi | None = None

    async def serve(
        self,
        host: str,
        port: int,
        *,
        join: bool = False,
        preset: str = "default",
        request_timeout: float = 5.0,
    ) -> None:
        if self.node_id not in self.peers:
            raise UserError(
                f"--node-id {self.node_id} is not in --peers ({sorted(self.peers)})",
                "list every member in --peers, this node included",
            )
        if preset not in PRESETS:
            raise UserError(f"unknown raft preset {preset!r}", f"one of {sorted(PRESETS)}")
        config = PRESETS[preset]
        home = self.home
        lock_fd = home.lock_shared()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks: list[asyncio.Task[None]] = []
        runner: web.AppRunner | None = None
        api: Api | None = None
        watch: LeaderWatch | None = None
        store: RaftStore | None = None
        try:
            tokens = home.ensure_tokens()
            self._mark_cluster_home()
            store = await RaftStore.open(
                self.node_id,
                self.peers,
                self.node_home.path / "store",
                config,
                request_timeout=request_timeout,
                join=join,
            )
            self.store = store
            controllers = Controllers(store, home)
            # settle one (minimum) election timeout: see control.leadership
            leadership = Leadership(settle=config.election_timeout_seconds[0])
            watch = LeaderWatch(lambda: store.is_leader, controllers, leadership)
            cluster_api = ClusterApi(store, lambda: self.members)
            self.cluster_api = cluster_api
            api = Api(
                store,
                home,
                tokens,
                on_shutdown=stop.set,
                passes=lambda: controllers.passes,
                reconciler=controllers,
                extra_routes=cluster_api.routes(),
            )
            controllers.on_pass = api.metrics.observe_reconcile
            runner, bound = await listen(api, host, port)
            self.url = f"http://{host}:{bound}"
            self.node_home.write_atomic("server.pid", f"{os.getpid()}\n")
            self.node_home.write_atomic("api", self.url + "\n")
            self._write_api_file()
            watch.start()
            tasks = [
                loop.create_task(self._follow_members(store), name="cluster members"),
                loop.create_task(self._publish(store), name="cluster publish"),
            ]
            log.info(
                "cluster node %d (raft %s) serving %s for %s",
                self.node_id,
                self.peers[self.node_id],
                self.url,
                home.path,
            )
            await stop.wait()
            log.info("cluster node %d stopping; instances keep running", self.node_id)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for name in ("api", "server.pid"):
                with contextlib.suppress(FileNotFoundError):
                    (self.node_home.path / name).unlink()
            if runner is not None:
                await runner.cleanup()
            if api is not None:
                await api.close()
            if watch is not None:
                await watch.close()
            if store is not None:
                await store.close()
            os.close(lock_fd)

    def _mark_cluster_home(self) -> None:
        path = self.home.cluster_file
        text = json.dumps({str(k): v for k, v in sorted(self.peers.items())}) + "\n"
        if not path.exists():
            self.home.write_atomic("cluster", text)

    # -- membership records and the api file ------------------------------------------------

    async def _follow_members(self, store: RaftStore) -> None:
        """Keep ``self.members`` equal to the Store's member records. The watch reads this
        node's own history (no quorum needed), so a node that lost the others still knows
        where their APIs were."""
        revision = 1
        while True:
            try:
                async for event in store.watch(MEMBERS, revision):
                    revision = event.kv.mod_revision + 1
                    node_id = int(event.kv.key[len(MEMBERS) :])
                    if event.type == "put":
                        self.members[node_id] = _decode(event.kv.value)
                    else:
                        self.members.pop(node_id, None)
            except Compacted:
                try:
                    listing = await store.range(MEMBERS)
                except CorralError:
                    await asyncio.sleep(0.5)
                    continue
                self.members = {
                    int(kv.key[len(MEMBERS) :]): _decode(kv.value) for kv in listing.kvs
                }
                revision = listing.revision + 1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("following the cluster's members failed; retrying")
                await asyncio.sleep(0.5)

    async def _publish(self, store: RaftStore) -> None:
        """Publish this node's API URL while it is a member; keep the api file current."""
        mine = MemberRecord(self.node_id, self.peers[self.node_id], self.url)
        retry_at = 0.0
        while True:
            raft = store.node.raft
            leaving = self.cluster_api is not None and self.cluster_api.leaving
            member = (
                raft is not None
                and not leaving
                and (self.node_id in raft.voters or self.node_id in raft.learners)
            )
            now = clock.monotonic()
            if member and self.members.get(self.node_id) != mine and now >= retry_at:
                try:
                    await store.txn([], [Put(member_key(self.node_id), _encode(mine))])
                except CorralError as exc:
                    log.info("cannot publish this node's API address yet (%s)", exc)
                    retry_at = clock.monotonic() + 1.0
            self._write_api_file()
            await asyncio.sleep(PUBLISH_EVERY)

    def _write_api_file(self) -> None:
        store = self.store
        leader = store.node.leader_id if store is not None else NONE
        current = self.home.api_urls()
        if leader == NONE:
            # without a leader, only make sure this node is listed
            wanted = current if self.url in current else [*current, self.url]
        else:
            urls = {node_id: m.api for node_id, m in self.members.items()}
            urls[self.node_id] = self.url
            wanted = cluster_view.api_urls(urls, leader)
        if wanted != current:
            self.home.write_atomic(self.home.api_file.name, "".join(f"{url}\n" for url in wanted))


def _encode(record: MemberRecord) -> bytes:
    return msgspec.json.encode(record)


def _decode(data: bytes) -> MemberRecord:
    return msgspec.json.decode(data, type=MemberRecord)


def main(
    home: Home,
    node_id: int,
    peers: dict[int, str],
    host: str,
    port: int,
    *,
    join: bool = False,
    preset: str = "default",
    request_timeout: float = 5.0,
    foreground: bool = True,
) -> None:
    home.create()
    node = ClusterNode(home, node_id, peers)
    node.node_home.path.mkdir(parents=True, exist_ok=True)
    configure_logging(node.node_home, foreground)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    asyncio.run(node.serve(host, port, join=join, preset=preset, request_timeout=request_timeout))
