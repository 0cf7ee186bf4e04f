"""Adaptive concurrency (``adaptive_concurrency`` on a route): a gradient limit on the requests
in flight to the route's upstream, with a real upstream process over real sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from corral.errors import ManifestError
from corral.gateway.config import validate_gateway_data
from corral.testing import until
from tests.gateway.conftest import Running, Upstreams

pytestmark = pytest.mark.timeout(30)

Factory = Callable[..., Awaitable[Running]]


def _route(upstream: str, adaptive: object) -> dict[str, Any]:
    return {
        "routes": [
            {
                "name": "api",
                "match": {"path_prefix": "/"},
                "upstreams": [upstream],
                "adaptive_concurrency": adaptive,
            }
        ]
    }


async def test_requests_over_the_adaptive_limit_get_503_with_retry_after_and_the_rest_pass(
    gateway_factory: Factory, upstreams: Upstreams
) -> None:
    settings = {"initial": 3, "min_limit": 2, "max_limit": 3, "retry_after": 2}
    gw = await gateway_factory(_route(upstreams.address("a"), settings))
    slot = gw.gw.adaptive["static:api"]

    async def one(session: aiohttp.ClientSession) -> tuple[int, str]:
        async with session.get(f"{gw.url}/slow?s=0.4") as response:
            await response.read()
            return response.status, response.headers.get("Retry-After", "")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        held = [asyncio.create_task(one(session)) for _ in range(3)]
        await until(lambda: slot.in_flight == 3)
        refused = await asyncio.gather(*(one(session) for _ in range(4)))
        passed = await asyncio.gather(*held)
        assert passed == [(200, "")] * 3
        assert refused == [(503, "2")] * 4
        assert slot.in_flight == 0  # every finished request left the limit
        status, _ = await one(session)  # room again once they finished
        assert status == 200
    counts = gw.gw.metrics.policy_counts
    assert counts[("api", "adaptive_shed")] == 4


async def test_responses_feed_the_limit_and_a_client_that_leaves_frees_its_place(
    gateway_factory: Factory, upstreams: Upstreams
) -> None:
    gw = await gateway_factory(_route(upstreams.address("a"), {"window": "20ms", "min_samples": 2}))
    slot = gw.gw.adaptive["static:api"]
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 5
        while slot.limit.updates == 0 and time.monotonic() < deadline:
            async with session.get(f"{gw.url}/echo") as response:
                assert response.status == 200
                await response.read()
    assert slot.limit.updates > 0  # windows of sampled latencies updated the limit
    assert slot.limit.rtt_noload < 1.0

    _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    writer.write(b"GET /slow?s=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await until(lambda: slot.in_flight == 1)
    writer.close()
    await until(lambda: slot.in_flight == 0)


def test_adaptive_concurrency_is_true_or_settings_and_bad_bounds_are_refused() -> None:
    config = validate_gateway_data(_route("127.0.0.1:9", True), mode="standalone")
    assert config.routes[0].adaptive_settings() is not None
    off = validate_gateway_data(_route("127.0.0.1:9", False), mode="standalone")
    assert off.routes[0].adaptive_settings() is None
    with pytest.raises(ManifestError) as error:
        validate_gateway_data(
            _route("127.0.0.1:9", {"initial": 2, "min_limit": 5}), mode="standalone"
        )
    assert "routes[0].adaptive_concurrency" in str(error.value)
    assert "min_limit 5 ≤ initial 2" in str(error.value)
