"""The HTTP API of an AP-store node (aiohttp), and ``serve`` to run a node until a signal.

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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
from typing import Any

from aiohttp import web

from corral.consensus.transport import split_address
from corral.errors import CorralError, UserError
from corral.kv.coordinator import InvalidQuorum
from corral.kv.node import KvNode, NodeConfig
from corral.kv.versions import Versioned, context_of
from corral.kv.wire import CONTEXT_HEADER, SIBLINGS_TYPE, decode_context, encode_context

NODE: web.AppKey[KvNode] = web.AppKey("kv_node", KvNode)


def _key(request: web.Request) -> str:
    bucket, key = request.match_info["bucket"], request.match_info["key"]
    if not bucket or not key:
        raise UserError("kv: bucket and key must not be empty", "use /kv/BUCKET/KEY")
    return f"{bucket}/{key}"


def _override(request: web.Request, name: str, default: int, n: int) -> int:
    raw = request.query.get(name)
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


def _answer(obj: Versioned, write: bool) -> web.Response:
    headers = {CONTEXT_HEADER: encode_context(context_of(obj))} if not obj.empty else {}
    values = obj.values
    if len(values) > 1:
        body = {"siblings": [base64.b64encode(v).decode() for v in values]}
        return web.json_response(body, status=300, headers=headers, content_type=SIBLINGS_TYPE)
    if write:
        return web.Response(status=204, headers=headers)
    if not values:
        error = {"code": "not_found", "message": "no value for this key", "hint": ""}
        return web.json_response(error, status=404, headers=headers)
    return web.Response(body=values[0], headers=headers, content_type="application/octet-stream")


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except CorralError as exc:
        return web.json_response(exc.to_dict(), status=exc.status)


async def _get(request: web.Request) -> web.Response:
    node = request.app[NODE]
    q = node.quorum
    obj = await node.get(_key(request), _override(request, "r", q.r, q.n))
    return _answer(obj, write=False)


async def _write(request: web.Request, value: bytes | None) -> web.Response:
    node = request.app[NODE]
    q = node.quorum
    w = _override(request, "w", q.w, q.n)
    context = decode_context(request.headers.get(CONTEXT_HEADER))
    obj = await node.put(_key(request), value, context, w)
    return _answer(obj, write=True)


async def _put(request: web.Request) -> web.Response:
    return await _write(request, await request.read())


async def _delete(request: web.Request) -> web.Response:
    return await _write(request, None)


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "name": request.app[NODE].name})


async def _status(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE].status())


def make_app(node: KvNode) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=16 << 20)
    app[NODE] = node
    path = "/kv/{bucket}/{key:.+}"
    app.router.add_get(path, _get)
    app.router.add_put(path, _put)
    app.router.add_post(path, _put)
    app.router.add_delete(path, _delete)
    app.router.add_get("/health", _health)
    app.router.add_get("/kv-admin/status", _status)
    return app


async def serve(config: NodeConfig, ready: asyncio.Event | None = None) -> None:
    """Run one node until SIGTERM/SIGINT: HTTP on ``config.http``, peers on ``config.peer``."""
    node = KvNode(config)
    await node.start()
    runner = web.AppRunner(make_app(node), access_log=None, handle_signals=False)
    await runner.setup()
    host, port = split_address(config.http)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await site.start()
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
        await runner.cleanup()
        await node.stop()
