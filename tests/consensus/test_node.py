"""Three real Raft nodes on loopback (real WAL, real TCP), driven by ``corral.consensus.node``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
import pytest

from corral.consensus import FAST, Message, MessageType
from corral.consensus.node import Node, NoQuorum
from corral.consensus.transport import Transport
from corral.consensus.wal import DiskStorage
from corral.errors import PlatformUnavailable
from corral.testing import free_ports

DEADLINE = 10.0


class KV:
    """The smallest deterministic state machine: ``key=value`` commands into a dict."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied = 0

    def applied_index(self) -> int:
        return self.applied

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[object]:
        results: list[object] = []
        for index, command in entries:
            if index <= self.applied:
                results.append(None)
                continue
            self.applied = index
            if command:
                key, _, value = command.decode().partition("=")
                self.data[key] = value
            results.append(index)
        return results

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode([self.applied, self.data])

    def flush(self) -> None:
        pass  # in memory: a restarted node re-applies the whole log

    def restore(self, data: bytes) -> None:
        self.applied, self.data = msgspec.msgpack.decode(data, type=tuple[int, dict[str, str]])


class Cluster:
    def __init__(self, base: Path, size: int = 3, request_timeout: float = 1.0) -> None:
        self.base = base
        self.peers = {i: f"127.0.0.1:{p}" for i, p in enumerate(free_ports(size), 1)}
        self.request_timeout = request_timeout
        self.nodes: dict[int, Node] = {}

    async def start(
        self, node_id: int, peers: dict[int, str] | None = None, join: bool = False
    ) -> Node:
        node = Node(
            node_id,
            peers or self.peers,
            self.base / f"n{node_id}",
            KV(),
            FAST,
            request_timeout=self.request_timeout,
            join=join,
        )
        await node.start()
        self.nodes[node_id] = node
        return node

    async def kill(self, node_id: int) -> None:
        await self.nodes.pop(node_id).stop()

    async def leader(self, within: float = DEADLINE) -> Node:
        async def one_leader() -> bool:
            leaders = [n for n in self.nodes.values() if n.is_leader]
            return len(leaders) == 1

        await eventually(one_leader, within, "one leader")
        (node,) = [n for n in self.nodes.values() if n.is_leader]
        return node

    def kv(self, node_id: int) -> dict[str, str]:
        sm = self.nodes[node_id].sm
        assert isinstance(sm, KV)
        return sm.data

    async def close(self) -> None:
        for node_id in list(self.nodes):
            await self.kill(node_id)


