"""The shortcuts of the request hot path keep what a client and an upstream see unchanged."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.gateway.conftest import Running, Upstreams
from tests.gateway.test_proxy import raw, route

pytestmark = pytest.mark.timeout(30)

Answer = Callable[[bytes], list[bytes]]


@pytest.fixture
async def canned() -> AsyncIterator[Callable[[Answer], Any]]:
    """An in-process upstream that answers each request head with the byte pieces ``answer``
    returns, written one by one with a pause between, so a response can arrive split."""
    servers: list[asyncio.AbstractServer] = []

    async def make(answer: Answer) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    for i, piece in enumerate(answer(head)):
                        if i:
                            await writer.drain()
                            await asyncio.sleep(0.05)
                        writer.write(piece)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return f"127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield make
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_a_request_pipelined_after_a_body_is_routed_by_its_own_path(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(route([upstreams.address("a")]))
    out = await raw(
        gw.port,
        b"POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert re.findall(rb'"path": "(/\w+)"', out) == [b"/first", b"/second", b"/third"]
    assert b'"body": "hello"' in out


async def test_a_client_request_id_reaches_the_upstream_with_its_case(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(route([upstreams.address("a")]))
    out = await raw(
        gw.port,
        b"GET /echo HTTP/1.1\r\nHost: Shop.Example\r\nX-Request-Id: AbC-123\r\n"
        b"Connection: close\r\n\r\n",
    )
    echo = json.loads(out.split(b"\r\n\r\n", 1)[1])
    headers = {k.lower(): v for k, v in echo["headers"]}
    assert headers["x-request-id"] == "AbC-123"
    assert headers["x-forwarded-host"] == "shop.example"  # lower-cased, as nginx's $host


async def test_upstream_keep_alive_reaches_an_open_client_and_close_a_closing_one(
    canned: Any, gateway_factory: Any
) -> None:
    address = await canned(
        lambda head: [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"]
    )
    gw: Running = await gateway_factory(route([address]))
    kept = await raw(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", until_close=False)
    assert kept.endswith(b"\r\n\r\nok")
    assert kept.lower().count(b"connection:") == 1 and b"close" not in kept.lower()
    closed = await raw(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert closed.endswith(b"\r\n\r\nok")
    assert b"keep-alive" not in closed.lower() and b"Connection: close\r\n" in closed


async def test_upstream_hop_by_hop_lines_are_cut_from_the_response(
    canned: Any, gateway_factory: Any
) -> None:
    address = await canned(
        lambda head: [
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n"
            b"Content-Length: 2\r\n\r\nok"
        ]
    )
    gw: Running = await gateway_factory(route([address]))
    out = await raw(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", until_close=False)
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"\r\n\r\nok")
    assert b"keep-alive" not in out.lower() and b"x-hop" not in out.lower()


async def test_a_response_split_across_reads_arrives_whole_and_the_connection_is_reused(
    canned: Any, gateway_factory: Any
) -> None:
    address = await canned(
        lambda head: [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"01234", b"56789"]
    )
    gw: Running = await gateway_factory(route([address]))
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        for _ in range(2):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
                body = await reader.readexactly(10)
            assert head.startswith(b"HTTP/1.1 200") and body == b"0123456789"
    finally:
        writer.close()
