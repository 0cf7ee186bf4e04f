"""Gateway plugins through a real gateway socket in front of real upstream processes:
in-process hooks (add a header, answer directly, raise, overrun and get disabled, on_log), the
Node.js out-of-process example (tags requests; a hung plugin does not hang the request), and
reloads through the platform API without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from corral.api.server import Api
from corral.control import gateway_config
from corral.gateway.platform import PlatformGateway
from corral.gateway.plugins import LogRecord, PluginRequest
from corral.home import Home
from corral.store.sqlite import SQLiteStore
from corral.testing import until
from tests.gateway.conftest import Running, Upstreams

pytestmark = pytest.mark.timeout(30)
Factory = Callable[..., Awaitable[Running]]
HERE = "tests.gateway.test_plugins"
TAG_JS = Path(__file__).resolve().parents[2] / "examples" / "plugins" / "tag.js"

LOGGED: list[LogRecord] = []


def boom(request: PluginRequest, config: dict[str, Any]) -> None:
    """Raises on /boom paths only, so the same route shows isolation per request."""
    if request.path.startswith("/p/boom"):
        raise RuntimeError("plugin bug")


def slow(request: PluginRequest, config: dict[str, Any]) -> None:
    if request.path.startswith("/p/slow"):
        time.sleep(0.004)  # over a 1 ms budget, measured, never pre-empted
        request.set_header("X-Slow", "ran")


def collect(records: list[LogRecord], config: dict[str, Any]) -> None:
    LOGGED.extend(records)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def headers_of(echo: dict[str, Any]) -> dict[str, str]:
    return {k.lower(): v for k, v in echo["headers"]}


def route(name: str, prefix: str, upstream: str, *plugins: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "match": {"path_prefix": prefix},
        "upstreams": [upstream],
        "rewrite": {"path_prefix": "/echo"},
        "plugins": list(plugins),
    }


async def test_a_plugin_adds_a_request_header_the_upstream_sees_and_answers_deny_itself(
    gateway_factory: Factory, upstreams: Upstreams, session: aiohttp.ClientSession
) -> None:
    a = upstreams.address("a")
    gw = await gateway_factory(
        {
            "routes": [
                route(
                    "tagged",
                    "/t",
                    a,
                    {
                        "module": "examples.plugins.reference:add_header",
                        "config": {"name": "X-Hello", "value": "world"},
                    },
                ),
                route(
                    "keyed",
                    "/k",
                    a,
                    {"module": "examples.plugins.reference:ApiKey", "config": {"keys": ["s3"]}},
                ),
            ]
        }
    )
    async with session.get(f"{gw.url}/t/x", headers={"X-Hello": "client"}) as r:
        assert r.status == 200
        seen = headers_of(await r.json())
    assert seen["x-hello"] == "world"  # replaced, not duplicated
    async with session.get(f"{gw.url}/k/x") as r:
        assert r.status == 401
        assert "API key" in await r.text()
    async with session.get(f"{gw.url}/k/x", headers={"X-Api-Key": "s3"}) as r:
        assert r.status == 200
        assert r.headers["X-Auth"] == "api-key"  # on_response_headers
    assert [p for p in (await seen_paths(session, a)) if p.startswith("/echo/x")].count(
        "/echo/x"
    ) == 2  # the denied request never reached the upstream


async def seen_paths(session: aiohttp.ClientSession, address: str) -> list[str]:
    async with session.get(f"http://{address}/__seen") as response:
        return [entry[1] for entry in await response.json()]


async def test_a_plugin_that_raises_gets_that_request_a_500_and_the_route_keeps_serving(
    gateway_factory: Factory, upstreams: Upstreams, session: aiohttp.ClientSession
) -> None:
    a = upstreams.address("a")
    gw = await gateway_factory(
        {"routes": [route("buggy", "/p", a, {"module": f"{HERE}:boom"}), route("ok", "/o", a)]}
    )
    async with session.get(f"{gw.url}/p/boom") as r:
        assert r.status == 500
        assert "plugin" in await r.text()
    async with session.get(f"{gw.url}/p/fine") as r:
        assert r.status == 200
    async with session.get(f"{gw.url}/o/x") as r:
        assert r.status == 200
    assert gw.gw.metrics.policy_counts[("buggy", "plugin_error")] == 1


async def test_a_plugin_that_keeps_overrunning_its_budget_is_disabled_and_logs_are_batched(
    gateway_factory: Factory, upstreams: Upstreams, session: aiohttp.ClientSession
) -> None:
    LOGGED.clear()
    a = upstreams.address("a")
    gw = await gateway_factory(
        {
            "routes": [
                route(
                    "slowpoke",
                    "/p",
                    a,
                    {"module": f"{HERE}:slow", "budget": "1ms"},
                    {"module": f"{HERE}:collect", "phases": ["on_log"]},
                )
            ]
        }
    )
    tagged = []
    for _ in range(8):
        async with session.get(f"{gw.url}/p/slow") as r:
            assert r.status == 200  # overrunning slows the request; it never fails it
            tagged.append(headers_of(await r.json()).get("x-slow"))
    # More than 5 of the last 20 calls over budget: the 6th overrun disables the plugin.
    assert tagged == ["ran"] * 6 + [None] * 2
    assert gw.gw.metrics.policy_counts[("slowpoke", "plugin_disabled")] == 1
    # on_log runs from the sweep, in batches, off the request path.
    gw.gw.start()
    await until(lambda: len(LOGGED) >= 8)
    assert {r.status for r in LOGGED} == {200}
    assert all(r.route == "slowpoke" and r.path == "/p/slow" for r in LOGGED)
    # A reload re-imports the module and starts the budgets over: the plugin runs again.
    assert gw.gw.reload_plugins() == [HERE]
    async with session.get(f"{gw.url}/p/slow") as r:
        assert headers_of(await r.json()).get("x-slow") == "ran"


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed (the Node.js example needs it)")
async def test_the_node_plugin_tags_requests_and_a_hung_plugin_costs_only_its_timeout(
    gateway_factory: Factory, upstreams: Upstreams, session: aiohttp.ClientSession
) -> None:
    a = upstreams.address("a")
    gw = await gateway_factory(
        {
            "routes": [
                route("node", "/n", a, {"process": f"node {TAG_JS}", "timeout": "50ms"}),
                {
                    "name": "forbidden",
                    "match": {"path_prefix": "/forbidden"},
                    "upstreams": [a],
                    "plugins": [{"process": f"node {TAG_JS}", "timeout": "50ms"}],
                },
            ]
        }
    )
    process = next(iter(gw.gw.plugin_processes.values()))  # one process for both routes
    await until(lambda: process.connected, 10.0)
    async with session.post(f"{gw.url}/n/x", data=b"body bytes") as r:
        assert r.status == 200
        echo = await r.json()
    assert headers_of(echo)["x-tag"] == "node"
    assert echo["body"] == "body bytes"  # held while the plugin answered, then sent
    async with session.get(f"{gw.url}/forbidden/x") as r:
        assert r.status == 403
        assert await r.text() == "forbidden by tag.js\n"
    started = time.monotonic()
    async with session.get(f"{gw.url}/n/x", headers={"X-Hang": "1"}) as r:
        assert r.status == 200  # fail-open: the request went on without the plugin
        assert "x-tag" not in headers_of(await r.json())
    assert time.monotonic() - started < 1.0
    assert gw.gw.metrics.policy_counts[("node", "plugin_timeout")] == 1
    # A process that keeps overrunning is killed and restarted (with backoff).
    for _ in range(2):
        async with session.get(f"{gw.url}/n/x", headers={"X-Hang": "1"}) as r:
            assert r.status == 200
    assert process.restarts == 1
    await until(lambda: process.connected and process.starts == 2, 10.0)
    async with session.get(f"{gw.url}/n/x") as r:
        assert headers_of(await r.json())["x-tag"] == "node"


SLOW = {"module": "tests.gateway.test_plugins:slow", "budget": "1ms"}


@pytest.fixture
async def platform(
    tmp_path: Path, upstreams: Upstreams
) -> AsyncIterator[tuple[TestClient[Any, Any], dict[str, str], PlatformGateway]]:
    home = Home(tmp_path / "home")
    home.create()
    tokens = home.ensure_tokens()
    store = await SQLiteStore.open(home.store_path)
    client: TestClient[Any, Any] = TestClient(TestServer(Api(store, home, tokens).app()))
    await client.start_server()
    route = {
        "name": "p",
        "match": {"path_prefix": "/"},
        "upstreams": [upstreams.address("a")],
        "rewrite": {"path_prefix": "/echo"},
        "plugins": [SLOW],
    }
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
        yield client, {"Authorization": f"Bearer {tokens['admin']}"}, gateway
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        await gateway.close()
        await client.close()
        await store.close()


async def test_plugins_reload_through_the_admin_api_without_a_restart(
    platform: tuple[TestClient[Any, Any], dict[str, str], PlatformGateway], upstreams: Upstreams
) -> None:
    api, auth, pg = platform
    gw = pg.gateway
    assert gw is not None
    server = gw._servers[0]
    assert isinstance(server, asyncio.base_events.Server)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/p/slow"

    async def slow_ran() -> bool:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            echo = await r.json()
        return any(k.lower() == "x-slow" for k, _ in echo["headers"])

    assert [await slow_ran() for _ in range(7)] == [True] * 6 + [False]  # disabled
    reply = await api.post("/api/v1/gateway/plugins/reload", headers=auth)
    assert reply.status == 200, await reply.text()
    assert (await reply.json())["version"] >= 2
    await until(slow_ran)  # reloaded: it runs again, with a fresh budget
    # A route PUT replaces the plugin list, live.
    route = {
        "name": "p",
        "match": {"path_prefix": "/"},
        "upstreams": [upstreams.address("a")],
        "rewrite": {"path_prefix": "/echo"},
        "plugins": [
            {"module": "examples.plugins.reference:add_header", "config": {"name": "X-V2"}}
        ],
    }
    reply = await api.put("/api/v1/gateway/routes/p", json=route, headers=auth)
    assert reply.status == 200, await reply.text()

    async def v2() -> bool:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            echo = await r.json()
        return any(k.lower() == "x-v2" for k, _ in echo["headers"])

    await until(v2)
