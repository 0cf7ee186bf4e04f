"""A RemoteStore watch across a cluster's nodes, against fake nodes: "from now" means one
revision on every node, and nodes that keep ending the watch at once end in an error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from corral.errors import PlatformUnavailable
from corral.store.remote import RemoteStore

NOW = 10  # the cluster's revision when the watch is taken


class FakeNode:
    """Answers ``/store/range`` at revision NOW; a watch either ends at once or sends ``events``."""

    def __init__(self, events: list[dict[str, Any]] | None = None) -> None:
        self.events = events
        self.asked: list[int] = []  # the start_revision of every watch it got

    async def range(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"revision": NOW, "more": False, "kvs": []})

    async def watch(self, request: web.Request) -> web.StreamResponse:
        self.asked.append(int(request.query["start_revision"]))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": watching\n\n")
        if self.events is None:
            return response  # accepted, then ended at once
        for change in self.events:
            await response.write(f"data: {json.dumps(change)}\n\n".encode())
        await asyncio.sleep(30)  # stays open; the test ends first
        return response


@asynccontextmanager
async def serving(*nodes: FakeNode) -> AsyncIterator[list[str]]:
    runners = []
    urls = []
    for node in nodes:
        app = web.Application()
        app.router.add_get("/api/v1/store/range", node.range)
        app.router.add_get("/api/v1/store/watch", node.watch)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        yield urls
    finally:
        for runner in runners:
            await runner.cleanup()


def _change(key: str, revision: int) -> dict[str, Any]:
    kv = {"key": key, "value": "v", "create_revision": revision, "mod_revision": revision}
    return {"type": "put", "kv": kv | {"version": 1}}


async def test_a_watch_from_now_fails_over_from_the_same_revision() -> None:
    ending, serving_node = FakeNode(), FakeNode([_change("/corral/services/web", NOW + 1)])
    async with serving(ending, serving_node) as urls:
        store = RemoteStore(urls, None)
        try:
            events = store.watch("/corral/services/", 0)
            event = await asyncio.wait_for(anext(events), 10)
            await events.aclose()  # type: ignore[attr-defined]  # an async generator
        finally:
            await store.close()
    assert event.kv.mod_revision == NOW + 1
    assert ending.asked == serving_node.asked == [NOW + 1]


async def test_nodes_that_keep_ending_the_watch_at_once_make_it_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from corral.store import remote

    monkeypatch.setattr(remote, "RETRY_PAUSE", 0.001)
    node = FakeNode()
    async with serving(node) as urls:
        store = RemoteStore(urls, None)
        try:
            with pytest.raises(PlatformUnavailable) as caught:
                await asyncio.wait_for(anext(store.watch("/corral/services/", 5)), 20)
        finally:
            await store.close()
    assert "in a row ended at once" in caught.value.message
    assert len(node.asked) == remote.MAX_EMPTY_WATCHES
