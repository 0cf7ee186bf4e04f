"""The AP store as running processes: 3 nodes on loopback, N=3, R=W=2 (issue 9).

Each test starts its own cluster (``corral kv serve`` ×3 with the TEST membership preset) and
kills it at the end; the HTTP framing test runs one node in-process. Faults are real: SIGKILL,
SIGSTOP.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from corral.consensus.transport import frame, read_frame, split_address
from corral.errors import UserError
from corral.kv import http as kv_http
from corral.kv import versions
from corral.kv.coordinator import Quorum
from corral.kv.http import HttpProtocol
from corral.kv.node import KvNode, NodeConfig
from corral.kv.testing import LocalCluster, free_port
from corral.kv.transport import Rpc
from corral.kv.wire import Envelope, Fetch, Found, Hello, Reply, Request, to_wire
from corral.testing import free_ports, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path, 3, ["--ae-interval", "1"]) as c:
        c.wait_ready()
        yield c


def hints_pending(cluster: LocalCluster, nodes: list[int]) -> int:
    return sum(cluster.status(i)["hints_pending"] for i in nodes)


def test_value_written_with_w2_is_read_with_r2_from_every_node(cluster: LocalCluster) -> None:
    cluster.client(0).put("carts", "alice", b"3 apples")
    for i in range(3):
        assert cluster.client(i).get("carts", "alice").value == b"3 apples"
    assert cluster.client(1).get("carts", "alice", r=3).value == b"3 apples"
    assert not cluster.client(2).get("carts", "nobody").found
    with pytest.raises(UserError, match=r"\?r=4 must be an integer between 1 and n"):
        cluster.client(0).get("carts", "alice", r=4)


def test_concurrent_writes_without_context_are_siblings_and_a_write_with_context_collapses(
    cluster: LocalCluster,
) -> None:
    first = cluster.client(0).put("carts", "bob", b"milk")
    second = cluster.client(2).put("carts", "bob", b"eggs")  # blind: saw nothing
    assert b"eggs" in second.values
    read = cluster.client(1).get("carts", "bob", r=3)  # every replica: both writes are there
    assert sorted(read.values) == [b"eggs", b"milk"]
    merged = cluster.client(1).put("carts", "bob", b"eggs,milk", read.context)
    assert merged.values == [b"eggs,milk"]
    for i in range(3):
        assert cluster.client(i).get("carts", "bob").value == b"eggs,milk"
    # a writer with a stale context adds one sibling, never loses the merged value
    cluster.client(0).put("carts", "bob", b"bread", first.context)
    wait_for(
        lambda: (
            sorted(cluster.client(2).get("carts", "bob", r=3).values) == [b"bread", b"eggs,milk"]
        ),
        what="the stale write to sit beside the merged value",
    )


def test_writes_succeed_while_a_node_is_killed_and_hints_drain_to_it_when_it_returns(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    cluster.kill(2)
    client = cluster.client(0)
    for k in range(20):
        client.put("orders", f"o{k}", f"order {k}".encode())  # W=2: raises if not acknowledged
    assert hints_pending(cluster, [0, 1]) >= 20
    with sqlite3.connect(f"file:{tmp_path / 'n1' / 'kv.sqlite3'}?mode=ro", uri=True) as db:
        on_disk = db.execute("SELECT count(*) FROM hints WHERE owner = 'n3'").fetchone()[0]
    assert on_disk >= 1  # hints are persisted, not only held in memory
    cluster.restart(2)
    wait_for(lambda: hints_pending(cluster, [0, 1, 2]) == 0, 15, what="hint stores to drain")
    back = cluster.client(2)
    for k in range(20):
        assert back.get("orders", f"o{k}", r=1).value == f"order {k}".encode()


def test_a_stopped_node_neither_blocks_quorum_writes_nor_reads_and_catches_up(
    cluster: LocalCluster,
) -> None:
    cluster.signal(1, signal.SIGSTOP)
    try:
        client = cluster.client(0)
        for k in range(10):
            client.put("sessions", f"s{k}", b"x" * k)
        for k in range(10):
            assert cluster.client(2).get("sessions", f"s{k}").value == b"x" * k
    finally:
        cluster.signal(1, signal.SIGCONT)
    cluster.wait_ready([0, 1, 2])
    wait_for(lambda: hints_pending(cluster, [0, 1, 2]) == 0, 15, what="hint stores to drain")
    wait_for(
        lambda: all(
            cluster.client(1).get("sessions", f"s{k}", r=1).value == b"x" * k for k in range(10)
        ),
        10,
        what="the stopped node to hold every write",
    )


def test_a_delete_is_not_resurrected_by_anti_entropy_from_a_stale_replica(
    tmp_path: Path,
) -> None:
    # Handoff off (an hour), anti-entropy every 0.5 s: only Merkle exchanges can repair n3.
    options = ["--ae-interval", "0.5", "--handoff-interval", "3600"]
    with LocalCluster(tmp_path, 3, options) as cluster:
        cluster.wait_ready()
        client = cluster.client(0)
        written = client.put("carts", "carol", b"to be deleted")
        wait_for(
            lambda: cluster.client(2).get("carts", "carol", r=1).found, what="n3 to hold the value"
        )
        cluster.kill(2)  # n3 keeps the value on disk
        client.delete("carts", "carol", written.context)
        client.put("carts", "dave", b"written while n3 was down")
        cluster.restart(2)
        cluster.wait_ready()
        rounds = cluster.status(2)["counters"]["ae_rounds"]
        wait_for(
            lambda: (
                not cluster.client(2).get("carts", "carol", r=1).found
                and cluster.client(2).get("carts", "dave", r=1).found
            ),
            15,
            what="anti-entropy to bring n3 the delete and the new key",
        )
        wait_for(lambda: cluster.status(2)["counters"][
            "ae_rounds"] >= rounds + 2, what="two more anti-entropy rounds")  # fmt: skip
        for i in range(3):
            assert not cluster.client(i).get("carts", "carol", r=3).found
        assert cluster.status(0)["hints_pending"] >= 1  # handoff did not do it


async def test_the_http_api_answers_pipelined_chunked_and_closing_requests_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node speaks HTTP/1.1 itself: the framing clients rely on, on one in-process node."""
    node = KvNode(
        NodeConfig(
            "solo", tmp_path, http=f"127.0.0.1:{free_ports(1)[0]}", peer=f"127.0.0.1:{free_port()}",
            quorum=Quorum(1, 1, 1), membership="test",
        )
    )  # fmt: skip
    await node.start()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(node), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"PUT /kv/carts/a%2Fb HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            b"GET /kv/carts/a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /kv/carts/absent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answers = (await asyncio.wait_for(reader.read(), 5)).split(b"HTTP/1.1 ")[1:]
        writer.close()
        assert [a[:3] for a in answers] == [b"204", b"200", b"404", b"404"]
        assert b"X-Kv-Context: " in answers[0] and b"Content-Length" not in answers[0]
        assert answers[1].endswith(b"\r\n\r\nabcde")  # the chunked body, de-chunked
        assert b"no route GET /nowhere" in answers[2]
        assert b"Connection: close" in answers[3]  # and the server closed: read() returned

        # A body over the limit is refused whole: nothing of it is stored.
        monkeypatch.setattr(kv_http, "MAX_BODY", 8)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"PUT /kv/carts/big HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
        writer.write(b"0123456789ab")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 413")
        writer.close()
        assert not (await node.get("carts/big", 1)).exists
    finally:
        server.close()
        await node.stop()


