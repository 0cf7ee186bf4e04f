"""A real upstream for gateway tests, run as its own process: ``python upstream.py NAME``.

It binds 127.0.0.1:0 and prints ``PORT <n>`` on stdout. Endpoints:

    /echo...           200, JSON {name, method, path, query, headers, body}
    /status/<n>        answers status n
    /slow?s=<secs>     answers after a delay
    /stream?n=&gap=    chunked body of n lines, one every gap seconds
    /sse?n=&gap=       text/event-stream events, one every gap seconds
    /ws                WebSocket echo
    /truncate          promises 1000 bytes, sends 10, then drops the connection
    /health            200, or 503 after POST /sick (POST /well restores it)
    /__seen            JSON list of the requests /echo served: [method, path, mirror?, body]
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import WSMsgType, web


def make_app(name: str) -> web.Application:
    state = {"sick": False}
    seen: list[list[str]] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        mirror = request.headers.get("X-Corral-Mirror", "")
        seen.append([request.method, request.path_qs, mirror, body.decode("latin-1")])
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return web.json_response(
            {
                "name": name,
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": body.decode("latin-1"),
                "peer_port": peer[1] if peer else 0,
            }
        )

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"{name} {code}")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))
        return web.Response(text=f"{name} slow")

    async def stream(request: web.Request) -> web.StreamResponse:
        n, gap = int(request.query.get("n", "3")), float(request.query.get("gap", "0.1"))
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(n):
            await response.write(f"line {i}\n".encode())
            await asyncio.sleep(gap)
        await response.write_eof()
        return response

    async def sse(request: web.Request) -> web.StreamResponse:
        n, gap = int(request.query.get("n", "3")), float(request.query.get("gap", "0.1"))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for i in range(n):
            await response.write(f"data: event {i}\n\n".encode())
            await asyncio.sleep(gap)
        await response.write_eof()
        return response

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for message in sock:
            if message.type == WSMsgType.TEXT:
                await sock.send_str(f"{name}: {message.data}")
        return sock

    async def truncate(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"0123456789")
        assert request.transport is not None
        request.transport.abort()
        return response

    async def health(request: web.Request) -> web.Response:
        return web.Response(status=503 if state["sick"] else 200, text="health")

    async def sick(request: web.Request) -> web.Response:
        state["sick"] = True
        return web.Response(text="sick")

    async def well(request: web.Request) -> web.Response:
        state["sick"] = False
        return web.Response(text="well")

    async def seen_list(request: web.Request) -> web.Response:
        return web.json_response(seen)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/__seen", seen_list)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stream", stream)
    app.router.add_get("/sse", sse)
    app.router.add_get("/ws", ws)
    app.router.add_get("/truncate", truncate)
    app.router.add_get("/health", health)
    app.router.add_post("/sick", sick)
    app.router.add_post("/well", well)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def main(name: str) -> None:
    runner = web.AppRunner(make_app(name), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "up"))
