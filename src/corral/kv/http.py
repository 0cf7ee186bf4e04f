"""The HTTP API of an AP-store node, and ``serve`` to run a node until a signal.

    GET    /kv/{bucket}/{key}[?r=N]   200 value | 300 siblings (JSON) | 404;  X-Kv-Context
    PUT    /kv/{bucket}/{key}[?w=N]   body = value; send X-Kv-Context from your last read
    DELETE /kv/{bucket}/{key}[?w=N]   a tombstone, ordered like any write
    GET    /health                    200 while the node serves
    GET    /kv-admin/status           ring, members, quorum, hints pending, counters

As in Riak, a write answers with what the coordinator now holds: 204 and the new context when
one value remains, 300 with every sibling when concurrent writes left several (the client has
then seen them all, and its next write with that context collapses them). Errors are
``{code, message, hint}`` with the error's status (503 ``no_quorum`` when R or W replicas do
not answer in time).

Why not aiohttp: a put's own work (a version, a few replica frames) costs less CPU than
aiohttp's request and response objects, routing and middleware, so the node speaks HTTP/1.1
itself — an ``asyncio.Protocol`` over httptools' parser (the C parser aiohttp uses too).
Requests on one connection are answered in order, one at a time (HTTP/1.1 pipelining);
keep-alive follows the request; request bodies may be chunked (the parser de-chunks them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import signal
import time
from collections import deque
from collections.abc import Awaitable
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

import httptools

from corral.consensus.transport import split_address
from corral.errors import CorralError, NotFound, UserError
from corral.kv.coordinator import InvalidQuorum
from corral.kv.node import Counters, KvNode, NodeConfig
from corral.kv.versions import Versioned, context_of
from corral.kv.wire import CONTEXT_HEADER, SIBLINGS_TYPE, decode_context, encode_context

MAX_BODY = 16 << 20
_CONTEXT = CONTEXT_HEADER.lower().encode()
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_JSON = "application/json"


class Response:
    __slots__ = ("body", "content_type", "context", "status")

    def __init__(
        self, status: int, body: bytes = b"", content_type: str = "", context: str = ""
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.context = context

    def encode(self, keep_alive: bool) -> bytes:
        head = [b"HTTP/1.1 %d %s\r\n" % (self.status, _REASONS.get(self.status, b"Unknown"))]
        if self.status != 204:  # RFC 9110 §8.6: a 204 carries no Content-Length
            head.append(b"Content-Length: %d\r\n" % len(self.body))
        if self.content_type:
            head.append(b"Content-Type: %s\r\n" % self.content_type.encode())
        if self.context:
            head.append(b"X-Kv-Context: %s\r\n" % self.context.encode())
        if not keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        head.append(self.body)
        return b"".join(head)


def _json(status: int, body: Any, context: str = "", content_type: str = _JSON) -> Response:
    return Response(status, json.dumps(body).encode(), content_type, context)


def _error(exc: CorralError) -> Response:
    return _json(exc.status, exc.to_dict())


def _override(query: dict[str, str], name: str, default: int, n: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= n:
        raise InvalidQuorum(
            f"kv: ?{name}={raw} must be an integer between 1 and n ({n})",
            f"drop ?{name}= to use the store's default ({default})",
        )
    return value


def answer(obj: Versioned, write: bool) -> Response:
    context = encode_context(context_of(obj)) if not obj.empty else ""
    values = obj.values
    if len(values) > 1:
        body = {"siblings": [base64.b64encode(v).decode() for v in values]}
        return _json(300, body, context, SIBLINGS_TYPE)
    if write:
        return Response(204, context=context)
    if not values:
        error = {"code": "not_found", "message": "no value for this key", "hint": ""}
        return _json(404, error, context)
    return Response(200, values[0], "application/octet-stream", context)


class Request:
    __slots__ = ("body", "context", "keep_alive", "method", "url")

    def __init__(self) -> None:
        self.url = b""
        self.method = b""
        self.context: str | None = None
        self.body: list[bytes] = []
        self.keep_alive = True


def route(node: KvNode, req: Request) -> Response | Awaitable[Response]:
    """The response, or an awaitable of it for the calls that wait for replicas."""
    url = httptools.parse_url(req.url)
    path: bytes = url.path
    method = req.method
    if path.startswith(b"/kv/"):
        bucket, _, rest = path[4:].partition(b"/")
        if not bucket or not rest:
            raise UserError("kv: bucket and key must not be empty", "use /kv/BUCKET/KEY")
        key = f"{unquote(bucket.decode())}/{unquote(rest.decode())}"
        query = dict(parse_qsl(url.query.decode())) if url.query else {}
        q = node.quorum
        if method == b"GET":
            return _read(node, key, _override(query, "r", q.r, q.n))
        if method in (b"PUT", b"POST", b"DELETE"):
            w = _override(query, "w", q.w, q.n)
            value = None if method == b"DELETE" else b"".join(req.body)
            return _write(node, key, value, decode_context(req.context), w)
        return _json(405, {"code": "method_not_allowed", "message": f"{method.decode()} "
                           f"is not a kv method", "hint": "use GET, PUT or DELETE"})  # fmt: skip
    if path == b"/health" and method == b"GET":
        return _json(200, {"status": "ok", "name": node.name})
    if path == b"/kv-admin/status" and method == b"GET":
        return _json(200, node.status())
    raise NotFound(
        f"kv node {node.name}: no route {method.decode()} {path.decode(errors='replace')}",
        "the API is /kv/BUCKET/KEY, /health and /kv-admin/status",
    )


async def _read(node: KvNode, key: str, r: int) -> Response:
    return answer(await node.get(key, r), write=False)


async def _write(node: KvNode, key: str, value: bytes | None, context: Any, w: int) -> Response:
    return answer(await node.put(key, value, context, w), write=True)


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse, answer in order, keep alive if the client wants."""

    def __init__(self, node: KvNode) -> None:
        self.node = node
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.request = Request()
        self.size = 0
        self.queue: deque[Request] = deque()
        self.busy: asyncio.Task[None] | None = None
        self.failed = False  # answered with an error and closing: nothing more is routed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.queue.clear()

    def data_received(self, data: bytes) -> None:
        if self.failed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}")

    def _fail(self, status: int, message: str) -> None:
        # The rest of this request (and any pipelined after it) must never reach the store: a
        # body cut at the limit would be stored truncated after the client was told 413.
        self.failed = True
        self.queue.clear()
        if self.transport is not None:
            body = {"code": "bad_request", "message": message, "hint": "speak HTTP/1.1"}
            self.transport.write(_json(status, body).encode(keep_alive=False))
            self.transport.close()
            self.transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.request = Request()
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.request.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == _CONTEXT:
            self.request.context = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if self.failed:
            return
        self.size += len(body)
        if self.size > MAX_BODY:
            self._fail(413, f"request body over {MAX_BODY} bytes")
            return
        self.request.body.append(body)

    def on_message_complete(self) -> None:
        if self.failed:
            return
        req = self.request
        req.method = self.parser.get_method()
        req.keep_alive = self.parser.should_keep_alive()
        self.queue.append(req)
        if self.busy is None:
            self._next()

    # answering
    def _next(self) -> None:
        while self.queue and self.transport is not None:
            req = self.queue.popleft()
            try:
                result = route(self.node, req)
            except CorralError as exc:
                result = _error(exc)
            if isinstance(result, Response):
                self._send(result, req.keep_alive)
                continue
            task = asyncio.get_running_loop().create_task(self._finish(result, req.keep_alive))
            self.busy = task
            return

    async def _finish(self, pending: Awaitable[Response], keep_alive: bool) -> None:
        try:
            result = await pending
        except CorralError as exc:
            result = _error(exc)
        except Exception as exc:  # a bug in one request must not take the connection down
            result = _error(CorralError(f"kv node {self.node.name}: internal error: {exc!r}"))
        self.busy = None
        self._send(result, keep_alive)
        self._next()

    def _send(self, response: Response, keep_alive: bool) -> None:
        if self.transport is None:
            return
        self.transport.write(response.encode(keep_alive))
        if not keep_alive:
            self.transport.close()
            self.transport = None


