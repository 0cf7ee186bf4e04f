"""The platform's own processes read the Store through ``RemoteStore``: against a cluster it
must fail over between nodes like the CLI's client. Here the nodes are small fake APIs in the
test's event loop, so a node can be made to die in the middle of a transaction's events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from corral.errors import Compacted
from corral.home import Home
from corral.store.remote import RemoteStore

# (revision, key): one transaction wrote b and c at revision 6
HISTORY = [(5, "a"), (6, "b"), (6, "c"), (7, "d"), (8, "e")]


def _kv(revision: int, key: str) -> dict[str, object]:
    return {"key": key, "value": key, "create_revision": revision, "mod_revision": revision,
            "version": 1}  # fmt: skip


class FakeNode:
    """One node's ``/store`` endpoints. ``die_after``: events sent before the connection is
    cut (and every later request answered 503, as by a node without quorum)."""

    def __init__(self, die_after: int | None = None, compacted: int = 0) -> None:
        self.die_after = die_after
        self.compacted = compacted
        self.dead = False
        self.watch_starts: list[int] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/store/watch", self.watch)
        app.router.add_get("/api/v1/store/range", self.range)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self.url

    def _unavailable(self) -> web.Response:
        body = {"code": "no_quorum", "message": "no quorum"}
        return web.json_response(body, status=503)

    async def watch(self, request: web.Request) -> web.StreamResponse:
        if self.dead:
            return self._unavailable()
        start = int(request.query["start_revision"])
        self.watch_starts.append(start)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": watching\n\n")
        if start < self.compacted:
            await response.write(f"event: compacted\ndata: {self.compacted}\n\n".encode())
            return response
        sent = 0
        for revision, key in HISTORY:
            if revision < start:
                continue
            if sent == self.die_after:
                self.dead = True
                assert request.transport is not None
                request.transport.close()  # the node is gone mid-stream
                return response
            change = {"type": "put", "kv": _kv(revision, key)}
            await response.write(f"data: {json.dumps(change)}\n\n".encode())
            sent += 1
        await response.write(b": caught up\n\n")
        return response

    async def range(self, request: web.Request) -> web.Response:
        if self.dead:
            return self._unavailable()
        kvs = [_kv(r, k) for r, k in HISTORY if k.startswith(request.query["prefix"])]
        return web.json_response({"kvs": kvs, "revision": 8, "more": False})

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., FakeNode]]:
    made: list[FakeNode] = []

    def make(**kwargs: int) -> FakeNode:
        node = FakeNode(**kwargs)
        made.append(node)
        return node

    yield make
    for node in made:
        await node.close()


async def _collect(store: RemoteStore, start: int, count: int) -> list[tuple[int, str]]:
    seen: list[tuple[int, str]] = []
    async for event in store.watch("", start):
        seen.append((event.kv.mod_revision, event.kv.key))
        if len(seen) == count:
            break
    return seen


async def test_a_watch_resumes_on_another_node_with_no_gap_and_no_duplicate(
    nodes: Callable[..., FakeNode], tmp_path: Path
) -> None:
    # the first node dies between the two events of revision 6
    first, second = nodes(die_after=2), nodes()
    home = Home(tmp_path)
    home.api_file.write_text(f"{await first.start()}\n{await second.start()}\n")
    store = RemoteStore.for_home(home)
    try:
        assert await _collect(store, 5, len(HISTORY)) == HISTORY
    finally:
        await store.close()
    assert second.watch_starts == [6]  # resumed from the last revision it delivered


async def test_a_watch_resumed_past_the_compaction_raises_compacted(
    nodes: Callable[..., FakeNode],
) -> None:
    first, second = nodes(die_after=1), nodes(compacted=7)
    store = RemoteStore([await first.start(), await second.start()], None)
    try:
        with pytest.raises(Compacted):
            await _collect(store, 5, len(HISTORY))
    finally:
        await store.close()


async def test_reads_skip_a_node_without_quorum_and_one_that_is_down(
    nodes: Callable[..., FakeNode], tmp_path: Path
) -> None:
    down, no_quorum, healthy = nodes(), nodes(), nodes()
    down_url = await down.start()
    await down.close()  # refuses connections from now on
    no_quorum.dead = True
    home = Home(tmp_path)
    urls = [down_url, await no_quorum.start(), await healthy.start()]
    home.api_file.write_text("".join(f"{url}\n" for url in urls))
    store = RemoteStore.for_home(home)
    try:
        kv = await store.get("d")
        assert kv is not None and kv.mod_revision == 7
        assert store.base_url == healthy.url  # and it stays with the node that answered
    finally:
        await store.close()
