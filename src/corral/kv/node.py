"""One AP-store node: the asyncio adapter around the pure quorum coordinator.

Theory of operation (Dynamo §4.5–4.7; the simulator's ``sim.kv.KvWorld`` is the same logic on a
virtual network, and what its checkers prove is what this adapter relies on):
- **Membership.** A ``SwimDriver`` on the node's peer address (UDP) says who is alive. The ring
  holds every kv member not known to have *left* — a dead member keeps its ranges, so writes
  for it go to stand-ins as hints.
- **Healthy, for routing** (Dynamo §4.8: a node judges a peer by whether its requests are
  answered; gossip is for membership): our own connection's evidence first (``Rpc.evidence``)
  — a refused or lost connection makes a peer unhealthy at once, a replica request left
  unanswered for ``replica_timeout`` too, and a peer that answered within the last second is
  healthy even while gossip suspects it (a loaded node answers probes late); with no evidence,
  alive in this node's SWIM view. When fewer than W (or R) nodes look healthy, every member
  not just refused is tried before a request is refused: a false suspicion costs nothing while
  enough nodes answer, and the quorum, not a guess, fails a request.
- **Put.** Only a replica issues a dot, so a node outside the key's targets forwards the write
  to the first target, once: a node that receives a forwarded write but sees other targets
  first coordinates it itself as the stand-in for its last target. The coordinator makes the
  new version (its actor comes from storage, see ``storage``), stores it, and in parallel
  waits for its own ``sync`` and for ``Replicate`` acks — each replica answers only once the
  object is durable there. W acks → acknowledged. ``PutRequest.tick`` replaces a replica
  silent for ``replica_timeout`` with the next healthy node of the walk, as a stand-in
  holding a hint. As in Cassandra, when a home node has no stand-in (e.g. N equals the
  cluster size) or its replica call fails, the coordinator keeps a hint for it itself, so a
  returning node catches up by handoff.
- **Get.** R replies from the healthy preference list, merged; the client is answered at R,
  and once every target has replied or timed out, home replicas holding a stale copy get the
  merged object (read repair).
- **Hinted handoff** every ``handoff_interval``: hints whose owner is healthy are sent; a hint
  is dropped only if unchanged since it was sent. While no owner is back the round costs
  O(owners), not a scan of every hint.
- **Anti-entropy** every ``ae_interval``: for each healthy peer, a Merkle tree over the keys
  both should hold (``leaves_for`` of their count) is sent; the peer answers with its objects
  in differing leaves, merges ours, and both sides end equal. Tombstones older than ``grace``
  are reaped first. Each side keeps its tree per peer and rehashes only the keys stored since
  the last round; a tree is (re)built a slice of ``AE_SLICE`` keys at a time, paced to at
  most a fifth of the loop (``_Pacer``), letting writes run between slices (see ``_tree_for``).
- **Background work never stalls writes for long**: with a replica down every write waits for
  both survivors, so a loop stall on either is in the write tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from corral import clock
from corral.kv import versions
from corral.kv.coordinator import (
    Conflicts,
    GetRequest,
    PutRequest,
    Quorum,
    Target,
    new_version,
    sloppy_targets,
)
from corral.kv.merkle import MerkleTree, diff, leaves_for
from corral.kv.ring import Ring
from corral.kv.storage import KvStorage
from corral.kv.transport import Evidence, Rpc
from corral.kv.versions import Context, Versioned
from corral.kv.wire import (
    AeApply,
    AeObjects,
    AeTree,
    Coordinate,
    Done,
    Fetch,
    Found,
    Handoff,
    NoQuorum,
    ReplicaFailed,
    Replicate,
    ReplicaUnavailable,
    Reply,
    Request,
    Written,
    from_wire,
    to_wire,
)
from corral.membership import PRESETS, MemberEvent, State
from corral.membership.driver import SwimDriver

log = logging.getLogger(__name__)
ROLE = "kv"
AE_SLICE = 512  # keys per slice of a Merkle tree build between loop turns
AE_REST = 4.0  # after each slice, rest this many times as long as it ran (≤ 1/5 of the loop)
_DONE = Done()
_UNKNOWN = (False, "")


class _OneKey:
    """The ring as ``sloppy_targets`` sees it, for one key whose walk is known: the key is
    hashed once per put instead of once per question."""

    __slots__ = ("walk",)

    def __init__(self, walk: tuple[str, ...]) -> None:
        self.walk = walk

    def home(self, _key: str, n: int) -> tuple[str, ...]:
        return self.walk[:n]

    def preference_list(self, _key: str, n: int, healthy: Callable[[str], bool]) -> list[str]:
        out = [node for node in self.walk if healthy(node)]  # same as Ring.preference_list
        return out[:n]


class _Pacer:
    """Background work's share of the loop. Yielding between slices bounds a stall but not the
    share: a slice every loop turn took half of a saturated node's time for the second or so of
    a tree build, halving its write throughput — and with 64 clients writing back to back,
    halving throughput doubles every write's latency. Resting ``rest`` times as long as the
    slice ran keeps the writes' share; anti-entropy has ``ae_interval`` to finish (a peer's
    build that outlasts the asker's wait is kept, and answers the next round)."""

    __slots__ = ("_since", "rest")

    def __init__(self, rest: float = AE_REST) -> None:
        self.rest = rest
        self._since = clock.monotonic()

    async def breathe(self) -> None:
        await asyncio.sleep((clock.monotonic() - self._since) * self.rest)
        self._since = clock.monotonic()


