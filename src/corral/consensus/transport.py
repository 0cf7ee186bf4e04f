"""Raft messages between nodes over asyncio TCP: length-prefixed msgpack frames.

Theory of operation (hashicorp/raft's ``NetworkTransport``, etcd's ``rafthttp`` streams):
- **Frames.** ``[u32 length][u8 version][msgpack body]``; ``length`` counts the version byte
  and the body. A frame of another version, or one that does not decode, closes the
  connection: two nodes of incompatible versions never misread each other.
- **Identity.** A connection starts with a ``Hello`` frame (cluster id, sender id, receiver
  id). The receiver closes it unless the cluster id is its own, the sender is one of its peers
  and the receiver is itself — so a node restarted on another node's address, or a node of
  another cluster, cannot inject messages.
- **One outbound connection per peer**, each fed by a bounded queue and written by one task
  that batches everything queued into one write. Raft tolerates loss, so when the queue is
  full or the peer is not connected the message is dropped and the core is told the peer is
  unreachable (``on_unreachable``) — it falls back to probing instead of streaming.
- **Reconnect with backoff**: 20 ms doubling to 1 s, with jitter, reset on success.
Inbound connections are read by one task each; every decoded message goes to ``on_message``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
from collections.abc import Callable

import msgspec

from corral.consensus.messages import Message

log = logging.getLogger(__name__)

VERSION = 1
MAX_FRAME = 512 << 20  # a snapshot travels in one frame
QUEUE_SIZE = 4096
_LEN = struct.Struct(">IB")


class Hello(msgspec.Struct, frozen=True, array_like=True):
    cluster: str
    frm: int
    to: int


_encode = msgspec.msgpack.Encoder().encode
_hello_decoder = msgspec.msgpack.Decoder(Hello)
_message_decoder = msgspec.msgpack.Decoder(Message)


def frame(body: bytes) -> bytes:
    return _LEN.pack(len(body) + 1, VERSION) + body


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readexactly(_LEN.size)
    length, version = _LEN.unpack(head)
    if version != VERSION:
        raise ValueError(f"frame version {version}, this node speaks {VERSION}")
    if not 1 <= length <= MAX_FRAME:
        raise ValueError(f"frame length {length} out of bounds")
    return await reader.readexactly(length - 1)


class _Peer:
    def __init__(self, transport: Transport, peer_id: int, address: str) -> None:
        self.transport = transport
        self.id = peer_id
        self.address = address
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_SIZE)
        self.connected = False
        self.task: asyncio.Task[None] | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        backoff = 0.02
        rng = random.Random()
        host, port = split_address(self.address)
        hello = frame(_encode(Hello(self.transport.cluster, self.transport.node_id, self.id)))
        while True:
            try:
                _reader, writer = await asyncio.open_connection(host, port)
            except (OSError, RuntimeError):
                await asyncio.sleep(backoff * rng.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 1.0)
                continue
            self.writer = writer
            try:
                writer.write(hello)
                self.connected = True
                backoff = 0.02
                while True:
                    data = [await self.queue.get()]
                    while not self.queue.empty():
                        data.append(self.queue.get_nowait())
                    writer.write(b"".join(data))
                    await writer.drain()
            except (OSError, ConnectionError, RuntimeError):
                pass  # RuntimeError: uvloop refuses writes on a transport already closed
            finally:
                self.connected = False
                self.writer = None
                # abort, never ``await wait_closed()``: with the peer gone that can hang
                # (seen with uvloop), and this task must go back to reconnecting
                writer.transport.abort()
                while not self.queue.empty():
                    self.queue.get_nowait()
            self.transport.on_unreachable(self.id)
            await asyncio.sleep(backoff * rng.uniform(0.5, 1.0))


class Transport:
    """Sends and receives Raft ``Message``s for node ``node_id``; ``peers`` maps every node id
    (this one included) to its ``host:port``."""

    def __init__(
        self,
        node_id: int,
        peers: dict[int, str],
        on_message: Callable[[Message], None],
        on_unreachable: Callable[[int], None],
        cluster: str = "corral",
    ) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.address = peers[node_id]
        self.on_message = on_message
        self.on_unreachable = on_unreachable
        self._peers = {p: _Peer(self, p, a) for p, a in sorted(peers.items()) if p != node_id}
        self._server: asyncio.Server | None = None
        self._inbound: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = False

    async def start(self) -> None:
        host, port = split_address(self.address)
        self._server = await asyncio.start_server(self._accept, host, port)
        for peer in self._peers.values():
            peer.task = asyncio.get_running_loop().create_task(
                peer.run(), name=f"raft-transport {self.node_id}->{peer.id}"
            )

    async def stop(self) -> None:
        """Close every connection at once (what a crash looks like to the peers)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for peer in self._peers.values():
            if peer.writer is not None:
                peer.writer.transport.abort()
            if peer.task is not None:
                peer.task.cancel()
        for peer in self._peers.values():
            if peer.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await peer.task
        # Inbound readers end on their own once their sockets are aborted; cancelling a
        # start_server handler makes asyncio log a spurious error.
        for writer in list(self._writers):
            writer.transport.abort()
        if self._inbound:
            _done, late = await asyncio.wait(list(self._inbound), timeout=1.0)
            for task in late:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    def add_peer(self, peer_id: int, address: str) -> None:
        """Start sending to (and accepting) ``peer_id`` at ``address`` (a new member)."""
        old = self._peers.get(peer_id)
        if old is not None and old.address == address:
            return
        self.remove_peer(peer_id)
        peer = self._peers[peer_id] = _Peer(self, peer_id, address)
        if self._server is not None and not self._stopping:
            peer.task = asyncio.get_running_loop().create_task(
                peer.run(), name=f"raft-transport {self.node_id}->{peer_id}"
            )

    def remove_peer(self, peer_id: int) -> None:
        """Stop sending to ``peer_id`` (a removed member); its connections are dropped."""
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return
        if peer.writer is not None:
            peer.writer.transport.abort()
        if peer.task is not None:
            peer.task.cancel()

    def connected(self, peer_id: int) -> bool:
        peer = self._peers.get(peer_id)
        return peer is not None and peer.connected

    def send(self, m: Message) -> bool:
        """Queue ``m`` for its peer; False (and the core told) if it had to be dropped."""
        peer = self._peers.get(m.to)
        if peer is None:
            return False
        if not peer.connected or peer.queue.full():
            self.on_unreachable(m.to)
            return False
        peer.queue.put_nowait(frame(_encode(m)))
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._stopping:
            writer.transport.abort()
            return
        self._inbound.add(task)
        self._writers.add(writer)
        try:
            async with asyncio.timeout(5.0):
                hello = _hello_decoder.decode(await read_frame(reader))
            if hello.cluster != self.cluster or hello.to != self.node_id:
                log.warning(
                    "raft node %d refused a connection from node %d of cluster %r (for node "
                    "%d): this node is %d of cluster %r",
                    self.node_id,
                    hello.frm,
                    hello.cluster,
                    hello.to,
                    self.node_id,
                    self.cluster,
                )
                return
            if hello.frm not in self._peers:
                log.warning("raft node %d refused unknown node %d", self.node_id, hello.frm)
                return
            while True:
                m = _message_decoder.decode(await read_frame(reader))
                if m.frm != hello.frm:
                    log.warning(
                        "raft node %d: connection of node %d sent a message from %d; closed",
                        self.node_id,
                        hello.frm,
                        m.frm,
                    )
                    return
                self.on_message(m)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except (ValueError, msgspec.DecodeError) as exc:
            log.warning(
                "raft node %d: bad frame from a peer, connection closed: %s", self.node_id, exc
            )
        finally:
            self._inbound.discard(task)
            self._writers.discard(writer)
            writer.close()
