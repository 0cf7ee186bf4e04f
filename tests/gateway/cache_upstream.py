"""A cacheable upstream for gateway tests, run as its own process: ``python cache_upstream.py``.

It binds 127.0.0.1:0 and prints ``PORT <n>``. ``GET /item`` answers ``fetch <n>`` (n counts
the requests it served) with ``Cache-Control: max-age=1, stale-if-error=30``, or a 500 while
failing; ``POST /fail`` and ``POST /heal`` switch that. ``GET /swr?delay=S`` answers
``swr <n>`` after S seconds with ``Cache-Control: max-age=0, stale-while-revalidate=30`` and
``Vary: Accept-Language`` (its body then ends with the language asked for).
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


def make_app() -> web.Application:
    state = {"fetches": 0, "failing": False, "swr": 0}

    async def swr(request: web.Request) -> web.Response:
        state["swr"] += 1
        number = state["swr"]
        await asyncio.sleep(float(request.query.get("delay", "0")))
        language = request.headers.get("Accept-Language", "")
        return web.Response(
            text=f"swr {number} {language}".strip(),
            headers={
                "Cache-Control": "max-age=0, stale-while-revalidate=30",
                "Vary": "Accept-Language",
            },
        )

    async def item(request: web.Request) -> web.Response:
        if state["failing"]:
            return web.Response(status=500, text="broken")
        state["fetches"] += 1
        return web.Response(
            text=f"fetch {state['fetches']}",
            headers={"Cache-Control": "max-age=1, stale-if-error=30"},
        )

    async def fail(request: web.Request) -> web.Response:
        state["failing"] = True
        return web.Response(text="failing")

    async def heal(request: web.Request) -> web.Response:
        state["failing"] = False
        return web.Response(text="healed")

    app = web.Application()
    app.router.add_get("/item", item)
    app.router.add_get("/swr", swr)
    app.router.add_post("/fail", fail)
    app.router.add_post("/heal", heal)
    return app


async def main() -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.base_events.Server)
    sys.stdout.write(f"PORT {server.sockets[0].getsockname()[1]}\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
