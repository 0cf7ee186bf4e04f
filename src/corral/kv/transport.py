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
  ``ReplicaUnavailable`` for every call waiting on it; after a failed connect the peer is
  skipped for a short backoff (20 ms doubling to 1 s) rather than retried per request.
- **Serving.** Each inbound connection is read by one task; a handler answers synchronously
  (local reads and writes) or returns an awaitable (a forwarded coordination), run as a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable

import msgspec

from corral import clock
from corral.consensus.transport import frame, read_frame, split_address
from corral.kv.wire import (
    AeObjects,
    Done,
    Envelope,
    Failed,
    Found,
    Hello,
    ReplicaUnavailable,
    Reply,
    Request,
    Written,
)

log = logging.getLogger(__name__)

_REPLIES = (Done, Found, Written, AeObjects, Failed)
Handler = Callable[[str, Request], Reply | Awaitable[Reply]]

_encode = msgspec.msgpack.Encoder().encode
_hello_decoder = msgspec.msgpack.Decoder(Hello)
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)


class _Conn:
    def __init__(self, rpc: Rpc, peer: str, address: str) -> None:
        self.rpc = rpc
        self.peer = peer
        self.address = address
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task[None] | None = None
        self.waiting: dict[int, asyncio.Future[Reply]] = {}
        self.connecting: asyncio.Future[None] | None = None
        self.backoff = 0.02
        self.retry_at = 0.0

    async def ensure(self) -> asyncio.StreamWriter:
        if self.writer is not None:
            return self.writer
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

    def _connected(self) -> asyncio.StreamWriter:
        # the connection may have closed while this caller waited for it
        if self.writer is None:
            raise ReplicaUnavailable(f"kv node {self.peer} ({self.address}) closed the connection")
        return self.writer

    async def _connect(self) -> None:
        host, port = split_address(self.address)
        try:
            async with asyncio.timeout(1.0):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            self.retry_at = clock.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, 1.0)
            raise ReplicaUnavailable(
                f"kv node {self.peer} ({self.address}) is unreachable: {exc}"
            ) from None
        self.backoff = 0.02
        writer.write(frame(_encode(Hello(self.rpc.cluster, self.rpc.name, self.peer))))
        self.writer = writer
        self.reader_task = asyncio.get_running_loop().create_task(self._read(reader, writer))

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                env = _envelope_decoder.decode(await read_frame(reader))
                fut = self.waiting.pop(env.id, None)
                if fut is not None and not fut.done():
                    fut.set_result(env.body)  # type: ignore[arg-type]  # replies only here
        except (OSError, asyncio.IncompleteReadError, ValueError, msgspec.DecodeError):
            pass
        finally:
            self.drop(writer)

    def drop(self, writer: asyncio.StreamWriter | None = None) -> None:
        if writer is not None and writer is not self.writer:
            return
        if self.writer is not None:
            self.writer.transport.abort()
        self.writer = None
        waiting, self.waiting = self.waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(
                    ReplicaUnavailable(f"kv node {self.peer} ({self.address}) went away")
                )


class Rpc:
    """Calls other nodes and serves their calls, as node ``name`` listening on ``address``."""

    def __init__(self, name: str, address: str, handler: Handler, cluster: str = "kv") -> None:
        self.name = name
        self.address = address
        self.cluster = cluster
        self.handler = handler
        self._conns: dict[str, _Conn] = {}
        self._ids = 0
        self._server: asyncio.Server | None = None
        self._inbound: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        host, port = split_address(self.address)
        self._server = await asyncio.start_server(self._accept, host, port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in self._conns.values():
            conn.drop()
            if conn.reader_task is not None:
                conn.reader_task.cancel()
        for writer in list(self._inbound):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()

    async def call(self, peer: str, address: str, body: Request, timeout: float) -> Reply:
        """Send ``body`` to ``peer`` and wait for its reply; ``ReplicaUnavailable`` if none."""
        conn = self._conns.get(peer)
        if conn is None or conn.address != address:
            if conn is not None:
                conn.drop()
            conn = self._conns[peer] = _Conn(self, peer, address)
        writer = await conn.ensure()
        self._ids += 1
        rid = self._ids
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        conn.waiting[rid] = fut
        try:
            writer.write(frame(_encode(Envelope(rid, body))))
        except (OSError, RuntimeError):
            conn.drop(writer)
        try:
            async with asyncio.timeout(timeout):
                reply = await fut
        except TimeoutError:
            conn.waiting.pop(rid, None)
            raise ReplicaUnavailable(
                f"kv node {peer} ({address}) did not answer within {timeout:.2f} s"
            ) from None
        if isinstance(reply, Failed):
            raise ReplicaUnavailable(f"kv node {peer} failed the request: {reply.error}")
        return reply

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._inbound.add(writer)
        try:
            async with asyncio.timeout(5.0):
                hello = _hello_decoder.decode(await read_frame(reader))
            if hello.cluster != self.cluster or hello.to != self.name:
                log.warning(
                    "kv node %s refused a connection from %s of cluster %r (meant for %s)",
                    self.name,
                    hello.frm,
                    hello.cluster,
                    hello.to,
                )
                return
            while True:
                env = _envelope_decoder.decode(await read_frame(reader))
                self._serve(hello.frm, env, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except (ValueError, msgspec.DecodeError) as exc:
            log.warning("kv node %s: bad frame from a peer, connection closed: %s", self.name, exc)
        finally:
            self._inbound.discard(writer)
            writer.transport.abort()

    def _serve(self, frm: str, env: Envelope, writer: asyncio.StreamWriter) -> None:
        body = env.body
        if isinstance(body, _REPLIES):
            self._reply(env.id, Failed(f"{type(body).__name__} is a reply, not a request"), writer)
            return
        try:
            answer = self.handler(frm, body)
        except Exception as exc:  # a handler bug must not kill the connection
            log.exception("kv node %s: request from %s failed", self.name, frm)
            answer = Failed(str(exc))
        if inspect.isawaitable(answer):
            task = asyncio.get_running_loop().create_task(self._finish(env.id, answer, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._reply(env.id, answer, writer)

    async def _finish(
        self, rid: int, answer: Awaitable[Reply], writer: asyncio.StreamWriter
    ) -> None:
        try:
            reply = await answer
        except Exception as exc:
            reply = Failed(str(exc))
        self._reply(rid, reply, writer)

    def _reply(self, rid: int, reply: Reply, writer: asyncio.StreamWriter) -> None:
        if writer.transport.is_closing():
            return
        try:
            writer.write(frame(_encode(Envelope(rid, reply))))
        except (OSError, RuntimeError):
            writer.transport.abort()
