"""No input crashes a worker: random and mutated requests through the request path.

The connection is driven in memory (a fake transport, no sockets), as h11's tests do, so
hypothesis can try thousands of inputs in a second. The route has no endpoints, so a request
that parses is answered 503; anything else gets a 4xx. An internal error would answer 500.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from random import Random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.gateway.config import validate_gateway_data
from corral.gateway.proxy import Gateway
from corral.gateway.router import compile_routes


class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "wrote after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    loop = asyncio.new_event_loop()
    data = {
        "routes": [{"name": "s", "service": "shop"}],
        "limits": {"max_header_bytes": 2048, "max_body_bytes": 4096},
    }
    config = validate_gateway_data(data, mode="platform")

    async def make() -> Gateway:
        return Gateway(compile_routes(config), config.limits, rng=Random(1))

    gw = loop.run_until_complete(make())
    yield gw
    loop.close()


def drive(gw: Gateway, chunks: list[bytes]) -> bytes:
    conn = gw.protocol()
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    for chunk in chunks:
        if transport.closed:
            break
        conn.data_received(chunk)
    conn.connection_lost(None)
    out = bytes(transport.out)
    assert b" 500 " not in out, out
    for line in out.split(b"\r\n"):
        if line.startswith(b"HTTP/"):
            assert line[:9] == b"HTTP/1.1 " and line[9:12] in (
                b"400",
                b"404",
                b"405",
                b"408",
                b"413",
                b"431",
                b"503",
            ), line
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *[c % (len(data) + 1) for c in cuts]})
    return [data[a:b] for a, b in itertools.pairwise(points)]


token = st.text("abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789", min_size=1, max_size=12)
header_value = st.binary(max_size=40)
names = (
    st.sampled_from(
        [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Upgrade",
            "traceparent",
            "X-B3-TraceId",
            "b3",
            "X-Forwarded-For",
            "X-Request-Id",
            "Expect",
            "Cookie",
        ]
    )
    | token
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=5))
def test_arbitrary_bytes_never_crash_the_request_path(
    gateway: Gateway, data: bytes, cuts: list[int]
) -> None:
    drive(gateway, split(data, cuts))


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "CONNECT", "OPTIONS", "G@T"]),
    target=st.sampled_from(["/", "/a?b=c", "*", "http://x/y", "/%00", "//"])
    | st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 "]),
    headers=st.lists(st.tuples(names, header_value), max_size=8),
    body=st.binary(max_size=300),
    pipelined=st.integers(1, 3),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_mutated_requests_get_a_4xx_or_503_never_a_crash(
    gateway: Gateway,
    method: str,
    target: str,
    version: str,
    headers: list[tuple[str, bytes]],
    body: bytes,
    pipelined: int,
    cuts: list[int],
) -> None:
    head = f"{method} {target} {version}\r\n".encode("latin-1")
    head += b"".join(n.encode() + b": " + v + b"\r\n" for n, v in headers)
    one = head + b"\r\n" + body
    drive(gateway, split(one * pipelined, cuts))


def test_a_valid_request_reaches_routing_and_is_answered_503(gateway: Gateway) -> None:
    out = drive(gateway, [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /again HTTP/1.1\r\n\r\n"])
    assert out.count(b"HTTP/1.1 503") == 2
