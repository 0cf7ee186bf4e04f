"""The AP store with a replica down (issue 9, "one replica killed or partitioned: 100 % of W=2
writes succeed, p99 ≤ 2× healthy"): peers are judged by their connections ahead of gossip, a
gossip suspicion of a node that still answers fails no write, a write that cannot reach W fails
at once, and a node's background work (anti-entropy trees, handoff, reaping) lets writes run
instead of stalling them — with a replica down every write waits for both survivors, so any
stall of either is in the write tail.

Nodes run in-process on one loop (real sockets on 127.0.0.1, real SQLite files); "killed"
means the node's RPC server and gossip stopped, which resets its connections as a killed
process's are.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.kv import versions
from corral.kv.coordinator import Quorum
from corral.kv.http import GcPolicy
from corral.kv.node import AE_SLICE, Counters, KvNode, NodeConfig
from corral.kv.ring import Ring
from corral.kv.testing import free_port
from corral.kv.transport import Evidence, Rpc
from corral.kv.versions import EMPTY, context_of
from corral.kv.wire import (
    AeTree,
    Coordinate,
    Fetch,
    Found,
    NoQuorum,
    ReplicaFailed,
    Replicate,
    Reply,
    Request,
    Written,
    to_wire,
)
from corral.membership import State
from corral.testing import free_ports, until

pytestmark = pytest.mark.timeout(30)


async def _cluster(base: Path, membership: str, request_timeout: float = 2.0) -> list[KvNode]:
    peers = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    configs = [
        NodeConfig(
            f"n{i + 1}",
            base / f"n{i + 1}",
            http=f"127.0.0.1:{free_ports(1)[0]}",
            peer=peers[i],
            join=(peers[0],) if i else (),
            quorum=Quorum(3, 2, 2),
            membership=membership,
            request_timeout=request_timeout,
        )
        for i in range(3)
    ]
    nodes = [KvNode(config) for config in configs]
    for node in nodes:
        await node.start()

    def everyone_alive() -> bool:
        return all(
            sorted(m.name for m in node.members.members() if m.state == State.ALIVE)
            == ["n1", "n2", "n3"]
            and len(node.ring.nodes) == 3
            for node in nodes
        )

    await until(everyone_alive, 10, what="three nodes to see each other alive")
    return nodes


@pytest.fixture
async def trio(tmp_path: Path) -> AsyncIterator[list[KvNode]]:
    # the LOCAL preset probes once a second: gossip is slow to suspect, which lets a test
    # tell routing by connection apart from routing by gossip
    nodes = await _cluster(tmp_path, "local")
    try:
        yield nodes
    finally:
        for node in nodes:
            await node.stop()


def _gossip_state(node: KvNode, of: str) -> State:
    return next(m.state for m in node.members.members() if m.name == of)


async def test_a_killed_replica_is_routed_around_as_soon_as_its_connection_resets(
    trio: list[KvNode],
) -> None:
    n1, _, n3 = trio
    first = await n1.put("carts/alice", b"3 apples", (), 2)  # n1 now holds connections to both
    assert n1.healthy("n3")
    await n3.stop()
    await until(lambda: not n1.healthy("n3"), 2, 0.001, what="n1 to stop routing to n3")
    assert _gossip_state(n1, "n3") == State.ALIVE  # gossip has not noticed yet
    assert n1.rpc.evidence("n3") is Evidence.DOWN
    stored = await n1.put("carts/alice", b"4 apples", context_of(first), 2)
    assert stored.values == [b"4 apples"]
    assert n1.storage.hints.hints[("n3", "carts/alice")].values == [b"4 apples"]


async def test_a_write_succeeds_while_gossip_suspects_the_only_other_live_replica(
    tmp_path: Path,
) -> None:
    """n3 is killed and n2's gossip falls silent (as a loaded node's can) while n2 still
    answers replica calls: n1's W=2 writes go to n2 anyway instead of failing."""
    n1, n2, n3 = await _cluster(tmp_path, "test")
    try:
        await n3.stop()
        await n2.members.stop(leave=False)
        await until(
            lambda: _gossip_state(n1, "n2") != State.ALIVE and not n1.healthy("n2"),
            10,
            what="n1's gossip to suspect n2 and its connection evidence to age out",
        )
        for i in range(5):
            stored = await n1.put(f"carts/k{i}", b"milk", (), 2)
            assert stored.values == [b"milk"]
            assert n2.storage.local(f"carts/k{i}").values == [b"milk"]  # durable on n2
        read = await n1.get("carts/k0", 2)
        assert read.values == [b"milk"]
    finally:
        for node in (n1, n2):
            await node.stop()


async def test_a_write_that_cannot_reach_w_fails_at_once_not_at_the_request_timeout(
    tmp_path: Path,
) -> None:
    n1, n2, n3 = await _cluster(tmp_path, "local", request_timeout=10.0)
    try:
        first = await n1.put("carts/bob", b"bread", (), 2)
        await n2.stop()
        await n3.stop()
        # whether n1 still holds their resets as evidence (then it refuses at once) or tries
        # them again (they refuse), the write fails as soon as that is known, not at the
        # 10 s request timeout
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(NoQuorum, match=r"w=2"):
                await n1.put("carts/bob", b"jam", context_of(first), 2)
            assert time.monotonic() - started < 5.0  # coarse: half the request timeout
        await until(lambda: n1.rpc.evidence("n2") is n1.rpc.evidence("n3") is None, 5)
        started = time.monotonic()
        with pytest.raises(NoQuorum, match=r"1 of w=2 replicas acknowledged.*tried n1, n2, n3"):
            await n1.put("carts/bob", b"jam", context_of(first), 2)
        assert time.monotonic() - started < 5.0  # coarse: half the request timeout
        # n1's own copy took the failed write (its outcome is unknown to the client, as the
        # error says); a write with w=1 and the read context succeeds on n1 alone
        read = await n1.get("carts/bob", 1)
        assert (await n1.put("carts/bob", b"jam", context_of(read), 1)).values == [b"jam"]
    finally:
        await n1.stop()


