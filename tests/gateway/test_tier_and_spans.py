"""A rate limit holds for the whole gateway across 2 standalone workers; edge spans reach a
real collector with the ids the gateway sent upstream; the access log is written."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from corral.telemetry.collector import Collector, CollectorConfig
from corral.telemetry.store import SqliteSpanStore
from tests.gateway.conftest import Running, Upstreams
from tests.gateway.test_serve import free_port

pytestmark = pytest.mark.timeout(40)

RATE, BURST, SECONDS = 40.0, 10, 4.0


@pytest.fixture
def tier_gateway(tmp_path: Path, upstreams: Upstreams) -> Iterator[int]:
    port = free_port()
    file = tmp_path / "gw.yaml"
    file.write_text(
        json.dumps(
            {
                "listen": f"127.0.0.1:{port}",
                "workers": 2,
                "policies": {
                    "rate_limits": {
                        "tier": {"rate": RATE, "burst": BURST, "key": "none", "scope": "global"}
                    }
                },
                "routes": [
                    {"name": "api", "upstreams": [upstreams.address("a")], "rate_limits": ["tier"]}
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.gateway.serve", "--config", str(file)],
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_a_tier_wide_limit_holds_across_two_workers_within_ten_percent(
    tier_gateway: int,
) -> None:
    port = tier_gateway
    # A fresh connection per request, so SO_REUSEPORT spreads them over both workers.
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.monotonic() + 10
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/echo") as response:
                    if response.status in (200, 429):
                        break
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.2)  # buckets refill after the probe
        admitted: list[int] = []
        peers: set[int] = set()
        stop = time.monotonic() + SECONDS

        async def client() -> None:
            while time.monotonic() < stop:
                async with session.get(f"http://127.0.0.1:{port}/echo") as response:
                    if response.status == 200:
                        admitted.append(1)
                        peers.add(int((await response.json())["peer_port"]))
                    else:
                        await response.read()

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(8)))
        elapsed = time.monotonic() - started
    allowed = RATE * elapsed + BURST
    assert len(peers) >= 2  # both workers served (each has its own upstream connections)
    # Real processes on a loaded machine get a coarse bound: without the tier exchange two
    # workers would admit about twice the limit. The exact ≤ 10 % is asserted in the
    # simulator (tests/sim/test_traffic_sim.py), where timing is deterministic.
    assert len(admitted) <= 1.25 * allowed, (len(admitted), allowed)
    assert len(admitted) >= 0.6 * RATE * elapsed, (len(admitted), allowed)


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[Collector]:
    store = SqliteSpanStore(tmp_path / "spans.db")
    tokens = {"read": "r", "ingest": "i", "admin": "a"}
    c = Collector(store, tokens=lambda: tokens, config=CollectorConfig(link_window_s=0.5))
    await c.start("127.0.0.1", 0)
    try:
        yield c
    finally:
        await c.stop()


def fetch_json(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


async def test_edge_spans_reach_the_collector_as_server_and_client_spans_with_parent_ids(
    gateway_factory: Callable[..., Awaitable[Running]],
    upstreams: Upstreams,
    collector: Collector,
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "access.log"
    gw = await gateway_factory(
        {
            "telemetry": {"zipkin": f"{collector.url}/api/v2/spans", "service_name": "edge"},
            "access_log": str(log_file),
            "routes": [{"name": "main", "upstreams": [upstreams.address("a")]}],
        }
    )
    trace, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{gw.url}/echo/orders", headers={"traceparent": f"00-{trace}-{caller}-01"}
        ) as response,
    ):
        echoed = dict((await response.json())["headers"])
    sent = echoed["traceparent"]
    assert sent.startswith(f"00-{trace}-")
    try_id = sent.split("-")[2]
    deadline = time.monotonic() + 10
    spans: list[dict[str, Any]] = []
    while len(spans) < 2:
        assert time.monotonic() < deadline, spans
        await asyncio.sleep(0.1)
        spans = await asyncio.to_thread(fetch_json, f"{collector.url}/api/v2/trace/{trace}") or []
    by_kind = {s["kind"]: s for s in spans}
    server, client = by_kind["SERVER"], by_kind["CLIENT"]
    assert server["parentId"] == caller  # the caller's span is the edge span's parent
    assert client["id"] == try_id  # the id sent upstream is the try's CLIENT span
    assert client["parentId"] == server["id"]
    assert server["localEndpoint"]["serviceName"] == "edge"
    assert server["tags"]["http.status_code"] == "200"
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert lines[0]["path"] == "/echo/orders" and lines[0]["trace_id"] == trace
    assert lines[0]["status"] == 200 and lines[0]["upstream"] == upstreams.address("a")
