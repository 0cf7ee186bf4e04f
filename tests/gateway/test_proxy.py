"""The data plane against real upstream processes over real sockets."""

from __future__ import annotations

import asyncio
import io
import re
import shutil
import socket
from typing import Any

import aiohttp
import pytest

from corral.gateway.config import validate_gateway_data
from corral.gateway.healthcheck import HealthChecker
from corral.gateway.router import compile_routes
from tests.gateway.conftest import Running, Upstreams

pytestmark = pytest.mark.timeout(30)


def route(upstreams: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "routes": [{"name": "main", "match": {"path_prefix": "/"}, "upstreams": upstreams, **extra}]
    }


async def raw(port: int, data: bytes, *, until_close: bool = True, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        async with asyncio.timeout(timeout):
            return await reader.read(-1) if until_close else await reader.read(65536)
    finally:
        writer.close()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_requests_reach_the_upstream_with_forwarded_and_trace_headers(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(route([upstreams.address("a")]))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{gw.url}/echo?x=1",
            headers={
                "Connection": "keep-alive, X-Secret",
                "Keep-Alive": "timeout=5",
                "X-Forwarded-For": "10.1.1.1",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            },
        ) as response,
    ):
        assert response.status == 200
        echo = await response.json()
    headers = {k.lower(): v for k, v in echo["headers"]}
    assert echo["path"] == "/echo" and echo["query"] == "x=1"
    assert headers["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert "keep-alive" not in headers
    assert re.fullmatch(
        r"00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-01", headers["traceparent"]
    )
    assert headers["traceparent"] != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert headers["x-request-id"] == "0af7651916cd43dd8448eb211c80319c"


async def test_a_b3_trace_id_is_continued_as_traceparent(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(route([upstreams.address("a")]))
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{gw.url}/echo", headers={"X-B3-TraceId": "463ac35c9f6413ad", "X-Request-Id": "mine"}
        ) as response,
    ):
        echo = await response.json()
    headers = {k.lower(): v for k, v in echo["headers"]}
    assert headers["traceparent"].startswith("00-0000000000000000463ac35c9f6413ad-")
    assert headers["x-request-id"] == "mine"


