"""A Raft node on a real disk and a real network: the driver loop around the pure ``RaftNode``.

Theory of operation. The loop is written once, here, and follows the contract of
``corral.consensus`` (etcd-io/raft's ``Ready``/``Advance``):

- a **ticker** task calls ``raft.tick()`` every ``config.tick_seconds``;
- the **transport** hands each inbound message to ``raft.step()``;
- clients call ``propose`` (writes) and ``read_barrier`` (linearizable reads, ReadIndex);
- each of those wakes the **run** task, which, while ``raft.has_ready()``:
  1. ``rd = raft.ready()``;
  2. **persist**: stage the snapshot, entries and hard state into the WAL and write them with
     one fdatasync (group commit: every proposal that arrived since the last Ready shares
     it), in a worker thread so the loop keeps receiving meanwhile. A Ready whose hard state
     changed only its commit index is written without a sync: the commit index can be
     learned again, a term or vote cannot;
  3. **send** ``rd.messages`` — only now, since votes and append acks promise durability.
     Heartbeats and their answers do not wait for the disk: while a write is in flight,
     each tick and each inbound message sends them at once (``take_urgent_messages``), so a
     slow fsync on a loaded machine is not mistaken for a dead leader or a lost quorum.
     A leader sends its replication messages (appends, heartbeats, snapshots) *before* step 2,
     so its disk write overlaps the followers' (Raft thesis §10.2.1; etcd does the same).
     That is safe because they promise nothing about the leader's disk, and nothing is
     acknowledged to a client before a later Ready — processed only once this one is
     durable — commits it: the core counts the leader's own unsynced entries toward a
     majority, but the commit it computes leaves the node only in a later Ready;
  4. **apply**: restore ``rd.snapshot`` into the state machine, apply
     ``rd.committed_entries`` in one batch, resolve the proposals this node made, serve the
     reads whose ``ReadState`` index is now applied;
  5. ``raft.advance(rd)``; every ``snapshot_every`` applied entries, make the state machine
     durable (``flush``) and compact the log behind a snapshot that records no image; a
     follower that needs the compacted part gets the state machine's image as it is then.

A proposal is acknowledged only when its entry is applied on this node, hence committed:
durable on the leader and on a majority. Followers forward proposals and ReadIndex requests
to the leader through Raft itself (``MsgProp``/``MsgReadIndex``); with ``forward=False`` they
raise ``NotLeader`` carrying the leader's address instead. A proposal in flight when the
leader changes fails with ``LeaderChanged`` (its outcome is unknown, as in etcd); one that
finds no leader for ``request_timeout`` seconds fails with ``NoQuorum``. Each proposal carries
(origin node, incarnation nonce, sequence) so only the proposing incarnation resolves it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import msgspec

from corral.consensus.config import DEFAULT, Config
from corral.consensus.core import ProposalDropped, RaftNode, Role, Status
from corral.consensus.messages import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    Message,
    MessageType,
    Ready,
)
from corral.consensus.transport import Transport
from corral.consensus.wal import DiskStorage
from corral.errors import PlatformUnavailable, StoreCorrupt, StoreError

log = logging.getLogger(__name__)


class NoQuorum(PlatformUnavailable):
    code = "no_quorum"


class LeaderChanged(PlatformUnavailable):
    code = "leader_changed"


class NotLeader(PlatformUnavailable):
    """Raised by a follower that does not forward; carries where the leader is."""

    code = "not_leader"

    def __init__(self, message: str, hint: str, leader_id: int, leader_address: str) -> None:
        super().__init__(message, hint)
        self.leader_id = leader_id
        self.leader_address = leader_address


class StateMachine(Protocol):
    """What the node applies committed entries to. Called on the event loop only."""

    def applied_index(self) -> int:
        """The index of the last entry whose effects are durable in the state machine."""
        ...

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[object]:
        """Apply (index, command) pairs in order — command ``b""`` for entries that carry
        none — skipping indexes already applied; one result per pair (an exception instance
        is a result too). Must be deterministic: every node computes the same state."""
        ...

    def snapshot(self) -> bytes:
        """A self-contained image of the state at ``applied_index()``."""
        ...

    def flush(self) -> None:
        """Make every applied entry durable. Runs in a worker thread: touch only files."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state with an image from ``snapshot`` (of any node)."""
        ...