async def eventually(condition: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    start = time.monotonic()
    while not await condition():
        if time.monotonic() - start > within:
            pytest.fail(f"not within {within} s: {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        for i in (1, 2, 3):
            await c.start(i)
        yield c
    finally:
        await c.close()


async def write_until_ok(node: Node, command: bytes, within: float = DEADLINE) -> object:
    """What a client does during a failover: retry until a write is acknowledged."""
    start = time.monotonic()
    while True:
        try:
            return await node.propose(command)
        except PlatformUnavailable:
            if time.monotonic() - start > within:
                raise


async def test_three_nodes_elect_one_leader_and_a_write_through_a_follower_reaches_all(
    cluster: Cluster,
) -> None:
    leader = await cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)

    async def known() -> bool:
        # A follower learns the leader from its first append or heartbeat, a moment later.
        return follower.leader_id == leader.id

    await eventually(known, DEADLINE, "the follower to learn who leads")
    assert follower.leader_address == cluster.peers[leader.id]
    await write_until_ok(follower, b"colour=blue")
    assert cluster.kv(follower.id)["colour"] == "blue"  # applied here before it returned

    async def everywhere() -> bool:
        return all(cluster.kv(i).get("colour") == "blue" for i in cluster.nodes)

    await eventually(everywhere, DEADLINE, "the write applied on every node")


async def test_a_write_is_acknowledged_only_when_a_majority_has_it_on_disk(
    cluster: Cluster,
) -> None:
    leader = await cluster.leader()
    await write_until_ok(leader, b"a=1")
    others = [i for i in cluster.nodes if i != leader.id]
    for i in others:
        await cluster.kill(i)
    with pytest.raises(NoQuorum):
        await leader.propose(b"b=2")  # durable on the leader alone: never acknowledged
    leader_id = leader.id
    await cluster.kill(leader_id)
    holders = []
    for i in (1, 2, 3):
        wal = DiskStorage.open(cluster.base / f"n{i}" / "raft")
        logged = wal.entries(wal.first_index(), wal.last_index() + 1, 1 << 30)
        if any(b"a=1" in e.data for e in logged):
            holders.append(i)
        wal.close()
    assert len(holders) >= 2, f"the acknowledged write is on disk only on nodes {holders}"


async def test_killing_the_leader_elects_another_and_loses_no_acknowledged_write(
    cluster: Cluster,
) -> None:
    leader = await cluster.leader()
    acked = []
    for i in range(20):
        await write_until_ok(leader, b"k%d=%d" % (i, i))
        acked.append(f"k{i}")
    old = leader.id
    killed_at = time.monotonic()
    await cluster.kill(old)  # connections reset, timers stop: a crash, as the peers see it
    survivor = next(iter(cluster.nodes.values()))
    await write_until_ok(survivor, b"after=1")
    failover = time.monotonic() - killed_at
    new = await cluster.leader()
    assert new.id != old
    assert failover < 3.0, f"first write after the leader died took {failover:.2f} s"
    await new.read_barrier()
    assert all(key in cluster.kv(new.id) for key in acked)
    # the old leader comes back as a follower and catches up
    back = await cluster.start(old)

    async def caught_up() -> bool:
        return "after" in cluster.kv(old)

    await eventually(caught_up, DEADLINE, "the restarted node caught up")
    assert not back.is_leader or back.leader_id == back.id


async def test_losing_a_majority_stops_writes_with_no_quorum_and_they_resume_on_return(
    cluster: Cluster,
) -> None:
    leader = await cluster.leader()
    followers = [i for i in cluster.nodes if i != leader.id]
    await cluster.kill(followers[0])
    await write_until_ok(leader, b"minority-lost=ok")  # 2 of 3: still a majority
    await cluster.kill(followers[1])
    with pytest.raises(NoQuorum) as caught:
        await leader.propose(b"majority-lost=no")
    assert "no quorum" in caught.value.message
    assert "majority" in caught.value.hint and "resume" in caught.value.hint
    await cluster.start(followers[1])
    await write_until_ok(leader, b"back=yes")  # nothing but the node's return was needed
    assert cluster.kv(leader.id)["back"] == "yes"


async def test_a_new_node_joins_as_learner_then_voter_and_a_member_can_be_removed(
    tmp_path: Path,
) -> None:
    c = Cluster(tmp_path, size=4)
    first_three = {i: c.peers[i] for i in (1, 2, 3)}
    try:
        for i in (1, 2, 3):
            await c.start(i, first_three)
        leader = await c.leader()
        await write_until_ok(leader, b"before=1")
        newcomer = await c.start(4, c.peers, join=True)
        await leader.add_member(4, c.peers[4])
        assert leader.status().voters == (1, 2, 3, 4)
        await write_until_ok(newcomer, b"through-the-newcomer=1")  # forwarded to the leader
        assert c.kv(4)["before"] == "1"  # it received the log from before it joined
        gone = next(i for i in (1, 2, 3) if i != leader.id)
        await leader.remove_member(gone)
        await c.kill(gone)
        assert leader.status().voters == tuple(sorted({1, 2, 3, 4} - {gone}))
        await write_until_ok(leader, b"after-removal=1")  # 3 voters: quorum 2, all up
        assert c.kv(leader.id)["after-removal"] == "1"
    finally:
        await c.close()


async def test_a_connection_from_another_cluster_is_refused(tmp_path: Path) -> None:
    ports = free_ports(2)
    peers = {1: f"127.0.0.1:{ports[0]}", 2: f"127.0.0.1:{ports[1]}"}
    received: list[Message] = []
    ours = Transport(1, peers, received.append, lambda _peer: None, cluster="ours")
    theirs = Transport(2, peers, lambda _m: None, lambda _peer: None, cluster="theirs")
    friend = Transport(2, peers, lambda _m: None, lambda _peer: None, cluster="ours")
    await ours.start()
    await theirs.start()
    try:
        await eventually(lambda: asyncio.sleep(0, theirs.connected(1)), DEADLINE, "tcp connection")
        for _ in range(5):
            theirs.send(Message(type=MessageType.HEARTBEAT, to=1, frm=2, term=1))
            await asyncio.sleep(0.02)
        assert received == []
    finally:
        await theirs.stop()
    await friend.start()
    try:

        async def delivered() -> bool:
            friend.send(Message(type=MessageType.HEARTBEAT, to=1, frm=2, term=1))
            return bool(received)

        await eventually(delivered, DEADLINE, "a message from the right cluster")
    finally:
        await friend.stop()
        await ours.stop()


async def test_a_disk_slower_than_the_election_timeout_does_not_depose_the_leader(
    cluster: Cluster,
) -> None:
    leader = await cluster.leader()
    await write_until_ok(leader, b"warm=1")
    term = leader.status().term
    # each fdatasync outlasts any election timeout, yet a write still fits in request_timeout
    stall = 1.5 * FAST.election_timeout_seconds[1]
    for node in cluster.nodes.values():
        assert node.storage is not None
        sync = node.storage.sync

        def slow(durable: bool = True, sync: Callable[[bool], None] = sync) -> None:
            if durable:
                time.sleep(stall)  # runs in the driver's worker thread, like a real fsync
            sync(durable)

        node.storage.sync = slow  # type: ignore[method-assign]  # a disk that hangs
    await leader.propose(b"slow=1")
    await leader.propose(b"slow=2")
    assert [n.id for n in cluster.nodes.values() if n.is_leader] == [leader.id]
    assert all(n.status().term == term for n in cluster.nodes.values())