async def test_keep_alive_reuses_one_pooled_upstream_connection(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(route([upstreams.address("a")]))
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        ports = set()
        for _ in range(20):
            async with session.get(f"{gw.url}/echo") as response:
                ports.add((await response.json())["peer_port"])
    assert len(ports) == 1


async def test_pipelined_requests_are_answered_in_order(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(route([upstreams.address("a")]))
    reqs = b"".join(
        b"GET /p%d HTTP/1.1\r\nHost: x\r\n%s\r\n" % (i, b"Connection: close\r\n" if i == 2 else b"")
        for i in range(3)
    )
    out = await raw(gw.port, reqs)
    paths = re.findall(rb'"path": "(/p\d)"', out)
    assert paths == [b"/p0", b"/p1", b"/p2"]
    assert out.count(b"HTTP/1.1 200") == 3


async def test_server_sent_events_flow_as_they_are_sent(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(route([upstreams.address("a")]))
    loop = asyncio.get_running_loop()
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gw.url}/sse?n=3&gap=0.4") as response,
    ):
        assert response.headers["Content-Type"].startswith("text/event-stream")
        start = loop.time()
        first = await response.content.readuntil(b"\n\n")
        first_at = loop.time() - start
        rest = await response.read()
    assert first == b"data: event 0\n\n"
    assert first_at < 0.3  # not held back until the stream ends (~0.8 s later)
    assert rest == b"data: event 1\n\ndata: event 2\n\n"


async def test_chunked_and_large_request_bodies_stream_through(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(route([upstreams.address("a")]))

    async def chunks() -> Any:
        for i in range(5):
            yield b"part%d;" % i

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.url}/echo", data=chunks()) as response:
            assert (await response.json())["body"] == "part0;part1;part2;part3;part4;"
        big = b"x" * (3 * 1024 * 1024)
        async with session.put(f"{gw.url}/echo", data=io.BytesIO(big)) as response:
            assert len((await response.json())["body"]) == len(big)


async def test_websocket_upgrade_passes_through(upstreams: Upstreams, gateway_factory: Any) -> None:
    gw: Running = await gateway_factory(route([upstreams.address("a")]))
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{gw.url}/ws") as ws:
        await ws.send_str("hello")
        assert await ws.receive_str() == "a: hello"
        await ws.send_str("again")
        assert await ws.receive_str() == "a: again"


async def test_malformed_oversized_and_too_large_requests_get_4xx(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    limits = {"max_header_bytes": 2048, "max_body_bytes": 1000}
    gw: Running = await gateway_factory({**route([upstreams.address("a")]), "limits": limits})
    assert (await raw(gw.port, b"GARBAGE\r\n\r\n")).startswith(b"HTTP/1.1 400")
    assert (await raw(gw.port, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")).startswith(b"HTTP/1.1 400")
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * 3000 + b"\r\n\r\n"
    assert (await raw(gw.port, big)).startswith(b"HTTP/1.1 431")
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    assert (await raw(gw.port, post)).startswith(b"HTTP/1.1 413")
    smuggle = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert (await raw(gw.port, smuggle)).startswith(b"HTTP/1.1 400")


async def test_a_client_sending_headers_too_slowly_gets_408(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    limits = {"header_timeout": 0.3}
    gw: Running = await gateway_factory({**route([upstreams.address("a")]), "limits": limits})
    out = await raw(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\n", timeout=3)
    assert out.startswith(b"HTTP/1.1 408")


async def test_a_route_without_endpoints_answers_503_with_a_reason(gateway_factory: Any) -> None:
    data = {"routes": [{"name": "shop", "service": "shop"}]}
    gw: Running = await gateway_factory(data, mode="platform")
    out = await raw(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 503") and b"no endpoints for route shop" in out


async def test_platform_endpoints_set_by_the_caller_receive_traffic(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory({"routes": [{"name": "s", "service": "shop"}]}, "platform")
    gw.gw.set_endpoints("shop", [(upstreams.address("b"), 1)])
    async with aiohttp.ClientSession() as session, session.get(f"{gw.url}/echo") as response:
        assert (await response.json())["name"] == "b"


async def test_an_upstream_dying_mid_response_closes_the_client_connection(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(route([upstreams.address("a")]))
    out = await raw(gw.port, b"GET /truncate HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"0123456789")  # then EOF


async def test_connect_failures_are_retried_on_another_endpoint(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    dead = f"127.0.0.1:{dead_port()}"
    gw: Running = await gateway_factory(
        route([dead, upstreams.address("a")], lb={"policy": "round_robin"})
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(6):
            async with session.get(f"{gw.url}/echo") as response:
                assert response.status == 200
    assert gw.gw.metrics.routes["main"].retries >= 1


async def test_a_failing_endpoint_is_ejected_and_traffic_moves_away(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    dead = f"127.0.0.1:{dead_port()}"
    gw: Running = await gateway_factory(
        route(
            [dead, upstreams.address("a")],
            lb={"policy": "round_robin"},
            retries={"attempts": 0},
            outlier={"consecutive_connect_failures": 2},
        )
    )
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(12):
            async with session.post(f"{gw.url}/echo", data=b"x") as response:
                statuses.append(response.status)
    assert statuses.count(502) == 2  # two strikes, then ejected
    assert statuses[-6:] == [200] * 6
    assert gw.gw.metrics.upstreams[dead].ejections == 1


async def test_non_idempotent_requests_are_not_retried(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(route([f"127.0.0.1:{dead_port()}"]))
    out = await raw(
        gw.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert out.startswith(b"HTTP/1.1 502")
    assert gw.gw.metrics.routes["main"].retries == 0


async def test_the_connection_cap_refuses_new_connections_but_keeps_old_ones(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(
        {**route([upstreams.address("a")]), "limits": {"max_connections": 2}}
    )
    held = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(2)]
    await asyncio.sleep(0.05)
    refused = await raw(gw.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 503")
    for reader, writer in held:
        writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()


async def test_active_checks_take_a_sick_endpoint_out_of_routing(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    data = route(
        [upstreams.address("a"), upstreams.address("b")],
        health_check={
            "path": "/health",
            "interval": 0.05,
            "unhealthy_threshold": 1,
            "healthy_threshold": 1,
        },
    )
    gw: Running = await gateway_factory(data)
    checker = HealthChecker(gw.gw.set_unhealthy)
    checker.update(compile_routes(validate_gateway_data(data)))
    async with aiohttp.ClientSession() as session:
        await session.post(f"http://{upstreams.address('b')}/sick")
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while loop.time() < deadline and not checker.unhealthy():
                await asyncio.sleep(0.02)
            names = set()
            for _ in range(10):
                async with session.get(f"{gw.url}/echo") as response:
                    names.add((await response.json())["name"])
            assert names == {"a"}
        finally:
            await session.post(f"http://{upstreams.address('b')}/well")
            await checker.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_gets_answers_over_one_kept_alive_connection(
    upstreams: Upstreams, gateway_factory: Any
) -> None:
    gw: Running = await gateway_factory(route([upstreams.address("a")]))
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sv",
        f"{gw.url}/echo/1",
        f"{gw.url}/echo/2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0
    assert re.findall(rb'"path": "(/echo/\d)"', out) == [b"/echo/1", b"/echo/2"]
    assert b"Re-using existing connection" in err
