"""Per-instance process metrics: the agent's sampler reads a real process (from its cgroup
when it has one, /proc otherwise), pushes to the collector, and they show at the collector's
/metrics with service, instance, release and node labels and in /telemetry/metrics."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.agent.metrics_loop import ProcessMetricsLoop
from corral.agent.procmetrics import Identity, read_instance
from corral.home import Home
from corral.runtime import cgroups
from corral.runtime.driver import ShimState, start_ticks
from corral.telemetry.collector import Collector
from corral.telemetry.store import SqliteSpanStore
from corral.telemetry.tsdb import TimeSeriesDB

# Three threads, a few extra open files, 20 MB of touched memory; prints once ready.
APP = """
import threading, time, sys
keep = [open(sys.executable, "rb") for _ in range(5)]
blob = bytearray(20 * 1024 * 1024)
for i in range(0, len(blob), 4096):
    blob[i] = 1
for _ in range(2):
    threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("ready", flush=True)
time.sleep(60)
"""


def _spawn(procs_files: list[str] | None = None) -> subprocess.Popen[str]:
    def enter() -> None:
        if procs_files:
            cgroups.join(procs_files)

    proc = subprocess.Popen(
        [sys.executable, "-c", APP], stdout=subprocess.PIPE, text=True, preexec_fn=enter
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _shim(directory: Path, pid: int, dirs: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = ShimState(
        shim_pid=pid,
        app_pid=pid,
        incarnation=1,
        started_at=0.0,
        shim_start_ticks=start_ticks(pid) or 0,
        app_start_ticks=start_ticks(pid) or 0,
        cgroups=dirs,
        cpu_enforced=False,
        memory_enforced=False,
        limits="",
    )
    (directory / "shim.json").write_bytes(msgspec.json.encode(state))


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Path]:
    proc = _spawn()
    try:
        _shim(tmp_path / "instances" / "orders-0", proc.pid, [])
        yield tmp_path / "instances" / "orders-0"
    finally:
        proc.kill()
        proc.wait()


def test_an_instance_without_a_cgroup_is_read_from_proc(app: Path) -> None:
    reading = read_instance(app)
    assert reading is not None
    assert (reading.cpu_source, reading.memory_source) == ("proc", "proc")
    assert reading.threads >= 3
    assert reading.open_fds >= 5 + 3  # its five files and stdio
    assert reading.rss_bytes > 20 * 1024 * 1024
    assert reading.cpu_seconds > 0


def test_an_instance_in_a_cgroup_is_read_from_it(tmp_path: Path) -> None:
    try:
        group = cgroups.create(f"corral-metrics-test-{tmp_path.name[-12:]}", None, None)
    except (cgroups.CgroupUnavailable, OSError) as exc:
        pytest.skip(f"no usable cgroup here: {exc}")
    proc = _spawn(group.procs_files())
    try:
        _shim(tmp_path / "i", proc.pid, [str(d) for d in group.dirs])
        reading = read_instance(tmp_path / "i")
        assert reading is not None
        if reading.memory_source != "cgroup":
            pytest.skip("this cgroup exposes no memory accounting")
        assert reading.processes == 1 and reading.threads >= 3
        assert reading.cpu_seconds > 0
        assert reading.rss_bytes > 20 * 1024 * 1024
    finally:
        proc.kill()
        proc.wait()
        group.remove()


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[Collector]:
    c = Collector(
        SqliteSpanStore(tmp_path / "spans.db"),
        tokens=lambda: {"read": "r", "ingest": "i"},
        tsdb=TimeSeriesDB(tmp_path / "tsdb.db"),
    )
    url = await c.start("127.0.0.1", 0)
    (tmp_path / "collector").write_text(url + "\n")
    (tmp_path / "ingest-token").write_text("i\n")
    try:
        yield c
    finally:
        await c.stop()


def _get(url: str, accept: str = "") -> tuple[str, str]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return answer.headers["Content-Type"], answer.read().decode()


async def test_agent_samples_land_at_the_collectors_metrics_and_query_api(
    app: Path, collector: Collector, tmp_path: Path
) -> None:
    identity = Identity("orders", "orders-0", 3, "node-a", restarts=2)
    loop = ProcessMetricsLoop(Home(tmp_path), lambda: [(identity, app)])
    async with aiohttp.ClientSession() as session:
        await loop.sample_once(session)
        await loop.sample_once(session)
    assert loop.pushed == 12 and loop.failed == 0

    _, text = await asyncio.to_thread(_get, collector.url + "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    threads = families["corral_instance_threads"].samples[0]
    assert threads.labels == {
        "service": "orders",
        "instance": "orders-0",
        "release": "3",
        "node": "node-a",
    }
    assert threads.value >= 3
    assert families["corral_instance_restarts"].samples[0].value == 2  # counter: _total sample
    ctype, om = await asyncio.to_thread(
        _get, collector.url + "/metrics", "application/openmetrics-text; version=1.0.0"
    )
    assert ctype.startswith("application/openmetrics-text") and om.endswith("# EOF\n")

    query = "/telemetry/metrics?name=corral_instance_memory_rss_bytes&instance=orders-0&minutes=5"
    request = urllib.request.Request(collector.url + query, headers={"Authorization": "Bearer r"})
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=5).read())
    answer = json.loads(body)
    assert answer["resolution_s"] == 10 and len(answer["series"]) == 1
    [[_ts, rss]] = answer["series"][0]["points"][-1:]
    assert rss > 20 * 1024 * 1024


async def test_a_malformed_push_is_refused_and_nothing_is_kept(collector: Collector) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            collector.url + "/telemetry/samples",
            json={"at": 0, "samples": [{"name": "bad name", "value": 1}]},
        ) as answer,
    ):
        assert answer.status == 400
        assert "invalid name" in (await answer.json())["message"]
    assert collector.keeper is not None and collector.keeper.tsdb.names() == []


async def test_the_instance_listing_is_taken_on_the_loop_not_in_the_reader_thread(
    app: Path, tmp_path: Path
) -> None:
    # The listing walks the agent's supervised dict, which only the loop may touch safely.
    identity = Identity("orders", "orders-0", 3, "node-a", restarts=0)
    listed_on: list[int] = []

    def instances() -> list[tuple[Identity, Path]]:
        listed_on.append(threading.get_ident())
        return [(identity, app)]

    loop = ProcessMetricsLoop(Home(tmp_path), instances)
    await loop.sample_once()
    assert listed_on == [threading.get_ident()]
    assert {s.labels["instance"] for s in loop.latest} == {"orders-0"}