class Proposal(msgspec.Struct, frozen=True, array_like=True):
    origin: int
    nonce: int
    seq: int
    data: bytes
    # a member's address, applied by the node itself before the member is added (etcd puts
    # it in the ConfChange's context; our ConfChange has none)
    peer_id: int = 0
    peer_address: str = ""


# What a leader may send before its own write is durable (Raft thesis §10.2.1, as etcd does):
# none of these promises anything about the sender's disk.
_LEADER_EARLY = frozenset(
    {
        MessageType.APP,
        MessageType.HEARTBEAT,
        MessageType.SNAP,
        MessageType.TIMEOUT_NOW,
        MessageType.READ_INDEX_RESP,
    }
)
_encode = msgspec.msgpack.Encoder().encode
_proposal_decoder = msgspec.msgpack.Decoder(Proposal)


class Node:
    """One Raft member: WAL under ``data_dir``, TCP on ``peers[node_id]``."""

    def __init__(
        self,
        node_id: int,
        peers: dict[int, str],
        data_dir: Path,
        state_machine: StateMachine,
        config: Config = DEFAULT,
        *,
        cluster: str = "corral",
        request_timeout: float = 5.0,
        snapshot_every: int = 10_000,
        snapshot_keep: int = 1_000,
        forward: bool = True,
        join: bool = False,
        on_leadership: Callable[[bool], None] | None = None,
    ) -> None:
        if node_id not in peers:
            raise PlatformUnavailable(
                f"raft node {node_id} is not in its own peer list {sorted(peers)}",
                "give every node the same peers map, itself included",
            )
        self.id = node_id
        self.peers = dict(peers)
        self.data_dir = Path(data_dir)
        self.sm = state_machine
        self.config = config.validate()
        self.cluster = cluster
        self.request_timeout = request_timeout
        self.snapshot_every = snapshot_every
        self.snapshot_keep = snapshot_keep
        self.forward = forward
        self.join = join
        self.on_leadership = on_leadership
        self._nonce = random.Random().getrandbits(62)
        self._seq = 0
        self._pending: dict[int, asyncio.Future[object]] = {}
        self._pending_lead: dict[int, int] = {}  # seq -> the leader it was proposed under
        self._read_ctx = 0
        self._read_waiters: list[asyncio.Future[None]] = []
        self._reads_in_flight: dict[bytes, list[asyncio.Future[None]]] = {}
        self._apply_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._leader_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sync: asyncio.Future[None] | None = None
        self._persisting = False  # the driver waits for the disk: heartbeats go out directly
        self._failed: BaseException | None = None
        self._running = False
        self.storage: DiskStorage | None = None
        self.raft: RaftNode | None = None
        self.transport: Transport | None = None
        self._lead = NONE
        self._prev_term_vote = (0, 0)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        storage = await asyncio.to_thread(DiskStorage.open, self.data_dir / "raft")
        self.storage = storage
        self.peers.update(_load_peers(self._peers_file))
        snap = storage.stored_snapshot()
        if self.sm.applied_index() < snap.index and snap.index > 1:  # 1: the bootstrap one
            if not snap.data:
                storage.close()
                raise StoreCorrupt(
                    f"raft node {self.id}: the state machine in {self.data_dir} is at entry "
                    f"{self.sm.applied_index()}, behind the log's snapshot at {snap.index}",
                    "its files were damaged or replaced; move the node's data directory aside "
                    "and let the node rejoin empty (the leader sends it a snapshot)",
                )
            self.sm.restore(snap.data)
        storage.image = self.sm.snapshot
        hs = storage.hard_state
        self._prev_term_vote = (hs.term, hs.vote)
        # A node joining a running cluster starts with no configuration: it learns it from
        # the leader (a snapshot, then the conf-change entries), so it never bootstraps one.
        bootstrap = [] if self.join else sorted(self.peers)
        self.raft = RaftNode(self.id, bootstrap, self.config, storage, random.Random())
        self.transport = Transport(
            self.id, self.peers, self._receive, self._unreachable, cluster=self.cluster
        )
        try:
            await self.transport.start()
        except OSError as exc:
            storage.close()
            raise PlatformUnavailable(
                f"raft node {self.id} cannot listen on {self.peers[self.id]}: {exc}",
                "another process uses that address; stop it or give this node another one",
            ) from exc
        self._running = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._ticker(), name=f"raft-ticker {self.id}"),
            loop.create_task(self._run(), name=f"raft-driver {self.id}"),
        ]
        self._kick()

    async def stop(self) -> None:
        """Stop at once: to the peers this looks like a crash (connections reset); what was
        synced stays, nothing half-written is acknowledged."""
        if not self._running:
            return
        self._running = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sync is not None:
            with contextlib.suppress(Exception):
                await self._sync  # a WAL write in its thread must finish before the close
        if self.transport is not None:
            await self.transport.stop()
        if self.storage is not None:
            self.storage.close()
        error = StoreError(f"raft node {self.id} stopped", "open the store again")
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(error)
        for waiters in [self._read_waiters, *self._reads_in_flight.values()]:
            for w in waiters:
                if not w.done():
                    w.set_exception(error)
        for _, w in self._apply_waiters:
            if not w.done():
                w.set_exception(error)

    # ------------------------------------------------------------------ status

    @property
    def leader_id(self) -> int:
        return self._lead

    @property
    def is_leader(self) -> bool:
        return self.raft is not None and self.raft.role == Role.LEADER

    @property
    def leader_address(self) -> str:
        return self.peers.get(self._lead, "")

    def status(self) -> Status:
        assert self.raft is not None
        return self.raft.status()

    def campaign(self) -> None:
        """Start an election now (tests, operators); the election timer does the same."""
        assert self.raft is not None
        self.raft.campaign()
        self._kick()

    def transfer_leadership(self, to: int) -> None:
        assert self.raft is not None
        self.raft.transfer_leadership(to)
        self._kick()

    # ------------------------------------------------------------------ client verbs

    async def propose(self, data: bytes, *, _peer: tuple[int, str] = (0, "")) -> object:
        """Replicate ``data``; returns the state machine's result once it is applied here."""
        raft = self._check_running()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future[object] = loop.create_future()
        self._pending[seq] = fut
        envelope = _encode(Proposal(self.id, self._nonce, seq, data, *_peer))
        try:
            while True:
                if not self.forward and raft.role != Role.LEADER and self._lead != NONE:
                    raise self._not_leader()
                try:
                    raft.propose(envelope)
                    self._pending_lead[seq] = raft.lead
                    break
                except ProposalDropped as exc:
                    if loop.time() >= deadline:
                        raise self._no_quorum(f"no leader for {self.request_timeout:g} s") from exc
                    await self._wait_for_leader(deadline)
            self._kick()
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation
                async with asyncio.timeout_at(deadline):
                    return await fut
            except TimeoutError:
                raise self._no_quorum(
                    f"write not committed within {self.request_timeout:g} s; its outcome is unknown"
                ) from None
        finally:
            self._pending.pop(seq, None)
            self._pending_lead.pop(seq, None)

    async def read_barrier(self) -> None:
        """Return once this node has applied everything committed before the call (ReadIndex,
        Raft thesis §6.4): a read of local state after this is linearizable."""
        self._check_running()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        attempt = 2 * self.config.election_ticks * self.config.tick_seconds
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            self._read_waiters.append(fut)
            self._kick()
            remaining = deadline - loop.time()
            try:
                async with asyncio.timeout(max(0.0, min(attempt, remaining))):
                    await fut
                return
            except TimeoutError:
                if loop.time() >= deadline:
                    raise self._no_quorum(
                        f"a linearizable read got no answer within {self.request_timeout:g} s"
                    ) from None

    # ------------------------------------------------------------------ membership

    async def add_member(self, node_id: int, address: str, within: float = 30.0) -> None:
        """Add node ``node_id`` (started with ``join=True``) at ``address``: first its address
        is replicated, then it joins as a learner, and once it has caught up it becomes a
        voter (Raft thesis §4.2.1: a new server must not vote before it has the log)."""
        raft = self._leader_only()
        await self.propose(b"", _peer=(node_id, address))
        await self._conf_change(
            ConfChange(ConfChangeType.ADD_LEARNER, node_id),
            lambda: node_id in raft.learners or node_id in raft.voters,
            within,
        )
        await self._conf_change(
            ConfChange(ConfChangeType.ADD_NODE, node_id), lambda: node_id in raft.voters, within
        )

    async def remove_member(self, node_id: int, within: float = 30.0) -> None:
        """Remove node ``node_id`` (this one too: the leader then steps down)."""
        raft = self._leader_only()
        await self._conf_change(
            ConfChange(ConfChangeType.REMOVE_NODE, node_id),
            lambda: node_id not in raft.voters and node_id not in raft.learners,
            within,
        )

    def _leader_only(self) -> RaftNode:
        raft = self._check_running()
        if raft.role != Role.LEADER:
            if self._lead == NONE:
                raise self._no_quorum("no leader to change the membership")
            raise self._not_leader()
        return raft

    async def _conf_change(
        self, change: ConfChange, done: Callable[[], bool], within: float
    ) -> None:
        """Propose ``change`` (retrying while the core refuses it: one change at a time, a
        learner still catching up, a leader without a commit in its term) until ``done``."""
        raft = self._leader_only()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        proposed = False
        why = ""
        while not done():
            if loop.time() > deadline:
                raise self._no_quorum(
                    f"{change.type.name.lower()} {change.node_id} not applied within "
                    f"{within:g} s" + (f" ({why})" if why else "")
                )
            if not proposed:
                try:
                    raft.propose_conf_change(change)
                    proposed = True
                    self._kick()
                except ProposalDropped as exc:
                    why = exc.message
                    if raft.role != Role.LEADER:
                        raise self._not_leader() from exc
            await asyncio.sleep(self.config.tick_seconds)
            if proposed and raft.pending_conf_index <= raft.log.applied and not done():
                proposed = False  # applied without effect, or lost with a leader change

    @property
    def _peers_file(self) -> Path:
        return self.data_dir / "raft" / "peers.json"

    def _learn_peer(self, node_id: int, address: str) -> None:
        if self.peers.get(node_id) == address:
            return
        self.peers[node_id] = address
        if node_id != self.id and self.transport is not None:
            self.transport.add_peer(node_id, address)
        _save_peers(self._peers_file, self.peers)

    # ------------------------------------------------------------------ errors

    def _check_running(self) -> RaftNode:
        if self._failed is not None:
            raise StoreError(
                f"raft node {self.id} stopped after a failure: {self._failed}",
                "see the node's log; fix the disk and restart the node",
            )
        if not self._running or self.raft is None:
            raise StoreError(f"raft node {self.id} is not running", "open the store again")
        return self.raft

    def _no_quorum(self, why: str) -> NoQuorum:
        assert self.raft is not None and self.transport is not None
        reachable = [p for p in self.raft.voters if p == self.id or self.transport.connected(p)]
        lead = self._lead or "none"
        return NoQuorum(
            f"no quorum: raft node {self.id}: {why} (leader: {lead}; reachable voters "
            f"{reachable} of {list(self.raft.voters)})",
            f"a majority ({len(self.raft.voters) // 2 + 1} of {len(self.raft.voters)}) of the "
            "nodes must be up and reachable; writes resume by themselves when they return",
        )

    def _not_leader(self) -> NotLeader:
        return NotLeader(
            f"raft node {self.id} is not the leader; node {self._lead} at {self.leader_address} is",
            f"send the request to {self.leader_address}",
            self._lead,
            self.leader_address,
        )

    async def _wait_for_leader(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        timeout = max(0.0, min(deadline - loop.time(), self.config.tick_seconds * 2))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._leader_event.wait()
        if self._leader_event.is_set():
            # the leader is known but may not take proposals yet (a transfer, its no-op)
            await asyncio.sleep(min(self.config.tick_seconds, max(0.0, deadline - loop.time())))

    # ------------------------------------------------------------------ inputs

    def _kick(self) -> None:
        self._wake.set()

    def _receive(self, m: Message) -> None:
        if self.raft is None or not self._running:
            return
        try:
            self.raft.step(m)
        except Exception:  # a bad peer message must not kill the node's loop
            log.exception("raft node %d: stepping a message failed", self.id)
        self._send_urgent()
        self._kick()

    def _send_urgent(self) -> None:
        if self._persisting and self.raft is not None and self.transport is not None:
            for m in self.raft.take_urgent_messages():
                self.transport.send(m)

    def _unreachable(self, peer: int) -> None:
        if self.raft is not None and self._running:
            self.raft.report_unreachable(peer)

    async def _ticker(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.tick_seconds
        next_at = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + interval, loop.time())
            assert self.raft is not None
            self.raft.tick()
            self._send_urgent()
            self._kick()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        raft = self.raft
        assert raft is not None
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._issue_reads()
                while raft.has_ready():
                    await self._handle(raft, raft.ready())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._failed = exc
            log.exception("raft node %d: driver failed; the node stops serving", self.id)
            for fut in list(self._pending.values()):
                if not fut.done():
                    fut.set_exception(StoreError(f"raft node {self.id} failed: {exc}", ""))

    async def _handle(self, raft: RaftNode, rd: Ready) -> None:
        self._persisting = True
        try:
            await self._persist_send_apply(raft, rd)
        finally:
            self._persisting = False

    async def _persist_send_apply(self, raft: RaftNode, rd: Ready) -> None:
        storage = self.storage
        assert storage is not None and self.transport is not None
        # 0. a leader's replication messages leave before its own write (see the docstring).
        early = raft.role == Role.LEADER
        if early:
            for m in rd.messages:
                if m.type in _LEADER_EARLY:
                    self.transport.send(m)
        # 1. persist: one write, one fdatasync for the whole Ready (group commit).
        hs = rd.hard_state
        must_sync = bool(rd.entries) or rd.snapshot is not None
        if hs is not None and (hs.term, hs.vote) != self._prev_term_vote:
            must_sync = True
            self._prev_term_vote = (hs.term, hs.vote)
        storage.stage(hs, rd.entries, rd.snapshot)
        if must_sync:
            self._sync = asyncio.get_running_loop().run_in_executor(None, storage.sync)
            try:
                await asyncio.shield(self._sync)
            finally:
                if self._sync.done():
                    self._sync = None
        else:
            storage.sync(durable=False)
        # 2. send: only now may votes and acks leave.
        for m in rd.messages:
            if not (early and m.type in _LEADER_EARLY):
                self.transport.send(m)
        # 3. apply.
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.lead, rd.soft_state.role == Role.LEADER.value)
        if rd.snapshot is not None and rd.snapshot.data:
            self.sm.restore(rd.snapshot.data)
        if rd.committed_entries:
            self._apply(raft, rd.committed_entries)
        for rs in rd.read_states:
            waiters = self._reads_in_flight.pop(rs.context, [])
            self._apply_waiters.extend((rs.index, w) for w in waiters)
        self._release_applied()
        # 4. advance.
        raft.advance(rd)
        applied = self.sm.applied_index()
        if (
            self.snapshot_every
            and applied - storage.stored_snapshot().index >= self.snapshot_every
            # after a power loss the file may be ahead of the commit index the log recorded
            and applied <= min(storage.hard_state.commit, storage.last_index())
        ):
            conf = ConfState(raft.voters, raft.learners)
            snap, image = storage.prepare_checkpoint(applied, conf, b"", self.snapshot_keep)

            def write() -> None:
                self.sm.flush()  # the log before ``applied`` goes: the state must be on disk
                storage.write_checkpoint(snap, image)

            # off the loop: the next Ready waits for it, the network does not
            self._sync = asyncio.get_running_loop().run_in_executor(None, write)
            try:
                await asyncio.shield(self._sync)
            finally:
                if self._sync.done():
                    self._sync = None

    def _apply(self, raft: RaftNode, entries: tuple[Entry, ...]) -> None:
        items: list[tuple[int, bytes]] = []
        mine: list[int] = []  # positions in items -> seq, or -1
        for entry in entries:
            if entry.type == EntryType.CONF_CHANGE:
                change = ConfChange.decode(entry.data)
                raft.apply_conf_change(change)
                gone = change.type == ConfChangeType.REMOVE_NODE and change.node_id != self.id
                if gone and self.transport is not None:
                    self.transport.remove_peer(change.node_id)
                items.append((entry.index, b""))
                mine.append(-1)
                continue
            if not entry.data:
                items.append((entry.index, b""))
                mine.append(-1)
                continue
            p = _proposal_decoder.decode(entry.data)
            if p.peer_id:
                self._learn_peer(p.peer_id, p.peer_address)
            items.append((entry.index, p.data))
            ours = p.origin == self.id and p.nonce == self._nonce
            mine.append(p.seq if ours else -1)
        results = self.sm.apply(items)
        for seq, result in zip(mine, results, strict=True):
            fut = self._pending.get(seq) if seq >= 0 else None
            if fut is not None and not fut.done():
                fut.set_result(result)

    def _release_applied(self) -> None:
        if not self._apply_waiters:
            return
        applied = self.sm.applied_index()
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for index, w in self._apply_waiters:
            if index <= applied:
                if not w.done():
                    w.set_result(None)
            else:
                keep.append((index, w))
        self._apply_waiters = keep

    def _issue_reads(self) -> None:
        raft = self.raft
        waiters = [w for w in self._read_waiters if not w.done()]
        if not waiters or raft is None:
            self._read_waiters = waiters
            return
        # forget requests whose every reader gave up (their answer was lost on the way)
        self._reads_in_flight = {
            c: ws for c, ws in self._reads_in_flight.items() if not all(w.done() for w in ws)
        }
        self._read_ctx += 1
        ctx = b"%d" % self._read_ctx
        try:
            raft.read_index(ctx)
        except ProposalDropped:
            self._read_waiters = waiters  # no leader yet: the next tick tries again
            return
        self._read_waiters = []
        self._reads_in_flight[ctx] = waiters

    def _on_soft_state(self, lead: int, leader: bool) -> None:
        was_leader = self._lead == self.id
        if lead != self._lead:
            old, self._lead = self._lead, lead
            if lead == NONE:
                self._leader_event.clear()
            else:
                self._leader_event.set()
            if old != NONE:
                self._fail_in_flight(old, lead)
        if leader != was_leader and self.on_leadership is not None:
            self.on_leadership(leader)

    def _fail_in_flight(self, old: int, new: int) -> None:
        """Proposals in flight may or may not commit under the next leader: tell their callers
        the outcome is unknown rather than let them wait; reads are simply asked again."""
        if new == NONE:
            error: PlatformUnavailable = self._no_quorum(
                f"leader {old} was lost while a write was in flight; its outcome is unknown"
            )
        else:
            error = LeaderChanged(
                f"raft node {self.id}: the leader changed from {old} to {new} while a write "
                "was in flight; its outcome is unknown",
                "re-read the key and retry if the write did not happen",
            )
        for seq, fut in list(self._pending.items()):
            if not fut.done() and self._pending_lead.get(seq, new) != new:
                fut.set_exception(error)
        for waiters in self._reads_in_flight.values():
            self._read_waiters.extend(waiters)
        self._reads_in_flight = {}


def _load_peers(path: Path) -> dict[int, str]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    return msgspec.json.decode(raw, type=dict[int, str])


def _save_peers(path: Path, peers: dict[int, str]) -> None:
    """Addresses learned from the log, kept beside it: the log is compacted, they must stay."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(dict(sorted(peers.items()))))
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