class _Waker:
    """What a request waits on: woken by a reply callback, or by its own timer. Cheaper than
    an ``asyncio.Event`` plus ``asyncio.timeout`` per wait."""

    __slots__ = ("fut",)

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None

    def wake(self) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)

    async def sleep(self, seconds: float) -> None:
        fut = self.fut = asyncio.get_running_loop().create_future()
        timer = fut.get_loop().call_later(seconds, self.wake)
        try:
            await fut
        finally:
            timer.cancel()
            self.fut = None


@dataclass(frozen=True)
class NodeConfig:
    name: str
    data_dir: Path
    http: str = "127.0.0.1:8500"  # the HTTP API
    peer: str = "127.0.0.1:8501"  # node-to-node RPC (TCP) and gossip (UDP), same port
    join: tuple[str, ...] = ()  # peer addresses of members to join through
    quorum: Quorum = field(default_factory=Quorum)
    vnodes: int = 256
    conflicts: Conflicts = "siblings"
    membership: str = "local"  # a preset of corral.membership.PRESETS
    request_timeout: float = 2.0
    replica_timeout: float = 0.3
    handoff_interval: float = 1.0
    ae_interval: float = 10.0
    grace: float = 86400.0  # tombstones older than this are forgotten
    cluster: str = "kv"


@dataclass
class Counters:
    puts: int = 0
    gets: int = 0
    forwarded: int = 0
    hints_written: int = 0
    handoffs: int = 0
    read_repairs: int = 0
    ae_rounds: int = 0
    ae_shipped: int = 0
    reaped: int = 0
    suspected: int = 0  # SWIM suspect events about peers (false ones show up here under load)
    declared_dead: int = 0
    gc_full: int = 0  # full collections, and the longest pause of any (see ``http.GcPolicy``)
    gc_pause_max_ms: float = 0.0


