"""Host metrics: the collector samples its node, keeps 10 s points for a day and minute
averages for a week (bounded whatever the uptime), and shows them at /metrics in Prometheus
text and at /telemetry/hosts."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral import clock
from corral.telemetry.collector import Collector, CollectorConfig
from corral.telemetry.hostmetrics import (
    FIELDS,
    Counters,
    HostSample,
    HostSeries,
    SeriesRetention,
    rates,
)
from corral.telemetry.store import SqliteSpanStore

T0 = 1_699_999_980  # on a minute boundary


def sample(ts: int, cpu: float) -> HostSample:
    return HostSample(ts, cpu, 100, 1000, 10, 100, 1.0, 2.0, 3.0, 4.0)


def test_series_keeps_fine_points_then_minute_averages_within_their_retention(
    tmp_path: Path,
) -> None:
    retention = SeriesRetention(interval_s=10, fine_keep_s=120, coarse_s=60, coarse_keep_s=600)
    series = HostSeries(tmp_path / "metrics.db", retention)
    try:
        for i in range(20 * 6):  # 20 minutes of samples, cpu = the sample's second in its minute
            series.add("node-a", sample(T0 + 10 * i, (i % 6) / 10))
        now = T0 + 10 * 119
        assert series.rows("fine") <= 120 // 10 + 1
        assert series.rows("coarse") <= 600 // 60 + 1
        resolution, rows = series.points("node-a", now - 60, now + 1, now)
        assert resolution == 10 and [r[0] for r in rows] == list(range(now - 60, now + 1, 10))
        resolution, rows = series.points("node-a", now - 600, now + 1, now)
        assert resolution == 60 and len(rows) == 10
        assert all(r[1] == pytest.approx(0.25) for r in rows)  # the average of 0, .1 … .5
        assert series.hosts() == ["node-a"]
    finally:
        series.close()


def test_rates_come_from_counter_deltas_and_never_go_negative() -> None:
    assert rates(None, Counters(5, 5, 5, 5), 10) == (0.0,) * 4
    assert rates(Counters(0, 10, 100, 0), Counters(100, 10, 50, 30), 10) == (10.0, 0, 0, 3.0)


def test_instance_hosts_survive_a_restart(tmp_path: Path) -> None:
    series = HostSeries(tmp_path / "metrics.db")
    series.save_instance_hosts([("orders-0", "node-a"), ("orders-1", "node-b")], T0)
    series.close()
    again = HostSeries(tmp_path / "metrics.db")
    try:
        assert again.instance_hosts() == {"orders-0": "node-a", "orders-1": "node-b"}
    finally:
        again.close()


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[Collector]:
    c = Collector(
        SqliteSpanStore(tmp_path / "spans.db"),
        tokens=lambda: {"read": "r"},
        config=CollectorConfig(),
        series=HostSeries(tmp_path / "metrics.db"),
        disk_path=tmp_path,
    )
    await c.start("127.0.0.1", 0)
    try:
        yield c
    finally:
        await c.stop()


def _get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Authorization": "Bearer r"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()
        return body


async def _hosts(c: Collector) -> Any:
    return json.loads(await asyncio.to_thread(_get, c.url + "/telemetry/hosts?minutes=5"))


async def test_the_collector_samples_its_node_and_serves_it(collector: Collector) -> None:
    deadline = clock.monotonic() + 5
    answer = await _hosts(collector)
    while not answer["points"]:  # the first sample is taken as the collector starts
        assert clock.monotonic() < deadline, "no host sample within 5 s"
        await asyncio.sleep(0.05)
        answer = await _hosts(collector)
    assert answer["host"] == collector.host and answer["resolution_s"] == 10
    assert answer["fields"] == ["ts", *FIELDS]
    point = dict(zip(answer["fields"], answer["points"][-1], strict=True))
    assert 0 <= point["cpu_ratio"] <= 1 and 0 < point["mem_used"] <= point["mem_total"]
    assert 0 < point["disk_used"] <= point["disk_total"]
    await asyncio.to_thread(collector.sample_host)  # a second sample: the counters moved on
    text = (await asyncio.to_thread(_get, collector.url + "/metrics")).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    memory = families["corral_host_memory_total_bytes"].samples[0]
    assert memory.labels == {"host": collector.host} and memory.value == point["mem_total"]
    assert families["corral_host_network_receive_bytes"].type == "counter"
    assert "corral_telemetry_spans_received" in families  # the ingest counters are still there
