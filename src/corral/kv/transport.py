"""Request/reply between AP-store nodes over asyncio TCP, in the Raft transport's frames.

Theory of operation: the frames, version byte, identity check and address parsing are the Raft
transport's (``consensus.transport``: ``[u32 length][u8 version][msgpack]``, a ``Hello`` first,
a frame of another version closes the connection). Its connection class is not reused because
it is built for Raft's needs — integer node ids, one-way messages that may be dropped, a core
told "unreachable" — while a quorum write needs a *reply* from each replica ("durable") and
must know at once when a replica cannot answer so the coordinator can go elsewhere.

- **One connection per peer, pipelined.** Requests carry an id; replies come back on the same
  connection in any order and complete the caller's future. Several requests in flight share
  the connection.
- **Fail fast.** A refused connect, a closed connection or a per-call timeout raises
  ``ReplicaUnavailable`` for every call waiting on it; after a failed connect or a lost
  connection the peer is skipped for a short backoff (20 ms doubling to 1 s) rather than
  retried per request.
- **What the connection says about the peer** (``Rpc.evidence``), for routing ahead of
  gossip, as Dynamo's nodes judge each other by whether their requests are answered: ``DOWN``
  within the backoff after a refused connect or a lost connection (a killed process resets
  its connections at once, long before gossip suspects it); ``STALLED`` when a replica
  request (``Replicate``, ``Fetch``, ``Handoff`` — answered within a disk sync) has waited
  ``stall`` seconds with no reply of any kind since it left (packets vanish: a partition, a
  paused process); ``ANSWERING`` when a reply came within ``fresh`` seconds and nothing is
  stalled; otherwise ``None``, no evidence. A forwarded ``Coordinate`` may legitimately wait
  for a whole quorum, so it never counts as stalled.
- **Protocols, not streams.** Both ends are ``asyncio.Protocol``s that cut every frame out of
  what one ``recv`` brought (``FrameReader``): a batch of frames costs one callback, where
  streams cost two awaits per frame.
- **Serving.** A handler answers synchronously
  (local reads), with a future (a write answered once durable: a callback, no task), or with
  another awaitable (a forwarded coordination), run as a task.
- **Batched frames.** Frames for one connection queue in an ``Outbox`` and leave in one write
  at the end of the loop iteration: concurrent puts cost one ``send`` per peer, not one each,
  and a lone request waits for nothing (the flush is the next callback, not a timer).
- **No task per call.** ``send`` returns the reply's future; ``call`` is ``await send(...)``.
  A task is made only to connect (and per forwarded coordination). Deadlines are kept per
  connection under one timer (for the earliest), which sweeps answered requests away and
  fails overdue ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from enum import Enum
from functools import partial

import msgspec

from corral import clock
from corral.consensus.transport import MAX_FRAME, VERSION, frame, split_address
from corral.kv.wire import (
    AeObjects,
    Done,
    Envelope,
    Failed,
    Fetch,
    Found,
    Handoff,
    Hello,
    ReplicaFailed,
    Replicate,
    ReplicaUnavailable,
    Reply,
    Request,
    Written,
)

log = logging.getLogger(__name__)

_REPLIES = (Done, Found, Written, AeObjects, Failed)
_PROMPT = (Replicate, Fetch, Handoff)  # answered within a disk sync: silence means trouble


class Evidence(Enum):
    ANSWERING = "answering"
    STALLED = "stalled"
    DOWN = "down"


Handler = Callable[[str, Request], Reply | Awaitable[Reply]]

_encode = msgspec.msgpack.Encoder().encode
_hello_decoder = msgspec.msgpack.Decoder(Hello)
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_HEAD = 5  # u32 length (version byte included) + u8 version, as consensus.transport.frame


class FrameReader(asyncio.Protocol):
    """Cuts ``[u32 length][u8 version][body]`` frames out of the byte stream and hands each
    body to ``on_frame``; a bad frame (another version, a length out of bounds, a body that
    does not decode) closes the connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are only alike

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        start = 0
        end = len(buffer)
        try:
            while end - start >= _HEAD:
                length = int.from_bytes(buffer[start : start + 4], "big")
                if buffer[start + 4] != VERSION:
                    raise ValueError(
                        f"frame version {buffer[start + 4]}, this node speaks {VERSION}"
                    )
                if not 1 <= length <= MAX_FRAME:
                    raise ValueError(f"frame length {length} out of bounds")
                stop = start + 4 + length
                if stop > end:
                    break
                body = bytes(buffer[start + _HEAD : stop])
                start = stop
                self.on_frame(body)
                if self.transport is None or self.transport.is_closing():
                    return  # on_frame closed the connection
        except (ValueError, msgspec.DecodeError) as exc:
            self.bad_frame(exc)
            if self.transport is not None:
                self.transport.abort()
            return
        del buffer[:start]

    def on_frame(self, body: bytes) -> None:
        raise NotImplementedError

    def bad_frame(self, exc: Exception) -> None:
        pass


