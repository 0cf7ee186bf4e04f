"""Impact analysis: one instance made slow and one SQL statement made slow name exactly the
external APIs whose requests reach them, with the counts and times a brute-force pass over the
raw spans finds; a host covers the instances that reported it."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.errors import NotFound, UserError
from corral.telemetry import zipkin
from corral.telemetry.collector import Collector, CollectorConfig, Ingestor
from corral.telemetry.hostmetrics import HostSeries
from corral.telemetry.impact import Impact, impact
from corral.telemetry.model import CALLEE_KINDS, Span
from corral.telemetry.normalize import facts, sql_fingerprint
from corral.telemetry.rollup import api_name
from corral.telemetry.store import SqliteSpanStore
from tests.telemetry.gen import BASE_US

HOSTS = {"orders-0": "host-a", "orders-1": "host-b", "users-0": "host-b", "payments-0": "host-c"}
SLOW_SQL = "UPDATE stock SET qty = qty - {n} WHERE sku = 'sku-{n}'"
WINDOW = (BASE_US - 60_000_000, BASE_US + 700_000_000)


class Shop:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.spans: list[Span] = []

    def id(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def span(self, trace: str, parent: str | None, kind: str, instance: str, t: int, dur: int,
             name: str, **attrs: str) -> str:  # fmt: skip
        sid = self.id()
        service = instance.rsplit("-", 1)[0]
        attributes = {"service.instance.id": instance, **attrs}  # as OpenTelemetry exports
        if instance in HOSTS:
            attributes["host.name"] = HOSTS[instance]
        error = self.rng.random() < 0.03
        self.spans.append(Span(trace, sid, parent, name, kind, service, instance, t, dur, error,
                               attributes=attributes))  # fmt: skip
        return sid

    def request(self, t: int) -> None:
        rng = self.rng
        trace = f"{rng.getrandbits(128):032x}"
        api, method = rng.choice([("orders", "GET"), ("users", "GET"), ("checkout", "POST")])
        n = rng.randrange(1000)
        backend = "users-0" if api == "users" else rng.choice(["orders-0", "orders-1"])
        slow = 10 if backend == "orders-1" else 1  # the slow instance
        work = rng.randrange(1_000, 20_000) * slow
        sql = {"orders": "SELECT * FROM orders WHERE id = {n}", "users": "SELECT name FROM "
               "users WHERE id = {n}", "checkout": SLOW_SQL}[api].format(n=n)  # fmt: skip
        db = rng.randrange(200_000, 400_000) if api == "checkout" else rng.randrange(200, 2000)
        pay = 5_000 if api == "checkout" else 0
        total = work + db + pay + 100
        root = self.span(trace, None, "SERVER", "gw", t, total + 50, f"{method} {api}",
                         **{"http.method": method, "http.route": api})  # fmt: skip
        url = f"http://b/{api}/{n}"
        client = self.span(trace, root, "CLIENT", "gw", t + 10, total + 20, method,
                           **{"http.method": method, "http.url": url})  # fmt: skip
        server = self.span(trace, client, "SERVER", backend, t + 20, total, f"{method} /{api}",
                           **{"http.method": method, "http.route": f"/{api}/{{id}}"})  # fmt: skip
        self.span(trace, server, "CLIENT", backend, t + 30, db, "query",
                  **{"db.system": "sqlite", "db.statement": sql})  # fmt: skip
        if pay:
            pay_client = self.span(trace, server, "CLIENT", backend, t + 40 + db, pay,
                                   "POST", **{"url.full": "http://p/pay"})  # fmt: skip
            self.span(trace, pay_client, "SERVER", "payments-0", t + 45 + db, pay - 10,
                      "POST /pay", **{"http.method": "POST", "http.route": "/pay"})  # fmt: skip


def shop(seed: int, requests: int) -> list[Span]:
    s = Shop(random.Random(seed))
    for _ in range(requests):
        s.request(BASE_US + s.rng.randrange(600_000_000))
    return s.spans


def brute(spans: list[Span], hit: Callable[[Span], bool]) -> dict[str, tuple[int, ...]]:
    """api → (requests, api time, calls at the target, target time, target errors)."""
    roots = {s.trace_id: s for s in spans if s.parent_id is None}
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for s in spans:
        root = roots[s.trace_id]
        api = api_name(root.service, facts(root).endpoint)
        if s is root:
            out[api][0] += 1
            out[api][1] += s.duration_us
        if hit(s):
            out[api][2] += 1
            out[api][3] += s.duration_us
            out[api][4] += s.error
    return {api: tuple(v) for api, v in out.items() if v[2]}


def got(result: Impact) -> dict[str, tuple[int, ...]]:
    return {
        a.api: (a.requests, a.api_time_us, a.calls, a.target_time_us, a.target_errors)
        for a in result.apis
    }


def entry(s: Span) -> bool:
    return s.kind in CALLEE_KINDS or s.parent_id is None


Stored = tuple[SqliteSpanStore, Ingestor, list[Span]]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    path = tmp_path_factory.mktemp("impact")
    spans = shop(7, 600)
    arrival = list(spans)
    random.Random(1).shuffle(arrival)
    store = SqliteSpanStore(path / "spans.db")
    series = HostSeries(path / "metrics.db")
    ingestor = Ingestor(store, window_s=60, series=series)
    for i in range(0, len(arrival), 101):
        ingestor.ingest(arrival[i : i + 101], 0.0)
    ingestor.flush()
    yield store, ingestor, spans
    store.close()
    series.close()


def test_a_slow_instance_names_the_apis_its_requests_serve(stored: Stored) -> None:
    store, _, spans = stored
    result = impact(store, *WINDOW, instance="orders-1")
    expected = brute(spans, lambda s: s.instance == "orders-1" and entry(s))
    assert got(result) == expected
    assert sorted(expected) == ["gw GET orders", "gw POST checkout"]  # not GET users
    for a in result.apis:
        assert 0.3 < a.traffic_share < 0.7  # orders-1 takes about half of each API's requests
        assert a.time_share == pytest.approx(a.target_time_us / a.api_time_us)
    assert result.apis[0].target_time_us >= result.apis[1].target_time_us


def test_a_slow_statement_names_the_api_that_runs_it(stored: Stored) -> None:
    store, _, spans = stored
    fingerprint = sql_fingerprint(SLOW_SQL.format(n=1))
    by_raw = impact(store, *WINDOW, sql=SLOW_SQL.format(n=5))  # a raw statement works too
    by_fingerprint = impact(store, *WINDOW, sql=fingerprint)
    expected = brute(spans, lambda s: facts(s).fingerprint == fingerprint)
    assert got(by_raw) == got(by_fingerprint) == expected
    assert list(expected) == ["gw POST checkout"]
    [checkout] = by_fingerprint.apis
    assert checkout.traffic_share == 1.0 and checkout.time_share > 0.5


def test_a_host_covers_every_instance_that_reported_it(stored: Stored) -> None:
    store, ingestor, spans = stored
    hosts = ingestor.instance_hosts()
    assert hosts == HOSTS
    result = impact(store, *WINDOW, host="host-b", hosts=hosts)
    assert result.instances == ["orders-1", "users-0"]
    on_b = {"orders-1", "users-0"}
    assert got(result) == brute(spans, lambda s: s.instance in on_b and entry(s))
    assert len(result.apis) == 3
    with pytest.raises(NotFound, match="host-z"):
        impact(store, *WINDOW, host="host-z", hosts=hosts)
    with pytest.raises(UserError):
        impact(store, *WINDOW, host="host-b", instance="orders-1", hosts=hosts)


async def test_impact_is_served_by_the_collector_with_hosts_learnt_at_ingest(
    tmp_path: Path,
) -> None:
    spans = shop(3, 50)
    store = SqliteSpanStore(tmp_path / "spans.db")
    collector = Collector(
        store,
        tokens=lambda: {"read": "r"},
        config=CollectorConfig(link_window_s=0.2),
        series=HostSeries(tmp_path / "metrics.db"),
    )
    await collector.start("127.0.0.1", 0)
    try:
        body = zipkin.encode(spans)
        request = urllib.request.Request(
            collector.url + "/api/v2/spans", body, {"Content-Type": "application/json"}
        )
        await asyncio.to_thread(urllib.request.urlopen, request)
        await collector.settle()
        query = urllib.parse.urlencode({"host": "host-c", "start": WINDOW[0], "end": WINDOW[1]})
        request = urllib.request.Request(
            f"{collector.url}/telemetry/impact?{query}", headers={"Authorization": "Bearer r"}
        )
        answer = json.loads((await asyncio.to_thread(urllib.request.urlopen, request)).read())
    finally:
        await collector.stop()
    assert answer["target"] == "host=host-c" and answer["instances"] == ["payments-0"]
    assert [a["api"] for a in answer["apis"]] == ["gw POST checkout"]