class KvNode:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.name
        self.quorum = config.quorum.validate()
        self.storage = KvStorage(config.data_dir, config.name, config.conflicts)
        self.rpc = Rpc(
            config.name, config.peer, self.handle, config.cluster, stall=config.replica_timeout
        )
        self.members = SwimDriver(
            config.name,
            config.peer,
            PRESETS[config.membership],
            role=ROLE,
            tags={"http": config.http},
            on_event=self._on_member,
        )
        self.ring = Ring([config.name], config.vnodes)
        self.counters = Counters()
        self._view: dict[str, tuple[bool, str]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._stopped = False
        # per peer: the Merkle tree of the keys we share and the ring it was built on
        self._trees: dict[str, tuple[Ring, MerkleTree]] = {}
        self._trees_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            await self.rpc.start()
            await self.members.start()
        except BaseException:  # e.g. a port in use: release the data directory's lock
            await self.rpc.stop()
            await self.members.stop(leave=False)
            self.storage.close()
            raise
        self._rebuild_ring()
        self._loops = [
            asyncio.get_running_loop().create_task(self._join()),
            self._every(self.config.handoff_interval, self.handoff_once),
            self._every(self.config.ae_interval, self.anti_entropy_once),
        ]

    async def stop(self) -> None:
        """Stop serving and close the data directory; a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        for task in self._loops:
            task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.members.stop(leave=False)
        await self.rpc.stop()
        with contextlib.suppress(Exception):
            await self.storage.sync()
        self.storage.close()

    async def _join(self) -> None:
        """Push our view to the seeds until one answers: a seed may start after us."""
        while self.config.join:
            self.members.join(self.config.join)
            await asyncio.sleep(0.25)
            if any(m.name != self.name for m in self.members.members()):
                return

    def _every(self, interval: float, work: Callable[[], Awaitable[Any]]) -> asyncio.Task[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    await work()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("kv node %s: background %s failed", self.name, work)

        return asyncio.get_running_loop().create_task(loop())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ membership

    def _on_member(self, ev: MemberEvent) -> None:
        self._view = None
        if ev.kind == "suspect":
            self.counters.suspected += 1
        elif ev.kind == "dead":
            self.counters.declared_dead += 1
        if ev.kind in ("join", "left", "dead", "alive", "update"):
            self._rebuild_ring()

    def _rebuild_ring(self) -> None:
        names = sorted(
            m.name for m in self.members.members() if m.role == ROLE and m.state != State.LEFT
        )
        if tuple(names) != self.ring.nodes:
            self.ring = Ring(names, self.config.vnodes)

    def _peers(self) -> dict[str, tuple[bool, str]]:
        """Each member's (alive, peer address), rebuilt after any membership event: every put
        asks this several times, and a fresh member view each time is measurable."""
        if self._view is None:
            self._view = {
                m.name: (m.state == State.ALIVE, m.address) for m in self.members.members()
            }
        return self._view

    def healthy(self, node: str) -> bool:
        if node == self.name:
            return True
        seen = self.rpc.evidence(node)
        if seen is not None:
            return seen is Evidence.ANSWERING
        return self._peers().get(node, _UNKNOWN)[0]

    def reachable(self, node: str) -> bool:
        """Worth a try when too few nodes are healthy: a member whose connection was not
        just refused or lost, whatever gossip thinks of it."""
        if node == self.name:
            return True
        return node in self._peers() and self.rpc.evidence(node) is not Evidence.DOWN

    def address(self, node: str) -> str:
        known = self._peers().get(node)
        if known is None:
            raise ReplicaUnavailable(f"kv node {node} is not a member known to {self.name}")
        return known[1]

    def _send(self, node: str, body: Request) -> asyncio.Future[Reply]:
        try:
            address = self.address(node)
        except ReplicaUnavailable as exc:
            failed: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        return self.rpc.send(node, address, body, self.config.request_timeout)

    async def _call(self, node: str, body: Request, timeout: float | None = None) -> Reply:
        wait = self.config.request_timeout if timeout is None else timeout
        return await self.rpc.call(node, self.address(node), body, wait)

    # ------------------------------------------------------------------ put

    async def put(
        self, key: str, value: bytes | None, context: Context, w: int, forwarded: bool = False
    ) -> Versioned:
        """Write (or, with ``None``, delete) ``key``; the coordinator's copy once W nodes hold
        it durably. ``NoQuorum`` when they do not within ``request_timeout``. A ``forwarded``
        write (a peer's ``Coordinate``) is never forwarded again: two nodes that disagree about
        who is up would bounce it, each hop a nested call."""
        self.counters.puts += 1
        n = self.quorum.n
        walk = self.ring.walk(key)
        one_key = _OneKey(walk)
        targets = sloppy_targets(one_key, key, n, self.healthy)  # type: ignore[arg-type]  # ring-alike for this key
        if len(targets) < w:
            targets = sloppy_targets(one_key, key, n, self.reachable)  # type: ignore[arg-type]  # as above
        mine = next((t for t in targets if t.node == self.name), None)
        if len(targets) < w:
            raise NoQuorum(
                f"kv put {key!r}: only {len(targets)} healthy node(s) for w={w} "
                f"(members: {', '.join(self.ring.nodes)})",
                "wait for nodes to rejoin, or write with a smaller ?w=",
            )
        if mine is None and forwarded:
            # The forwarder saw us as first healthy; we see others first. Take the last
            # target's place as its stand-in: still N copies, and handoff moves ours home.
            last = targets[-1]
            mine = Target(self.name, last.hint_for or last.node)
            targets = [*targets[:-1], mine]
        if mine is None:
            self.counters.forwarded += 1
            reply = await self._call(
                targets[0].node, Coordinate(key, value, [(a, c) for a, c in context], w)
            )
            if isinstance(reply, Written) and reply.ok:
                return from_wire(reply.obj)
            raise NoQuorum(
                f"kv put {key!r} forwarded to {targets[0].node}: "
                + (reply.error if isinstance(reply, Written) else "unexpected reply"),
                "retry with the context of your last read; the write may or may not have landed",
            )
        return await self._coordinate(key, value, context, w, targets, mine, walk)

    async def _coordinate(
        self,
        key: str,
        value: bytes | None,
        context: Context,
        w: int,
        targets: list[Target],
        mine: Target,
        walk: tuple[str, ...],
    ) -> Versioned:
        storage = self.storage
        if mine.hint_for is None:
            local = storage.get(key)
            actor = local.actor or storage.new_actor()
        else:  # a stand-in: its hint is forgotten after handoff, so a one-write actor
            local = storage.hints.for_key(key)
            actor = storage.new_actor()
        obj = new_version(local, context, actor, value, clock.wall(), self.config.conflicts)
        stored = storage.store(key, msgspec.structs.replace(obj, actor=actor), mine.hint_for)
        now = clock.monotonic()
        cfg = self.config
        req = PutRequest(
            key, stored, "", targets, walk, w, now,
            cfg.request_timeout, cfg.replica_timeout,
        )  # fmt: skip
        wire = to_wire(stored)
        home = walk[: self.quorum.n]
        waker = _Waker()
        tried = {t.node for t in targets}
        unsettled = 1  # our own sync, then each replica call until it answers or fails

        def settled() -> None:
            nonlocal unsettled
            unsettled -= 1
            if unsettled == 0:
                waker.wake()  # nothing more can arrive: fail now unless a node is left

        def acked(node: str) -> None:
            req.ack(node, clock.monotonic())
            if req.outcome != "pending":
                waker.wake()

        def local_durable(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is None:
                acked(self.name)
            settled()

        def replicate(t: Target) -> None:
            nonlocal unsettled
            unsettled += 1
            tried.add(t.node)

            def replied(reply: asyncio.Future[Reply]) -> None:
                if reply.cancelled():
                    return
                if reply.exception() is None:
                    acked(t.node)
                else:
                    owner = t.hint_for or t.node
                    if owner in home and owner != self.name:
                        self._hint(key, stored, owner)
                settled()

            self._send(t.node, Replicate(key, wire, t.hint_for)).add_done_callback(replied)

        covered = {t.node for t in targets} | {t.hint_for for t in targets if t.hint_for}
        for owner in home:
            if owner not in covered:
                self._hint(key, stored, owner)
        storage.durable().add_done_callback(local_durable)
        for t in req.start():
            if t.node != self.name:
                replicate(t)
        while req.outcome == "pending":
            now = clock.monotonic()
            await waker.sleep(min(cfg.replica_timeout, max(0.0, req.deadline - now)))
            now = clock.monotonic()
            for t in req.tick(now, self.healthy):
                replicate(t)
            req.expire(now)
            if req.outcome == "pending" and unsettled == 0:
                # Every call settled short of W: the failed ones will never answer, so
                # replace them now rather than after ``replica_timeout`` (``tick`` takes a
                # slot as silent once that long has passed) — healthy nodes first, then any
                # node not known down. None left: waiting longer is moot.
                later = now + cfg.replica_timeout
                extra = req.tick(later, self.healthy) + req.tick(later, self.reachable)
                if not extra:
                    break
                for t in extra:
                    replicate(t)
        if req.outcome != "ok":
            raise NoQuorum(
                f"kv put {key!r}: {req.acks} of w={w} replicas acknowledged (tried "
                f"{', '.join(sorted(tried))}; request timeout {cfg.request_timeout:.1f} s)",
                "the write may or may not have landed: read, then retry with the context",
            )
        return storage.get(key) if mine.hint_for is None else storage.hints.for_key(key)

    def _hint(self, key: str, obj: Versioned, owner: str) -> None:
        self.storage.store(key, obj, owner)
        self.counters.hints_written += 1
        # schedules the commit (a failed one re-queues the row); with a replica down every
        # put keeps a hint, and a task per hint to wait for it was measurable
        self.storage.durable()

    # ------------------------------------------------------------------ get

    async def get(self, key: str, r: int) -> Versioned:
        self.counters.gets += 1
        cfg = self.config
        targets = self.ring.preference_list(key, self.quorum.n, self.healthy)
        if len(targets) < r:
            targets = self.ring.preference_list(key, self.quorum.n, self.reachable)
        if len(targets) < r:
            raise NoQuorum(
                f"kv get {key!r}: only {len(targets)} healthy node(s) for r={r}",
                "wait for nodes to rejoin, or read with a smaller ?r=",
            )
        now = clock.monotonic()
        g = GetRequest(key, targets, r, now, cfg.request_timeout, cfg.conflicts)
        waker = _Waker()
        if self.name in targets:
            g.reply(self.name, self.storage.local(key), now)
        others = [t for t in targets if t != self.name]
        outstanding = len(others)

        def fetched(node: str, reply: asyncio.Future[Reply]) -> None:
            nonlocal outstanding
            outstanding -= 1
            if not reply.cancelled() and reply.exception() is None:
                found = reply.result()
                if isinstance(found, Found):
                    g.reply(node, from_wire(found.obj), clock.monotonic())
                    if g.outcome != "pending":
                        waker.wake()
            if outstanding == 0:
                waker.wake()
                if g.repairs():
                    self._spawn(self._read_repair(g))

        for node in others:
            self._send(node, Fetch(key)).add_done_callback(partial(fetched, node))
        if g.outcome == "pending":
            await waker.sleep(cfg.request_timeout)
            g.tick(clock.monotonic())
        if g.outcome != "ok":
            raise NoQuorum(
                f"kv get {key!r}: {len(g.replies)} of r={r} replicas answered within "
                f"{cfg.request_timeout:.1f} s",
                "retry, or read with a smaller ?r=",
            )
        return g.merged

    async def _read_repair(self, g: GetRequest) -> None:
        home = self.ring.home(g.key, self.quorum.n)
        wire = to_wire(g.merged)
        for node in g.repairs():
            if node not in home:
                continue  # a stand-in hands its hint off; repairing it would keep a copy there
            self.counters.read_repairs += 1
            if node == self.name:
                self.storage.store(g.key, g.merged)
                await self.storage.sync()
            else:
                with contextlib.suppress(ReplicaUnavailable):
                    await self._call(node, Replicate(g.key, wire, None))

    # ------------------------------------------------------------------ serving peers

    def handle(self, frm: str, body: Request) -> Reply | Awaitable[Reply]:
        if isinstance(body, Fetch):
            return Found(to_wire(self.storage.local(body.key)))
        if isinstance(body, Replicate):
            self.storage.store(body.key, from_wire(body.obj), body.hint_for)
            return self._done_when_durable()
        if isinstance(body, Handoff):
            self.storage.store(body.key, from_wire(body.obj))
            return self._done_when_durable()
        if isinstance(body, AeApply):
            for key, obj in body.objects:
                self.storage.store(key, from_wire(obj))
            self.counters.ae_shipped += len(body.objects)
            return self._done_when_durable()
        if isinstance(body, AeTree):
            return self._answer_tree(frm, body)
        return self._coordinate_for_peer(body)

    async def _answer_tree(self, frm: str, body: AeTree) -> Reply:
        theirs = MerkleTree.peer_view(body.hashes)
        mine = await self._tree_for(frm, theirs.leaves)
        leaves = diff(mine, theirs)
        return AeObjects(leaves, self._objects_in(mine, leaves))

    def _done_when_durable(self) -> asyncio.Future[Reply]:
        """``Done`` once what was stored is on disk: a callback on the shared commit, so a
        replica write costs no task."""
        answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def committed(done: asyncio.Future[None]) -> None:
            if done.cancelled():
                answer.cancel()
            elif (exc := done.exception()) is not None:
                answer.set_exception(exc)
            else:
                answer.set_result(_DONE)

        self.storage.durable().add_done_callback(committed)
        return answer

    async def _coordinate_for_peer(self, body: Coordinate) -> Reply:
        context: Context = tuple(sorted((a, c) for a, c in body.context))
        try:
            obj = await self.put(body.key, body.value, context, body.w, forwarded=True)
        except (NoQuorum, ReplicaUnavailable) as exc:
            return Written(False, to_wire(versions.EMPTY), exc.message)
        return Written(True, to_wire(obj))

    # ------------------------------------------------------------------ background

    async def handoff_once(self) -> int:
        """Send every hint whose owner is healthy; returns how many were delivered."""
        back = {owner for owner in self.storage.hint_owners() if self.healthy(owner)}
        if not back:  # the common case while an owner is down: no scan of its hints
            return 0
        due = [(o, k, obj) for (o, k), obj in self.storage.hints.hints.items() if o in back]
        delivered = 0

        async def deliver(owner: str, key: str, obj: Versioned) -> None:
            nonlocal delivered
            try:
                await self._call(owner, Handoff(key, to_wire(obj)))
            except ReplicaUnavailable:
                return
            if self.storage.hint_delivered(owner, key, versions.digest(obj)):
                delivered += 1

        for start in range(0, len(due), 64):
            await asyncio.gather(*(deliver(o, k, obj) for o, k, obj in due[start : start + 64]))
        if delivered:
            self.counters.handoffs += delivered
            await self.storage.sync()
        return delivered

    def _shared_tree(self, peer: str, leaves: int | None = None) -> MerkleTree:
        n = self.quorum.n
        items = [
            (k, versions.digest(obj))
            for k, obj in sorted(self.storage.objects.items())
            if peer in self.ring.home(k, n)
        ]
        return MerkleTree.build(items, leaves or leaves_for(len(items)))

    async def _tree_for(self, peer: str, leaves: int | None = None) -> MerkleTree:
        """The tree over the keys ``peer`` shares with us, as ``_shared_tree`` builds it, but
        kept between rounds per peer and brought up to date with the keys stored since
        (``storage.take_changed``): a round rehashes what changed, not every key it holds
        (four full builds per node per round on 3 nodes took a quarter of a loaded node's
        CPU). A tree is rebuilt when the ring changes or its key count needs another leaf
        count; a peer asking with another leaf count gets a tree built for it alone."""
        async with self._trees_lock:
            await self._apply_changes()
            cached = self._trees.get(peer)
            if cached is not None and cached[0] is self.ring:
                tree = cached[1]
                fits = leaves_for(len(tree))
                if tree.leaves == fits and leaves in (None, fits):
                    return tree
            tree = await self._build_shared_tree(peer, leaves)
            if leaves in (None, leaves_for(len(tree))):
                self._trees[peer] = (self.ring, tree)
                await self._apply_changes()  # what was stored while it was built
            return tree

    async def _apply_changes(self) -> None:
        # unsorted: leaf hashes are XORs and the paths are rehashed together, so the order
        # changes nothing — and sorting a round's keys (every key written in ``ae_interval``)
        # was a loop stall of tens of milliseconds at each round
        changed = list(self.storage.take_changed())
        if not changed:
            return
        n, ring, objects = self.quorum.n, self.ring, self.storage.objects
        pacer = _Pacer()
        for peer, (built_on, tree) in list(self._trees.items()):
            if built_on is not ring:
                del self._trees[peer]
                continue
            dirty = set()
            for start in range(0, len(changed), AE_SLICE):
                for key in changed[start : start + AE_SLICE]:
                    if peer not in ring.home(key, n):
                        continue
                    obj = objects.get(key)
                    if obj is None:
                        tree.update(key, None)  # forgotten: rare, its path rehashed now
                    else:
                        dirty.add(tree.put(key, versions.digest(obj)) // 2)
                await pacer.breathe()
            # rehash the changed paths level by level: each inner node once
            done = 0
            while dirty:
                for node in dirty:
                    tree.rehash(node)
                done += len(dirty)
                dirty = {node // 2 for node in dirty if node > 1}
                if done >= AE_SLICE:
                    done = 0
                    await pacer.breathe()

    async def _build_shared_tree(self, peer: str, leaves: int | None = None) -> MerkleTree:
        """``_shared_tree`` in slices of ``AE_SLICE`` keys with the loop let run between them:
        built in one go it blocked the loop ≈ 1 s at 40k keys on a loaded machine — a stall
        in every write's path, every ``ae_interval``, on both ends of the exchange. Keys
        stored meanwhile wait for the next round, which anti-entropy is built to converge."""
        n, ring = self.quorum.n, self.ring
        snapshot = list(self.storage.objects.items())
        pacer = _Pacer()
        items: list[tuple[str, bytes]] = []
        for start in range(0, len(snapshot), AE_SLICE):
            items += [
                (k, versions.digest(obj))
                for k, obj in snapshot[start : start + AE_SLICE]
                if peer in ring.home(k, n)
            ]
            await pacer.breathe()
        tree = MerkleTree(leaves or leaves_for(len(items)))
        for start in range(0, len(items), AE_SLICE):
            for key, digest in items[start : start + AE_SLICE]:
                tree.put(key, digest)  # what MerkleTree.build does, a slice at a time
            await pacer.breathe()
        for node in range(tree.leaves - 1, 0, -1):  # and its rehash, likewise
            tree.rehash(node)
            if node % AE_SLICE == 0:
                await pacer.breathe()
        return tree

    def _objects_in(self, tree: MerkleTree, leaves: list[int]) -> list[tuple[str, Any]]:
        objects = self.storage.objects
        # a key reaped since the tree was built is simply not shipped
        return [
            (k, to_wire(objects[k])) for leaf in leaves for k in tree.keys_in(leaf) if k in objects
        ]

    async def anti_entropy_once(self) -> int:
        """One exchange with every healthy peer; returns how many objects were shipped."""
        self.counters.reaped += self.storage.reap(clock.wall(), self.config.grace)
        shipped = 0
        for peer in self.ring.nodes:
            if peer == self.name or not self.healthy(peer):
                continue
            tree = await self._tree_for(peer)
            try:
                # the peer builds its tree a slice at a time too: give it the round
                reply = await self._call(peer, AeTree(tree.hashes()), self.config.ae_interval)
            except ReplicaFailed as refused:  # up, but refusing our tree: say so every round
                log.warning("kv node %s: anti-entropy with %s: %s", self.name, peer, refused)
                continue
            except ReplicaUnavailable:
                continue
            if not isinstance(reply, AeObjects) or not reply.leaves:
                continue
            for key, obj in reply.objects:
                self.storage.store(key, from_wire(obj))
            mine = self._objects_in(tree, reply.leaves)
            shipped += len(reply.objects) + len(mine)
            await self.storage.sync()
            with contextlib.suppress(ReplicaUnavailable):
                await self._call(peer, AeApply(mine))
        self.counters.ae_rounds += 1
        self.counters.ae_shipped += shipped
        return shipped

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        hints: dict[str, int] = {}
        for owner, _key in self.storage.hints.hints:
            hints[owner] = hints.get(owner, 0) + 1
        q = self.quorum
        return {
            "name": self.name,
            "http": self.config.http,
            "peer": self.config.peer,
            "quorum": {"n": q.n, "r": q.r, "w": q.w, "warning": q.warning},
            "conflicts": self.config.conflicts,
            "ring": {"nodes": list(self.ring.nodes), "vnodes": self.ring.vnodes},
            "members": [
                {
                    "name": m.name,
                    "state": m.state.name.lower(),
                    "incarnation": m.incarnation,
                    "peer": m.address,
                    "http": m.tag("http"),
                }
                for m in self.members.members()
            ],
            "keys": len(self.storage.objects),
            # per peer, the root of the tree over the keys both hold: equal on both sides
            # once anti-entropy has converged (what the multi-host tests check)
            "merkle": {
                peer: f"{self._shared_tree(peer).root:016x}"
                for peer in self.ring.nodes
                if peer != self.name
            },
            "hints_pending": len(self.storage.hints),
            "hints_by_owner": dict(sorted(hints.items())),
            "counters": vars(self.counters).copy(),
            "commits": self.storage.commits,
        }