class Outbox:
    """Frames for one connection, written together once per loop iteration."""

    __slots__ = ("frames", "loop", "scheduled", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.frames: list[bytes] = []
        self.scheduled = False
        self.loop = asyncio.get_running_loop()

    def put(self, body: bytes) -> None:
        self.frames.append(frame(body))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        frames, self.frames = self.frames, []
        if not frames or self.transport.is_closing():
            return
        try:
            self.transport.write(b"".join(frames))
        except (OSError, RuntimeError):
            self.transport.abort()


class _Outbound(FrameReader):
    """Our connection to a peer: its frames are replies to our requests."""

    def __init__(self, conn: _Conn) -> None:
        super().__init__()
        self.conn = conn

    def on_frame(self, body: bytes) -> None:
        self.conn.replied(_envelope_decoder.decode(body))

    def connection_lost(self, exc: Exception | None) -> None:
        transport, self.transport = self.transport, None
        if transport is not None:
            self.conn.lost(transport)


class _Inbound(FrameReader):
    """A peer's connection to us: a ``Hello`` within 5 s, then requests."""

    def __init__(self, rpc: Rpc) -> None:
        super().__init__()
        self.rpc = rpc
        self.frm: str | None = None
        self.outbox: Outbox | None = None
        self.hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.outbox = Outbox(self.transport)
        self.rpc._inbound.add(self.transport)
        self.hello_timer = asyncio.get_running_loop().call_later(5.0, self.transport.abort)

    def on_frame(self, body: bytes) -> None:
        if self.frm is not None:
            assert self.outbox is not None
            self.rpc._serve(self.frm, _envelope_decoder.decode(body), self.outbox)
            return
        hello = _hello_decoder.decode(body)
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        rpc = self.rpc
        if hello.cluster != rpc.cluster or hello.to != rpc.name:
            log.warning(
                "kv node %s refused a connection from %s of cluster %r (meant for %s)",
                rpc.name,
                hello.frm,
                hello.cluster,
                hello.to,
            )
            if self.transport is not None:
                self.transport.abort()
            return
        self.frm = hello.frm

    def bad_frame(self, exc: Exception) -> None:
        log.warning("kv node %s: bad frame from a peer, connection closed: %s", self.rpc.name, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        if self.transport is not None:
            self.rpc._inbound.discard(self.transport)
        self.transport = None


class _Conn:
    def __init__(self, rpc: Rpc, peer: str, address: str) -> None:
        self.rpc = rpc
        self.peer = peer
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.outbox: Outbox | None = None
        self.waiting: dict[int, asyncio.Future[Reply]] = {}
        # deadlines in the order requests were sent; one timer for the earliest, not one each
        self.deadlines: deque[tuple[float, int, float]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.connecting: asyncio.Future[None] | None = None
        self.backoff = 0.02
        self.retry_at = 0.0
        self.replied_at = -1e9  # clock.monotonic() of the last reply of any kind
        # (sent at, id) of prompt requests in send order; answered ones are pruned lazily
        self.prompt: deque[tuple[float, int]] = deque()

    def _prune(self) -> None:
        prompt, waiting = self.prompt, self.waiting
        while prompt and prompt[0][1] not in waiting:
            prompt.popleft()

    def expect(self, rid: int, deadline: float, timeout: float) -> None:
        """Fail request ``rid`` at ``deadline`` if its reply has not come by then."""
        self.deadlines.append((deadline, rid, timeout))
        if self.timer is None or deadline < self.timer.when():
            if self.timer is not None:
                self.timer.cancel()
            self.timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        self.timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        kept: deque[tuple[float, int, float]] = deque()
        for deadline, rid, timeout in self.deadlines:
            fut = self.waiting.get(rid)
            if fut is None or fut.done():
                continue  # answered: forget its deadline
            if deadline > now:
                kept.append((deadline, rid, timeout))
                continue
            del self.waiting[rid]
            fut.set_exception(
                ReplicaUnavailable(
                    f"kv node {self.peer} ({self.address}) did not answer within {timeout:.2f} s"
                )
            )
        self.deadlines = kept
        self._prune()
        if kept:
            self.timer = loop.call_at(min(d for d, _, _ in kept), self._expire)

    async def ensure(self) -> asyncio.Transport:
        if self.transport is not None:
            return self.transport
        if clock.monotonic() < self.retry_at:
            raise ReplicaUnavailable(f"kv node {self.peer} ({self.address}) was just unreachable")
        if self.connecting is None:
            connecting = self.connecting = asyncio.get_running_loop().create_future()
            try:
                await self._connect()
                connecting.set_result(None)
            except BaseException as exc:
                connecting.set_exception(exc)
                connecting.exception()  # retrieved: waiters see it through their shield
                raise
            finally:
                self.connecting = None
        else:
            await asyncio.shield(self.connecting)
        return self._connected()

    def _connected(self) -> asyncio.Transport:
        # the connection may have closed while this caller waited for it
        if self.transport is None:
            raise ReplicaUnavailable(f"kv node {self.peer} ({self.address}) closed the connection")
        return self.transport

    async def _connect(self) -> None:
        host, port = split_address(self.address)
        try:
            async with asyncio.timeout(1.0):
                transport, _ = await asyncio.get_running_loop().create_connection(
                    partial(_Outbound, self), host, port
                )
        except (OSError, TimeoutError) as exc:
            self.retry_at = clock.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, 1.0)
            raise ReplicaUnavailable(
                f"kv node {self.peer} ({self.address}) is unreachable: {exc}"
            ) from None
        self.backoff = 0.02
        if transport.is_closing():  # lost between connecting and here
            raise ReplicaUnavailable(f"kv node {self.peer} ({self.address}) closed the connection")
        transport.write(frame(_encode(Hello(self.rpc.cluster, self.rpc.name, self.peer))))
        self.transport = transport
        self.outbox = Outbox(transport)

    def replied(self, env: Envelope) -> None:
        self.replied_at = clock.monotonic()
        fut = self.waiting.pop(env.id, None)
        self._prune()
        if fut is None or fut.done():
            return
        body = env.body
        if isinstance(body, Failed):
            fut.set_exception(
                ReplicaFailed(f"kv node {self.peer} failed the request: {body.error}")
            )
        else:
            fut.set_result(body)  # type: ignore[arg-type]  # replies only here

    def lost(self, transport: asyncio.Transport) -> None:
        """The connection closed under us: the peer is down until the backoff passes (a
        reconnect that is refused then doubles it)."""
        if transport is self.transport:
            self.retry_at = clock.monotonic() + self.backoff
            self.drop(transport)

    def drop(self, transport: asyncio.Transport | None = None) -> None:
        if transport is not None and transport is not self.transport:
            return
        if self.transport is not None:
            self.transport.abort()
        self.transport = None
        self.outbox = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadlines.clear()
        self.prompt.clear()
        waiting, self.waiting = self.waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(
                    ReplicaUnavailable(f"kv node {self.peer} ({self.address}) went away")
                )


class Rpc:
    """Calls other nodes and serves their calls, as node ``name`` listening on ``address``."""

    def __init__(
        self,
        name: str,
        address: str,
        handler: Handler,
        cluster: str = "kv",
        stall: float = 0.3,
        fresh: float = 1.0,
    ) -> None:
        self.name = name
        self.address = address
        self.cluster = cluster
        self.handler = handler
        self.stall = stall
        self.fresh = fresh
        self._conns: dict[str, _Conn] = {}
        self._ids = 0
        self._server: asyncio.Server | None = None
        self._inbound: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        host, port = split_address(self.address)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(partial(_Inbound, self), host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self._conns.values():
            conn.drop()
        for transport in list(self._inbound):
            transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()

    def evidence(self, peer: str) -> Evidence | None:
        """What our connection to ``peer`` says about it (see the module docstring)."""
        conn = self._conns.get(peer)
        if conn is None:
            return None
        # asked for every node of a key's walk on every put: one call, no helpers
        now = clock.monotonic()
        if now < conn.retry_at:
            return Evidence.DOWN
        prompt = conn.prompt
        if prompt:
            conn._prune()
            if prompt and now - max(prompt[0][0], conn.replied_at) > self.stall:
                return Evidence.STALLED
        if conn.transport is not None and now - conn.replied_at < self.fresh:
            return Evidence.ANSWERING
        return None

    async def call(self, peer: str, address: str, body: Request, timeout: float) -> Reply:
        """Send ``body`` to ``peer`` and wait for its reply; ``ReplicaUnavailable`` if none."""
        return await self.send(peer, address, body, timeout)

    def send(self, peer: str, address: str, body: Request, timeout: float) -> asyncio.Future[Reply]:
        """The future of ``peer``'s reply to ``body``: fails with ``ReplicaUnavailable`` when
        the peer is unreachable, fails the request, or does not answer within ``timeout``."""
        loop = asyncio.get_running_loop()
        conn = self._conns.get(peer)
        if conn is None or conn.address != address:
            if conn is not None:
                conn.drop()
            conn = self._conns[peer] = _Conn(self, peer, address)
        self._ids += 1
        rid = self._ids
        fut: asyncio.Future[Reply] = loop.create_future()
        conn.waiting[rid] = fut
        conn.expect(rid, loop.time() + timeout, timeout)
        if isinstance(body, _PROMPT):
            conn.prompt.append((clock.monotonic(), rid))
        if conn.outbox is not None:
            conn.outbox.put(_encode(Envelope(rid, body)))
        else:
            task = loop.create_task(self._connect_then_send(conn, rid, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return fut

    async def _connect_then_send(self, conn: _Conn, rid: int, body: Request) -> None:
        try:
            await conn.ensure()
        except ReplicaUnavailable as exc:
            fut = conn.waiting.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(exc)
            return
        if conn.outbox is not None and rid in conn.waiting:
            conn.outbox.put(_encode(Envelope(rid, body)))

    def _serve(self, frm: str, env: Envelope, outbox: Outbox) -> None:
        body = env.body
        if isinstance(body, _REPLIES):
            outbox.put(_encode(Envelope(env.id, Failed(f"{type(body).__name__} is a reply"))))
            return
        try:
            answer = self.handler(frm, body)
        except Exception as exc:  # a handler bug must not kill the connection
            log.exception("kv node %s: request from %s failed", self.name, frm)
            answer = Failed(str(exc))
        if isinstance(answer, asyncio.Future):
            answer.add_done_callback(partial(self._answered, env.id, outbox))
        elif inspect.isawaitable(answer):
            task = asyncio.get_running_loop().create_task(self._finish(env.id, answer, outbox))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            outbox.put(_encode(Envelope(env.id, answer)))

    def _answered(self, rid: int, outbox: Outbox, answer: asyncio.Future[Reply]) -> None:
        if answer.cancelled():
            reply: Reply = Failed("cancelled")
        elif (exc := answer.exception()) is not None:
            reply = Failed(str(exc))
        else:
            reply = answer.result()
        outbox.put(_encode(Envelope(rid, reply)))

    async def _finish(self, rid: int, answer: Awaitable[Reply], outbox: Outbox) -> None:
        try:
            reply = await answer
        except Exception as exc:
            reply = Failed(str(exc))
        outbox.put(_encode(Envelope(rid, reply)))