class GcPolicy:
    """A node process's collector policy: freeze what survives each full collection.

    A node mirrors its whole data set in memory as long-lived, acyclic objects (``storage``),
    so a full collection re-walks every stored object: ≈ 200 ms with 60k keys on these
    machines, a pause every write in flight on the node waits out — and with a replica down
    every write needs both survivors, so any node's pause is in the write tail. Freezing the
    survivors right after a full collection (nothing unreachable is left at that moment) makes
    the next one walk only what was allocated since. Frozen objects are still freed by
    reference counting; only a frozen object that later dies *in a cycle* waits, and every
    ``unfreeze_every`` seconds the frozen set is handed back so the next full collection
    reclaims those — one long pause per interval instead of one per few seconds of writes.
    """

    def __init__(self, counters: Counters, unfreeze_every: float = 600.0) -> None:
        self.counters = counters
        self.unfreeze_every = unfreeze_every
        self._started = 0.0
        self._unfrozen_at = time.monotonic()

    def install(self) -> None:
        gc.callbacks.append(self._observe)

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._observe)

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause_ms = (time.perf_counter() - self._started) * 1000
        if pause_ms > self.counters.gc_pause_max_ms:
            self.counters.gc_pause_max_ms = pause_ms
        if info["generation"] != 2:
            return
        self.counters.gc_full += 1
        now = time.monotonic()
        if now - self._unfrozen_at >= self.unfreeze_every:
            self._unfrozen_at = now
            gc.unfreeze()
        else:
            gc.freeze()


async def serve(config: NodeConfig, ready: asyncio.Event | None = None) -> None:
    """Run one node until SIGTERM/SIGINT: HTTP on ``config.http``, peers on ``config.peer``."""
    node = KvNode(config)
    await node.start()
    gc_policy = GcPolicy(node.counters)
    gc_policy.install()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server: asyncio.Server | None = None
    try:
        host, port = split_address(config.http)
        server = await loop.create_server(
            lambda: HttpProtocol(node), host, port, reuse_address=True
        )
        print(
            f"kv node {config.name} serving http://{config.http} peer {config.peer} "
            f"(n={node.quorum.n} r={node.quorum.r} w={node.quorum.w})",
            flush=True,
        )
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        if server is not None:
            server.close()
        gc_policy.remove()
        await node.stop()
