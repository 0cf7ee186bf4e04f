"""The platform's own counters and the manifest's retention reach the embedded time series:
the collector scrapes the control plane's /metrics and the gateway's snapshots, and an apply
that changes ``metrics.retention`` rolls the collector with the new tiers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from aiohttp import web

from corral import model
from corral.control import system
from corral.gateway.metrics import Metrics
from corral.gateway.metrics import render as gateway_render
from corral.home import Home
from corral.store.sqlite import SQLiteStore
from corral.telemetry.metrics_api import MetricsKeeper, parse_text, scrape_platform
from corral.telemetry.tsdb import TimeSeriesDB


def _gateway_snapshot(ok: int, failed: int) -> dict[str, object]:
    metrics = Metrics()
    route = metrics.route('shop "main"')
    for i in range(ok):
        route.observe(200, 0.01, 0.008, trace_id=b"ab" * 16 if i == 0 else None)
    for _ in range(failed):
        route.observe(503, 0.2, None)
    return metrics.snapshot()


def test_prometheus_text_parses_into_samples_with_escaped_labels_and_no_exemplars() -> None:
    text = gateway_render([_gateway_snapshot(3, 1)], openmetrics=True)
    samples = parse_text(text, {"source": "gateway"})
    requests = {
        s.labels["code"]: s.value for s in samples if s.name == "corral_gateway_requests_total"
    }
    assert requests["2xx"] == 3 and requests["5xx"] == 1
    labels = next(s.labels for s in samples if s.name == "corral_gateway_requests_total")
    assert labels["route"] == 'shop "main"' and labels["source"] == "gateway"
    buckets = [s for s in samples if s.name == "corral_gateway_request_duration_seconds_bucket"]
    assert buckets and max(s.value for s in buckets) == 4  # the +Inf bucket: every request


async def test_gateway_and_control_plane_counters_are_queryable_from_the_time_series(
    tmp_path: Path,
) -> None:
    home = Home(tmp_path / "home")
    (home.path / "gateway").mkdir(parents=True)
    for worker, (ok, failed) in enumerate([(5, 1), (4, 0)]):
        path = home.path / "gateway" / f"metrics-{worker}.json"
        path.write_text(json.dumps(_gateway_snapshot(ok, failed)))

    async def api_metrics(request: web.Request) -> web.Response:
        return web.Response(text='corral_api_requests_total{route="/api/v1/apply"} 7\n')

    app = web.Application()
    app.router.add_get("/metrics", api_metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    home.write_atomic("api", f"http://127.0.0.1:{runner.addresses[0][1]}\n")
    keeper = MetricsKeeper(TimeSeriesDB(tmp_path / "tsdb.db"))
    task = asyncio.get_running_loop().create_task(scrape_platform(keeper, home, 0.05))
    try:
        deadline = time.monotonic() + 10
        while "corral_api_requests_total" not in keeper.tsdb.names():
            assert time.monotonic() < deadline, "the scrape never stored the API's counter"
            await asyncio.sleep(0.02)
        now = int(time.time())
        answer = keeper.query(
            {"name": "corral_gateway_requests_total", "code": "2xx", "agg": "last"}, now
        )
        [series] = answer["series"]
        assert series["labels"]["source"] == "gateway"
        assert series["points"][-1][1] == 9  # both workers' 2xx, summed
        api = keeper.query({"name": "corral_api_requests_total", "agg": "last"}, now)
        assert api["series"][0]["labels"]["source"] == "control-plane"
        lines = keeper.lines(now)
        assert "# HELP corral_gateway_requests_total Read from the platform gateway's" in "\n".join(
            lines
        )
        assert (
            "# HELP corral_api_requests_total Scraped from the control plane's /metrics." in lines
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        keeper.tsdb.close()
        await runner.cleanup()


def test_a_pushed_sample_from_the_past_or_future_lands_within_one_fine_step_of_now(
    tmp_path: Path,
) -> None:
    # The rollups wait one fine step for late points; an older one would never reach them.
    keeper = MetricsKeeper(TimeSeriesDB(tmp_path / "tsdb.db"))
    t0 = 1_700_000_400  # on an hour boundary
    now = t0 + 5

    def push(name: str, at: float) -> None:
        sample = {"name": name, "labels": {"node": "a"}, "value": 1}
        keeper.ingest(json.dumps({"at": at, "samples": [sample]}).encode(), now)

    try:
        push("late", now - 1800)
        push("early", now + 600)
        push("on_time", now - 3)
        got = {
            name: keeper.query({"name": name, "minutes": "5", "step": "10", "agg": "last"}, now)
            for name in ("late", "early", "on_time")
        }
        assert got["late"]["series"][0]["points"] == [[t0 - 10, 1.0]]
        assert got["early"]["series"][0]["points"] == [[t0, 1.0]]
        assert got["on_time"]["series"][0]["points"] == [[t0, 1.0]]
        assert keeper.lines(now)[0] == "# HELP early Sampled by the node agent."
    finally:
        keeper.tsdb.close()


async def _collector(store: SQLiteStore) -> model.ServiceRecord:
    kv = await store.get(model.SERVICES + system.COLLECTOR)
    assert kv is not None
    return model.decode(kv.value, model.ServiceRecord)


async def test_a_changed_metrics_retention_rolls_the_collector_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    store = await SQLiteStore.open(tmp_path / "store.db")
    try:
        await system.ensure_collector(store, tmp_path)  # the control plane starts
        first = await _collector(store)
        assert "--metrics-retention" not in first.spec["command"]
        # A manifest that keeps the defaults changes nothing.
        default = system.retention_argument("10s:24h,1m:7d,1h:90d")
        await system.ensure_collector(store, tmp_path, default)
        assert (await _collector(store)).release == first.release
        # A manifest with its own tiers: a new release whose command carries them.
        await system.ensure_collector(store, tmp_path, system.retention_argument("10s:1h,1m:2d"))
        rolled = await _collector(store)
        assert rolled.release == first.release + 1
        assert rolled.spec["command"][-2:] == ["--metrics-retention", "10s:1h,1m:2d"]
        # A control-plane restart keeps them rather than rolling back to the defaults.
        await system.ensure_collector(store, tmp_path)
        assert (await _collector(store)).release == rolled.release
    finally:
        await store.close()
