"""SLOs per gateway route: the manifest's `slo` is validated with every problem at its path;
the error budget and the multi-window burn rates (SRE workbook: 1 h/5 min over 14.4, 6 h/30 min
over 6) equal a brute-force count over the raw edge spans; the collector serves them at
/telemetry/slo from the live gateway config."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from corral import clock
from corral.errors import ManifestError
from corral.gateway.config import SLO_MAX_WINDOW_S, GatewayConfig, validate_gateway_data
from corral.gateway.spans import Finished, zipkin_spans
from corral.home import Home
from corral.telemetry import slo, slo_report
from corral.telemetry.collector import Collector, CollectorConfig, Ingestor, store_gateway_config
from corral.telemetry.model import Span
from corral.telemetry.rollup import BOUNDS_US, MINUTE_US, Cell
from corral.telemetry.store import Retention, SqliteSpanStore
from tests.telemetry.gen import BASE_US

GATEWAY = {
    "routes": [
        {
            "name": "orders",
            "service": "orders",
            "slo": {
                "availability": "99.9%",
                "latency": {"p95": "300ms", "p99": "1s"},
                "window": "6h",
            },
        },
        {"name": "users", "service": "users"},
    ]
}


def config() -> GatewayConfig:
    return validate_gateway_data(GATEWAY, mode="platform")


# -- the manifest ------------------------------------------------------------------------


def test_slo_problems_are_each_reported_at_their_path() -> None:
    data = {
        "routes": [
            {
                "name": "a",
                "upstreams": ["127.0.0.1:9001"],
                "slo": {"availability": "99.9x", "latency": {"q95": "300ms"}, "window": "60d"},
            },
            {"name": "b", "upstreams": ["127.0.0.1:9001"], "slo": {}},
            {"name": "c", "upstreams": ["127.0.0.1:9001"], "slo": {"availability": 0.999}},
        ]
    }
    with pytest.raises(ManifestError) as caught:
        validate_gateway_data(data)
    text = str(caught.value)
    for where in (
        "routes[0].slo.availability",
        "routes[0].slo.latency.q95",
        "routes[0].slo.window",
        "routes[1].slo",
        "routes[2].slo.availability",
    ):
        assert f"{where}:" in text
    assert "longer than the collector keeps rollups" in text


def test_a_declared_slo_reads_as_fractions_and_seconds() -> None:
    route = config().routes[0]
    assert route.slo is not None
    assert (route.slo.availability, route.slo.window) == (99.9, 6 * 3600.0)
    assert route.slo.latency_targets() == [(0.95, 0.3), (0.99, 1.0)]
    assert Retention().rollups_s == SLO_MAX_WINDOW_S  # a window never outlives the rollups
    objectives = slo_report.objectives_of(config())
    assert [(o.route, o.service, o.window_s) for o in objectives] == [
        ("orders", "corral-gateway", 6 * 3600)
    ]
    assert objectives[0].objectives == [
        slo.Objective("availability", 0.999),
        slo.Objective("latency", 0.95, 300_000),
        slo.Objective("latency", 0.99, 1_000_000),
    ]


# -- the arithmetic ----------------------------------------------------------------------


def _hist(durations: list[int]) -> list[int]:
    cell = Cell()
    for d in durations:
        cell.add(d, False)
    return cell.hist


durations = st.lists(st.integers(1, 70_000_000), max_size=200)


@settings(max_examples=60, deadline=None)
@given(durations, st.sampled_from(BOUNDS_US))
def test_latency_on_a_bucket_bound_counts_exactly_the_requests_within_it(
    values: list[int], bound: int
) -> None:
    assert slo.good_within(_hist(values), bound) == sum(v <= bound for v in values)


@settings(max_examples=60, deadline=None)
@given(durations, st.integers(1, 60_000_000))
def test_latency_between_bounds_is_within_the_bucket_that_holds_it(
    values: list[int], threshold: int
) -> None:
    i = next(i for i, b in enumerate(BOUNDS_US) if b >= threshold)
    lower, upper = (BOUNDS_US[i - 1] if i else 0), BOUNDS_US[i]
    good = slo.good_within(_hist(values), threshold)
    assert sum(v <= lower for v in values) <= good <= sum(v <= upper for v in values)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(0, 1), st.sampled_from([0.9, 0.99, 0.999, 0.9999]))
def test_budget_left_is_one_minus_the_burn_rate_over_the_slo_window(
    total: int, bad_share: float, target: float
) -> None:
    t = slo.Tally(total, round(total * bad_share))
    assert slo.budget_left(t, target) == pytest.approx(1 - slo.burn_rate(t, target))


def test_budget_is_spent_when_bad_requests_reach_the_allowance() -> None:
    assert slo.budget_left(slo.Tally(1000, 5), 0.99) == pytest.approx(0.5)
    assert slo.budget_left(slo.Tally(1000, 10), 0.99) == pytest.approx(0.0)
    assert slo.budget_left(slo.Tally(1000, 20), 0.99) == pytest.approx(-1.0)
    assert slo.budget_left(slo.Tally(0, 0), 0.99) == 1.0  # no traffic spends nothing
    assert slo.burn_rate(slo.Tally(10_000, 144), 0.999) == pytest.approx(14.4)


def _counts(total: int, errors: int) -> slo.Counts:
    return slo.Counts(total, errors, ())


def test_page_fires_only_while_both_the_hour_and_the_last_five_minutes_burn_fast() -> None:
    availability = slo.Objective("availability", 0.999)
    window = _counts(100_000, 50)
    burning = {300: _counts(1000, 20), 1800: _counts(6000, 20), 3600: _counts(12_000, 200),
               21600: _counts(72_000, 210)}  # fmt: skip
    alerts = {a.name: a.firing for a in slo.evaluate(availability, window, burning).alerts}
    assert alerts == {"page": True, "ticket": False}  # 30 min burns 3.3×: below 6
    recovered = {**burning, 300: _counts(1000, 0)}  # the fault is gone: the page resets
    alerts = {a.name: a.firing for a in slo.evaluate(availability, window, recovered).alerts}
    assert alerts == {"page": False, "ticket": False}
    slow_burn = {300: _counts(1000, 7), 1800: _counts(6000, 40), 3600: _counts(12_000, 80),
                 21600: _counts(72_000, 500)}  # fmt: skip
    alerts = {a.name: a.firing for a in slo.evaluate(availability, window, slow_burn).alerts}
    assert alerts == {"page": False, "ticket": True}


# -- the report over rollups, against brute force ---------------------------------------


def gateway_spans(rng: random.Random, now_us: int) -> list[Span]:
    """6 h 10 min of edge spans: `orders` healthy, then failing and slow in its last 10
    minutes; `users` (no SLO) and a downstream span that must not count."""
    spans = []
    start = now_us - (6 * 60 + 10) * 60_000_000
    t = start
    while t < now_us:
        recent = now_us - t < 10 * 60_000_000
        route = rng.choice(["orders", "orders", "users"])
        error = rng.random() < (0.2 if recent else 0.0005)
        slow = rng.random() < (0.2 if recent else 0.02)
        duration = rng.randrange(300_001, 2_000_000) if slow else rng.randrange(1_000, 300_000)
        method = rng.choice(["GET", "POST"])
        trace = f"{rng.getrandbits(128):032x}"
        sid = f"{rng.getrandbits(64):016x}"
        attributes = {"http.method": method, "http.route": route, "http.status_code": "200"}
        spans.append(
            Span(trace, sid, None, f"{method} {route}", "SERVER", "corral-gateway", "", t,
                 duration, error, attributes=attributes)
        )  # fmt: skip
        spans.append(
            Span(trace, f"{rng.getrandbits(64):016x}", sid, f"{method} /x", "SERVER", "orders",
                 "orders-0", t + 5, duration - 10, error,
                 attributes={"http.method": method, "http.route": "orders"})
        )  # fmt: skip
        t += rng.randrange(1_000_000, 6_000_000)
    return spans


def brute(spans: list[Span], now_us: int, window_s: int, o: slo.Objective) -> tuple[int, int]:
    now_minute = now_us // MINUTE_US
    mine = [
        s
        for s in spans
        if s.service == "corral-gateway"
        and s.attributes["http.route"] == "orders"
        and now_minute - window_s // 60 < s.start_us // MINUTE_US <= now_minute
    ]
    if o.kind == "availability":
        return len(mine), sum(s.error for s in mine)
    return len(mine), sum(s.duration_us > o.threshold_us for s in mine)


def test_budget_and_burn_rates_equal_a_count_over_the_raw_spans(tmp_path: Path) -> None:
    now_us = BASE_US + 7 * 3600 * 1_000_000 + 30_000_000
    spans = gateway_spans(random.Random(5), now_us)
    store = SqliteSpanStore(tmp_path / "spans.db")
    try:
        ingestor = Ingestor(store, window_s=60)
        for i in range(0, len(spans), 500):
            ingestor.ingest(spans[i : i + 500], 0.0)
        ingestor.flush()
        [orders] = slo_report.report(store, slo_report.objectives_of(config()), now_us)
    finally:
        store.close()
    assert orders.route == "orders" and len(orders.objectives) == 3
    for status in orders.objectives:
        o = slo.Objective(status.kind, status.target, status.threshold_us)
        total, bad = brute(spans, now_us, 6 * 3600, o)
        assert (status.requests, status.bad) == (total, bad)
        expected_left = slo.budget_left(slo.Tally(total, bad), o.target)
        assert status.budget_left == pytest.approx(expected_left, abs=1e-5)
        for label, seconds in (("5m", 300), ("30m", 1800), ("1h", 3600), ("6h", 21600)):
            expected = slo.burn_rate(slo.Tally(*brute(spans, now_us, seconds, o)), o.target)
            assert status.burn[label] == pytest.approx(expected, abs=1e-3)
    availability = orders.objectives[0]
    assert availability.burn["5m"] > 14.4 and availability.budget_left < 0.5
    assert "page" in orders.firing


# -- the collector's /telemetry/slo ------------------------------------------------------


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[Collector]:
    async def live_config() -> GatewayConfig:
        return config()

    store = SqliteSpanStore(tmp_path / "spans.db")
    c = Collector(
        store,
        tokens=lambda: {"read": "r"},
        config=CollectorConfig(link_window_s=0.2),
        gateway_config=live_config,
    )
    await c.start("127.0.0.1", 0)
    try:
        yield c
    finally:
        await c.stop()


def _get(url: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": "Bearer r"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


async def test_slo_of_a_route_comes_from_the_gateways_own_edge_spans(
    collector: Collector,
) -> None:
    now = clock.wall()
    finished: list[Finished] = [
        (f"{i:032x}".encode(), f"{i:016x}".encode(), None, now - 1.0, now - 1.0 + dur, "GET",
         b"shop.local", "/api/orders/7", status, "orders", b"127.0.0.1", b"r", None)
        for i, (dur, status) in enumerate([(0.01, 200)] * 96 + [(0.5, 200)] * 2 + [(0.02, 503)] * 2)
    ]  # fmt: skip
    body = json.dumps(zipkin_spans(finished, 0.0, "corral-gateway")).encode()
    request = urllib.request.Request(
        collector.url + "/api/v2/spans", body, {"Content-Type": "application/json"}
    )
    await asyncio.to_thread(urllib.request.urlopen, request)
    await collector.settle()
    answer = await asyncio.to_thread(_get, collector.url + "/telemetry/slo")
    assert answer["gateway_config"] is True
    [orders] = answer["routes"]
    availability, p95, p99 = orders["objectives"]
    assert (availability["requests"], availability["bad"]) == (100, 2)
    assert availability["budget_left"] == pytest.approx(1 - 0.02 / 0.001)  # overspent
    assert p95["bad"] == 2 and p95["budget_left"] == pytest.approx(1 - 0.02 / 0.05)
    assert p99["bad"] == 0
    assert orders["firing"] == ["page", "ticket"]


async def test_the_collector_reads_slos_from_the_live_gateway_config(tmp_path: Path) -> None:
    record = {"config": GATEWAY, "version": 3}

    async def store_range(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer r"
        kv = {"key": request.query["prefix"], "value": json.dumps(record), "create_revision": 1,
              "mod_revision": 2, "version": 1}  # fmt: skip
        return web.json_response({"kvs": [kv], "revision": 2, "more": False})

    app = web.Application()
    app.router.add_get("/api/v1/store/range", store_range)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # started
    try:
        home = Home(tmp_path)
        home.api_file.write_text(f"http://127.0.0.1:{port}\n")
        (tmp_path / "read-token").write_text("r")
        live = await store_gateway_config(home)()
    finally:
        await runner.cleanup()
    assert live is not None and [r.name for r in live.routes] == ["orders", "users"]
    assert live.routes[0].slo is not None and live.routes[0].slo.availability == 99.9
