"""Request validation and traffic mirroring through a real gateway socket, in front of real
upstream processes."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from corral.testing import until
from tests.gateway.conftest import Running, Upstreams

pytestmark = pytest.mark.timeout(30)
Factory = Callable[..., Awaitable[Running]]

ORDER = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["qty"],
                "properties": {"qty": {"type": "integer", "minimum": 1}},
            },
        }
    },
}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def seen(session: aiohttp.ClientSession, address: str) -> list[list[str]]:
    async with session.get(f"http://{address}/__seen") as response:
        return list(await response.json())


async def test_invalid_requests_get_400_with_the_failing_path_and_never_reach_the_upstream(
    gateway_factory: Factory, upstreams: Upstreams, session: aiohttp.ClientSession
) -> None:
    gw = await gateway_factory(
        {
            "routes": [
                {
                    "name": "orders",
                    "match": {"path_prefix": "/orders"},
                    "upstreams": [upstreams.address("a")],
                    "validation": {
                        "body": ORDER,
                        "headers": ["X-Api-Key"],
                        "content_types": ["application/json"],
                        "max_body_bytes": 200,
                    },
                }
            ]
        }
    )
    url = f"{gw.url}/orders/new"
    key = {"X-Api-Key": "k", "Content-Type": "application/json"}
    before = len(await seen(session, upstreams.address("a")))

    async def post(body: bytes, headers: dict[str, str], chunked: bool = False) -> tuple[int, str]:
        data: Any = body
        if chunked:

            async def parts() -> AsyncIterator[bytes]:
                yield body[:5]
                yield body[5:]

            data = parts()
        async with session.post(url, data=data, headers=headers) as response:
            return response.status, await response.text()

    assert await post(b'{"items":[{"qty":0}]}', key) == (400, "$.items[0].qty: must be ≥ 1\n")
    assert await post(b'{"items":[{"qty":0}]}', key, chunked=True) == (
        400,
        "$.items[0].qty: must be ≥ 1\n",
    )
    assert (await post(b'{"items":[{"qty":1}]}', {"Content-Type": "application/json"}))[0] == 400
    assert (await post(b'{"items":[{"qty":1}]}', {**key, "Content-Type": "text/plain"}))[0] == 415
    big = json.dumps({"items": [{"qty": 1}] * 30}).encode()
    assert (await post(big, key))[0] == 413
    assert (await post(big, key, chunked=True))[0] == 413
    assert len(await seen(session, upstreams.address("a"))) == before  # none went upstream
    good = b'{"items":[{"qty":2}]}'
    for chunked in (False, True):
        status, text = await post(good, key, chunked=chunked)
        assert status == 200, text
        assert json.loads(text)["body"] == good.decode()  # the body went upstream whole
    # Keep-alive survives a refusal: the same connection serves the next request.
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as one:
        for body in (b'{"items":[]}', good, b"{}", good):
            async with one.post(url, data=body, headers=key) as response:
                await response.read()
                assert response.status == (200 if body == good else 400)
    assert gw.gw.metrics.policy_counts[("orders", "invalid")] >= 8


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A listener that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def test_mirror_copies_requests_and_a_dead_shadow_never_slows_the_real_request(
    gateway_factory: Factory,
    upstreams: Upstreams,
    session: aiohttp.ClientSession,
    black_hole: str,
) -> None:
    gw = await gateway_factory(
        {
            "routes": [
                {
                    "name": "shadowed",
                    "match": {"path_prefix": "/m"},
                    "upstreams": [upstreams.address("a")],
                    "mirror": {"upstreams": [upstreams.address("b")], "percent": 100},
                },
                {
                    "name": "hole",
                    "match": {"path_prefix": "/h"},
                    "upstreams": [upstreams.address("a")],
                    "mirror": {"upstreams": [black_hole], "timeout": "300ms"},
                },
                {
                    "name": "half",
                    "match": {"path_prefix": "/p"},
                    "upstreams": [upstreams.address("a")],
                    "mirror": {"upstreams": [upstreams.address("b")], "percent": 50},
                },
            ]
        }
    )
    b = upstreams.address("b")
    async with session.post(f"{gw.url}/m/1?x=1", data=b"payload") as response:
        assert response.status == 200
        assert (await response.json())["name"] == "a"  # the client sees the real answer

    async def copied() -> list[list[str]]:
        return [s for s in await seen(session, b) if s[1] == "/m/1?x=1"]

    copy = (await until(copied))[0]
    assert copy == ["POST", "/m/1?x=1", "1", "payload"]  # method, path, body; marked
    # A shadow that never answers: the real request is not held up by it.
    started = time.monotonic()
    for _ in range(5):
        async with session.get(f"{gw.url}/h") as response:
            assert response.status == 200
    assert time.monotonic() - started < 0.25 * 5
    counts = gw.gw.metrics.policy_counts

    async def failed() -> bool:
        return counts.get(("hole", "mirror_failed"), 0) == 5

    await until(failed)  # each copy timed out on its own
    for i in range(200):
        async with session.get(f"{gw.url}/p/{i}") as response:
            assert response.status == 200

    async def settled() -> int:
        return counts.get(("half", "mirrored"), 0)

    await until(settled)

    async def quiet() -> bool:
        return gw.gw.mirrors.get("half", 0) == 0

    await until(quiet)  # every copy answered
    share = counts[("half", "mirrored")] / 200
    assert 0.35 <= share <= 0.65, share
