"""The Raft-replicated Store: the foundation's contract suite, unchanged, on a 3-node cluster
on loopback in this process (three nodes, three ports, three data dirs), through the leader."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from corral.consensus.config import DEFAULT, FAST
from corral.errors import AlreadyRunning, PlatformUnavailable
from corral.store.base import Store, put
from corral.store.raft import RaftStore, open_local_cluster, wait_for_leader
from corral.testing import free_ports
from tests.store.contract import StoreContract, StoreFactory, absent, eventually, take

WRITER = Path(__file__).with_name("raft_writer.py")


class RaftClusterFactory:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.ports = free_ports(3)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        # DEFAULT timeouts: a loaded CI machine must not cause an election mid-test (the
        # first election is immediate either way: the helper campaigns at once).
        async with contextlib.AsyncExitStack() as stack:
            for attempt in range(3):
                try:
                    leader, _stores = await stack.enter_async_context(
                        open_local_cluster(self.base, self.ports, DEFAULT)
                    )
                    break
                except PlatformUnavailable as exc:
                    # Ports are picked by bind-and-release: between a close and a reopen a
                    # parallel test may take one. Addresses are not persisted, so new ones do.
                    if "cannot listen" not in exc.message or attempt == 2:
                        raise
                    self.ports = free_ports(3)
            store: Store = leader  # the Protocol conformance check
            yield store

    def writer_command(self, prefix: str, count: int) -> list[str]:
        ports = ",".join(str(p) for p in self.ports)
        return [sys.executable, str(WRITER), str(self.base), ports, prefix, str(count)]


class TestRaftStore(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return RaftClusterFactory(tmp_path / "cluster")


# -- what only a replicated store has ------------------------------------------------------


@pytest.fixture
def ports() -> list[int]:
    return free_ports(3)


async def test_a_follower_forwards_writes_and_serves_linearizable_reads_and_watches(
    tmp_path: Path, ports: list[int]
) -> None:
    # DEFAULT timeouts wherever a test does not provoke an election: with FAST's 150 ms, a
    # loaded CI machine can starve heartbeats long enough for check-quorum to depose the leader.
    async with open_local_cluster(tmp_path, ports, DEFAULT) as (leader, stores):
        follower = next(s for s in stores if s is not leader)
        events = follower.watch("/f/")
        rev = await put(follower, "/f/a", b"from-follower")
        kv = await leader.get("/f/a")
        assert kv is not None and kv.mod_revision == rev
        rev2 = await put(leader, "/f/b", b"from-leader")
        kv = await follower.get("/f/b")  # ReadIndex: the follower waits until it has it
        assert kv is not None and kv.mod_revision == rev2
        seen = await take(events, 2)
        assert [(e.kv.key, e.kv.mod_revision) for e in seen] == [("/f/a", rev), ("/f/b", rev2)]


async def test_a_node_that_missed_compacted_entries_catches_up_from_a_snapshot(
    tmp_path: Path, ports: list[int]
) -> None:
    peers = {i: f"127.0.0.1:{p}" for i, p in enumerate(ports, 1)}

    async def start(i: int) -> RaftStore:
        return await RaftStore.open(
            i, peers, tmp_path / f"n{i}", DEFAULT, snapshot_every=20, snapshot_keep=5
        )

    stores = {i: await start(i) for i in (1, 2, 3)}
    try:
        stores[1].campaign()
        leader = await wait_for_leader(list(stores.values()))
        lagging = next(i for i in stores if stores[i] is not leader)
        await stores.pop(lagging).close()
        lease = await leader.grant(60)
        for i in range(60):
            await put(leader, f"/snap/{i:02}", b"%d" % i, lease if i == 0 else 0)
        final = (await leader.range("")).revision
        assert leader.node.storage is not None
        assert leader.node.storage.first_index() > 10  # what the lagging node needs is gone
        stores[lagging] = await start(lagging)
        back = stores[lagging]

        async def caught_up() -> bool:
            return back.revision == final

        await eventually(caught_up, what="the restarted node caught up")
        assert back.node.storage is not None and back.node.storage.stored_snapshot().index > 20
        listing = await back.range("/snap/")
        assert [kv.value for kv in listing.kvs] == [b"%d" % i for i in range(60)]
        assert listing.kvs[0].lease == lease
        assert await back.keepalive(lease) == 60  # the lease came over with the snapshot
    finally:
        for store in stores.values():
            await store.close()


async def test_leases_restart_at_full_ttl_when_the_leader_changes(
    tmp_path: Path, ports: list[int]
) -> None:
    ttl = 1.0
    async with open_local_cluster(tmp_path, ports, FAST) as (leader, stores):
        lease = await leader.grant(ttl)
        await put(leader, "/owner", b"alive", lease)
        await asyncio.sleep(ttl * 0.6)
        survivors = [s for s in stores if s is not leader]
        await leader.close()
        new = await wait_for_leader(survivors)
        elected = time.monotonic()
        assert await new.get("/owner") is not None  # the old deadline has passed by now
        await eventually(lambda: absent(new, "/owner"), what="lease expired on the new leader")
        assert time.monotonic() - elected >= ttl * 0.75


async def test_a_second_process_cannot_open_a_node_directory_in_use(
    tmp_path: Path, ports: list[int]
) -> None:
    async with open_local_cluster(tmp_path, ports, FAST):
        peers = {i: f"127.0.0.1:{p}" for i, p in enumerate(ports, 1)}
        with pytest.raises(AlreadyRunning, match="in use"):
            await RaftStore.open(1, peers, tmp_path / "n1", FAST)