async def test_a_peer_that_stops_answering_replica_calls_is_stalled_but_a_slow_forward_is_not() -> (
    None
):
    """Packets that vanish (a partition, a paused process) reset nothing: a replica call left
    unanswered for ``stall`` seconds marks the peer stalled; a forwarded write, which may
    wait for a whole quorum, never does; any answer clears it."""
    held: list[asyncio.Future[Reply]] = []

    def handler(frm: str, body: Request) -> Reply | asyncio.Future[Reply]:
        if isinstance(body, (Replicate, Coordinate)):
            fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
            held.append(fut)
            return fut
        return Found(to_wire(EMPTY))

    address = f"127.0.0.1:{free_port()}"
    server = Rpc("b", address, handler)
    client = Rpc("a", f"127.0.0.1:{free_port()}", handler, stall=0.1)
    await server.start()
    try:
        assert client.evidence("b") is None  # never talked: gossip decides
        await client.call("b", address, Fetch("k"), 5.0)
        assert client.evidence("b") is Evidence.ANSWERING

        forwarded = client.send("b", address, Coordinate("k", b"v", [], 2), 5.0)
        await until(lambda: len(held) == 1, 2, what="the forward to arrive")
        await asyncio.sleep(0.3)
        assert client.evidence("b") is not Evidence.STALLED

        replica = client.send("b", address, Replicate("k", to_wire(EMPTY), None), 5.0)
        await until(
            lambda: client.evidence("b") is Evidence.STALLED, 2, what="the stall to be seen"
        )
        for fut in held:
            fut.set_result(Written(True, to_wire(EMPTY)))
        await asyncio.gather(forwarded, replica)
        assert client.evidence("b") is Evidence.ANSWERING
    finally:
        await client.stop()
        await server.stop()


def test_a_full_collection_leaves_its_survivors_frozen_so_the_next_one_skips_them() -> None:
    counters = Counters()
    policy = GcPolicy(counters, unfreeze_every=3600.0)
    policy.install()
    try:
        gc.unfreeze()
        survivors = [[i] for i in range(10_000)]
        gc.collect()
        assert gc.get_freeze_count() >= len(survivors)
        assert counters.gc_full == 1
        policy.unfreeze_every = 0.0  # due: the next full collection hands them back
        gc.collect()
        assert gc.get_freeze_count() == 0
    finally:
        policy.remove()
        gc.unfreeze()


async def test_an_anti_entropy_tree_is_built_a_slice_at_a_time_kept_up_to_date_and_exact(
    tmp_path: Path,
) -> None:
    """The tree a round sends equals one built from scratch — first built in slices with the
    loop running other work between them, then kept and updated with what changed."""
    node = KvNode(NodeConfig("n1", tmp_path, peer=f"127.0.0.1:{free_port()}", membership="test"))
    await node.start()
    try:
        node.ring = Ring(["n1", "n2", "n3", "n4"], 16)
        for i in range(5 * AE_SLICE):
            node.storage.store(f"carts/k{i}", versions.write(EMPTY, (), "n1.1", b"v", 1.0))
        turns = 0

        async def other_work() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(other_work())
        await asyncio.sleep(0)
        turns = 0
        tree = await node._tree_for("n2")
        other.cancel()
        assert tree.root == node._shared_tree("n2").root
        assert 0 < len(tree) < 5 * AE_SLICE  # only the keys n2 should hold too
        assert turns >= 5  # the loop ran other work between slices

        # later writes, a rewrite and a reaped tombstone: the kept tree follows them
        for i in range(50):
            node.storage.store(f"carts/new{i}", versions.write(EMPTY, (), "n1.1", b"w", 2.0))
        node.storage.store("carts/k1", versions.write(EMPTY, (), "n1.2", b"v2", 3.0))
        gone = versions.write(EMPTY, (), "n1.1", None, 1.0)
        node.storage.store("carts/deleted", gone)
        for i in range(3, 20):  # deleted keys the tree holds
            key = f"carts/k{i}"
            old = node.storage.get(key)
            node.storage.store(key, versions.write(old, context_of(old), "n1.3", None, 1.0))
        assert node.storage.reap(now=1.0 + 10, grace=5) == 18
        kept = await node._tree_for("n2")
        assert kept is tree and kept.root == node._shared_tree("n2").root
        # a peer asking with another leaf count gets a tree of its own, the kept one stays
        other_size = await node._tree_for("n2", tree.leaves * 2)
        assert other_size.leaves == tree.leaves * 2
        assert await node._tree_for("n2") is tree
        assert await node.handoff_once() == 0  # no hints: nothing scanned, nothing sent
    finally:
        await node.stop()


async def test_a_node_sent_a_malformed_tree_refuses_it_by_name_and_keeps_serving(
    tmp_path: Path,
) -> None:
    peer = f"127.0.0.1:{free_port()}"
    node = KvNode(NodeConfig("n1", tmp_path, peer=peer, membership="test"))
    client = Rpc("n2", f"127.0.0.1:{free_port()}", lambda _frm, _body: Found(to_wire(EMPTY)))
    await node.start()
    try:
        with pytest.raises(ReplicaFailed, match="not the hashes of a tree"):
            await client.call("n1", peer, AeTree(b"\x00" * 24), 5.0)
        assert isinstance(await client.call("n1", peer, Fetch("carts/k"), 5.0), Found)
    finally:
        await client.stop()
        await node.stop()
