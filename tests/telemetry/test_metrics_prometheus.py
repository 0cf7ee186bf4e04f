"""Debian's `prometheus` scrapes a real gateway's /metrics (Prometheus text) and the collector's
(OpenMetrics, which Prometheus asks for first); PromQL's histogram_quantile over the gateway's
latency histogram gives a p95 inside the upstream's known latency."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from corral.telemetry.collector import Collector
from corral.telemetry.store import SqliteSpanStore
from corral.telemetry.tsdb import TimeSeriesDB

pytestmark = [
    pytest.mark.timeout(40),
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed"),
]

UPSTREAM_DELAY_S = 0.03  # every answer takes at least this long
P95 = (
    "histogram_quantile(0.95, sum by (le) ("
    'rate(corral_gateway_request_duration_seconds_bucket{route="main"}[5s])))'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {seconds} s")
            await asyncio.sleep(0.1)


@contextlib.contextmanager
def running(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(UPSTREAM_DELAY_S)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[Collector]:
    c = Collector(SqliteSpanStore(tmp_path / "spans.db"), tsdb=TimeSeriesDB(tmp_path / "m.db"))
    await c.start("127.0.0.1", 0)
    assert c.keeper is not None
    labels = {"service": "orders", "instance": "orders-0", "release": "1", "node": "local"}
    push = {
        "at": time.time(),
        "samples": [{"name": "corral_instance_threads", "labels": labels, "value": 4}],
    }
    c.keeper.ingest(json.dumps(push).encode(), time.time())
    try:
        yield c
    finally:
        await c.stop()


def promql(base: str, query: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=5) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def test_prometheus_histogram_quantile_over_the_gateway_gives_the_upstreams_p95(
    tmp_path: Path, upstream: str, collector: Collector
) -> None:
    port, admin, prom = free_port(), free_port(), free_port()
    gw = tmp_path / "gw.json"
    gw.write_text(
        json.dumps(
            {
                "listen": f"127.0.0.1:{port}",
                "workers": 1,
                "admin": {"listen": f"127.0.0.1:{admin}"},
                "routes": [{"name": "main", "upstreams": [upstream]}],
            }
        )
    )
    collector_target = collector.url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: gateway, static_configs: [{{targets: ['127.0.0.1:{admin}']}}]}}\n"
        # honor_labels: the collector's `instance` is the Corral instance, not the target
        f"  - {{job_name: collector, honor_labels: true,"
        f" static_configs: [{{targets: ['{collector_target}']}}]}}\n"
    )
    base = f"http://127.0.0.1:{prom}"
    with (
        running([sys.executable, "-m", "corral.gateway.serve", "--config", str(gw)]),
        running(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'prom'}",
                f"--web.listen-address=127.0.0.1:{prom}",
            ]
        ),
    ):
        await wait_for(f"http://127.0.0.1:{port}/", 10)
        await wait_for(f"{base}/-/ready", 10)
        stop = asyncio.Event()

        async def client(session: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                async with session.get(f"http://127.0.0.1:{port}/orders") as answer:
                    assert answer.status == 200
                    await answer.read()

        async with aiohttp.ClientSession() as session:
            traffic = [asyncio.create_task(client(session)) for _ in range(4)]
            try:
                deadline = time.monotonic() + 15
                p95: float | None = None
                while time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    result = await asyncio.to_thread(promql, base, P95)
                    if result and result[0]["value"][1] not in ("NaN", "+Inf"):
                        p95 = float(result[0]["value"][1])
                        break
            finally:
                stop.set()
                await asyncio.gather(*traffic, return_exceptions=True)
        assert p95 is not None, "prometheus never had two scrapes of the histogram"
        # Every answer waits 30 ms upstream, so the p95 is in (0.025, 0.05] unless the machine
        # is loaded; never below the upstream's own latency bucket, never absurd.
        assert 0.025 <= p95 <= 0.25, p95
        print(f"p95 from PromQL: {p95 * 1000:.1f} ms")
        up = await asyncio.to_thread(promql, base, "up")
        assert {r["metric"]["job"]: r["value"][1] for r in up} == {
            "gateway": "1",
            "collector": "1",  # our OpenMetrics text, parsed by Prometheus itself
        }
        threads = await asyncio.to_thread(promql, base, "corral_instance_threads")
        assert [(t["metric"]["instance"], t["value"][1]) for t in threads] == [("orders-0", "4")]