async def test_peer_rpc_answers_every_call_reads_split_frames_and_hangs_up_on_strangers() -> None:
    """Node-to-node RPC: pipelined replies all arrive, a frame cut into single bytes is still
    read, and a connection from another cluster or speaking another frame version is closed."""
    found = Found(to_wire(versions.EMPTY))
    _encode = msgspec.msgpack.Encoder().encode
    served: list[str] = []

    def handler(frm: str, body: Request) -> Reply:
        served.append(frm)
        return found

    address = f"127.0.0.1:{free_port()}"
    server = Rpc("b", address, handler)
    client = Rpc("a", f"127.0.0.1:{free_port()}", handler)
    await server.start()
    try:
        replies = await asyncio.gather(
            *(client.call("b", address, Fetch(f"k/{i}"), 5.0) for i in range(200))
        )
        assert replies == [found] * 200 and served == ["a"] * 200

        host, port = split_address(address)
        reader, writer = await asyncio.open_connection(host, port)
        data = frame(_encode(Hello("kv", "c", "b"))) + frame(_encode(Envelope(7, Fetch("k/x"))))
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
        reply = msgspec.msgpack.decode(await read_frame(reader), type=Envelope)
        assert reply.id == 7 and reply.body == found
        writer.close()

        for opening in (
            frame(_encode(Hello("another-cluster", "c", "b"))),
            b"\x00\x00\x00\x02\x09\x90",  # frame version 9
        ):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(opening + frame(_encode(Envelope(8, Fetch("k/y")))))
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, unanswered
            writer.close()
        assert served == ["a"] * 200 + ["c"]
    finally:
        await client.stop()
        await server.stop()
