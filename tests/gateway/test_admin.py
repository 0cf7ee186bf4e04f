"""Admin switches and actions end to end: the platform API (in process, on a real SQLite
Store) edits the live config or records an action; a platform-mode gateway following that
Store applies it, in front of a real upstream process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from corral import model
from corral.api.server import Api
from corral.control import gateway_config
from corral.gateway.platform import PlatformGateway
from corral.home import Home
from corral.store.sqlite import SQLiteStore
from corral.testing import until

pytestmark = pytest.mark.timeout(30)


class Ctx:
    def __init__(
        self, api: TestClient[Any, Any], token: str, gateway: PlatformGateway, store: SQLiteStore
    ) -> None:
        self.api = api
        self.auth = {"Authorization": f"Bearer {token}"}
        self.platform = gateway
        self.store = store

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        response = await self.api.post(f"/api/v1{path}", json=body, headers=self.auth)
        assert response.status == 200, await response.text()
        return await response.json()

    @property
    def url(self) -> str:
        assert self.platform.gateway is not None
        server = self.platform.gateway._servers[0]
        assert isinstance(server, asyncio.base_events.Server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    async def events(self) -> list[str]:
        listing = await self.store.range(model.EVENTS)
        return [model.decode(kv.value, model.Event).reason for kv in listing.kvs]


@pytest.fixture
async def ctx(tmp_path: Path, cache_upstream: str) -> AsyncIterator[Ctx]:
    home = Home(tmp_path / "home")
    home.create()
    tokens = home.ensure_tokens()
    store = await SQLiteStore.open(home.store_path)
    client: TestClient[Any, Any] = TestClient(TestServer(Api(store, home, tokens).app()))
    await client.start_server()
    route = {
        "name": "items",
        "upstreams": [cache_upstream],
        "retries": {"attempts": 0},
        "outlier": {"consecutive_5xx": 1000},
        "cache": {"ttl": "60s"},
        "breaker": {"min_calls": 2, "error_rate": 50, "open_time": "60s"},
        "fallback": {"status": 200, "body": "planned maintenance"},
    }
    # As `corral apply` would write it; port 0: the gateway binds a free port.
    config = gateway_config.validate({"listen": "127.0.0.1:0", "routes": [route]}, set())
    compares, ops, _ = await gateway_config.change_ops(
        store, config, source="manifest", home=home.path
    )
    assert (await store.txn(compares, ops)).succeeded
    gateway = PlatformGateway(home, store)
    follower: asyncio.Task[None] | None = None
    try:
        await gateway.start()
        follower = asyncio.create_task(gateway.follow())
        yield Ctx(client, tokens["admin"], gateway, store)
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        await gateway.close()
        await client.close()
        await store.close()


async def get(url: str) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, dict(response.headers), await response.text()


async def test_switches_turn_a_route_off_force_its_fallback_and_turn_features_off_each_recorded(
    ctx: Ctx,
) -> None:
    url = f"{ctx.url}/item"
    first = (await get(url))[2]
    assert (await get(url))[1]["X-Cache"] == "HIT"
    result = await ctx.post("/gateway/routes/items/switch", {"enabled": False})
    version = result["version"]

    async def off() -> bool:
        return (await get(url))[0] == 503

    await until(off)
    assert "turned off" in (await get(url))[2]
    await ctx.post("/gateway/routes/items/switch", {"enabled": True, "force_fallback": True})

    async def degraded() -> bool:
        return (await get(url))[2] == "planned maintenance"

    await until(degraded)
    await ctx.post("/gateway/routes/items/switch", {"force_fallback": False, "disable": ["cache"]})

    async def uncached() -> bool:
        status, headers, body = await get(url)
        return status == 200 and "X-Cache" not in headers and body != first

    await until(uncached)
    result = await ctx.post("/gateway/routes/items/switch", {"enable": ["cache"]})
    assert result["version"] == version + 3  # every switch is a config version
    events = await ctx.events()
    for words in ("turned off", "fallback forced", "cache off", "cache on"):
        assert any(words in e for e in events), (words, events)
    bad = await ctx.api.post(
        "/api/v1/gateway/routes/items/switch", json={"disable": ["cahce"]}, headers=ctx.auth
    )
    assert bad.status == 400 and "features" in (await bad.json())["hint"]


async def test_purge_and_breaker_reset_reach_the_running_gateway(
    ctx: Ctx, cache_upstream: str
) -> None:
    url = f"{ctx.url}/item"
    cached = (await get(url))[2]
    assert (await get(url))[2] == cached
    await ctx.post("/gateway/cache/purge", {"route": "items"})

    async def refetched() -> bool:
        return (await get(url))[2] != cached

    await until(refetched)
    assert any("cache purge of route items" in e for e in await ctx.events())
    # Open the breaker: the upstream fails, and uncached paths go upstream.
    async with aiohttp.ClientSession() as session:
        await session.post(f"http://{cache_upstream}/fail")
        try:
            for i in range(4):
                await get(f"{ctx.url}/item?n={i}")
            gateway = ctx.platform.gateway
            assert gateway is not None and gateway.policies is not None
            breakers = gateway.policies.breakers
            assert [b.state for b in breakers.values()] == ["open"]
            assert (await get(f"{ctx.url}/item?n=9"))[2] == "planned maintenance"
        finally:
            await session.post(f"http://{cache_upstream}/heal")
    await ctx.post("/gateway/routes/items/breaker/reset", {})

    async def closed() -> bool:
        return [b.state for b in breakers.values()] == ["closed"]

    await until(closed)
    assert (await get(f"{ctx.url}/item?n=10"))[2].startswith("fetch")
    missing = await ctx.api.post("/api/v1/gateway/routes/nope/breaker/reset", headers=ctx.auth)
    assert missing.status == 404
