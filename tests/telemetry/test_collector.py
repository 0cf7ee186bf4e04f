"""A real collector on 127.0.0.1, fed by client libraries no one here wrote: py_zipkin and the
OpenTelemetry SDK with its Zipkin-JSON, OTLP-protobuf and OTLP-JSON exporters. What each sends
must answer correctly in the queries and in the Zipkin v2 query API."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from corral import clock
from corral.home import Home
from corral.telemetry.collector import Collector, CollectorConfig
from corral.telemetry.store import SqliteSpanStore

READ_TOKEN = "read-secret"
INGEST_TOKEN = "ingest-secret"


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[Collector]:
    store = SqliteSpanStore(tmp_path / "spans.db")
    tokens = {"read": READ_TOKEN, "ingest": INGEST_TOKEN, "admin": "admin-secret"}
    c = Collector(store, tokens=lambda: tokens, config=CollectorConfig(link_window_s=0.5))
    await c.start("127.0.0.1", 0)
    try:
        yield c
    finally:
        await c.stop()


def get(url: str, token: str | None = READ_TOKEN) -> Any:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


async def fetch(url: str, token: str | None = READ_TOKEN) -> Any:
    return await asyncio.to_thread(get, url, token)


async def until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = clock.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if clock.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def _otel_send(exporter: Any, service: str) -> tuple[str, str]:
    """One SERVER request span with a sqlite child span, exported synchronously."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode

    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.instance.id": f"{service}-0"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("GET /orders/{id}", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.request.method", "GET")
        root.set_attribute("http.route", "/orders/{id}")
        root.set_attribute("url.path", "/orders/42")
        with tracer.start_as_current_span("SELECT", kind=SpanKind.CLIENT) as db:
            db.set_attribute("db.system", "sqlite")
            db.set_attribute("db.statement", "SELECT * FROM orders WHERE id = 42")
            db.set_status(Status(StatusCode.ERROR, "no such table"))
        trace_id = format(root.get_span_context().trace_id, "032x")
    provider.shutdown()
    return trace_id, service


async def _check_otel(collector: Collector, service: str, trace_id: str) -> None:
    base = collector.url
    trace = await until(lambda: _complete(f"{base}/api/v2/trace/{trace_id}", 2))
    assert {s["name"].lower() for s in trace} == {"get /orders/{id}", "select"}
    assert {s["localEndpoint"]["serviceName"] for s in trace} == {service}
    await collector.settle()
    deps = await fetch(f"{base}/telemetry/dependencies?minutes=60")
    assert {(d["parent"], d["child"], d["errors"]) for d in deps} == {(service, "sqlite", 1)}
    top = await fetch(f"{base}/telemetry/top?by=calls&minutes=60")
    assert [(t["service"], t["endpoint"], t["calls"]) for t in top] == [
        (service, "GET /orders/{id}", 1)
    ]
    slow = await fetch(f"{base}/telemetry/slow-sql?threshold_us=0&minutes=60")
    assert slow[0]["fingerprint"] == "SELECT * FROM orders WHERE id = ?"
    assert [a["api"] for a in slow[0]["apis"]] == [f"{service} GET /orders/{{id}}"]
    waterfall = await fetch(f"{base}/telemetry/trace/{trace_id}")
    assert [r["depth"] for r in waterfall["rows"]] == [0, 1]
    assert waterfall["errors"] == 1


def _complete(url: str, spans: int) -> Any:
    trace = _try(url)
    return trace if trace and len(trace) >= spans else None


def _try(url: str) -> Any:
    try:
        return get(url, None)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


async def test_otel_sdk_zipkin_json_exporter_spans_answer_in_queries(collector: Collector) -> None:
    from opentelemetry.exporter.zipkin.json import ZipkinExporter

    exporter = ZipkinExporter(endpoint=f"{collector.url}/api/v2/spans")
    trace_id, service = await asyncio.to_thread(_otel_send, exporter, "zipkinshop")
    await _check_otel(collector, service, trace_id)


async def test_otel_sdk_otlp_protobuf_exporter_spans_answer_in_queries(
    collector: Collector,
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=f"{collector.url}/v1/traces")
    trace_id, service = await asyncio.to_thread(_otel_send, exporter, "protoshop")
    await _check_otel(collector, service, trace_id)


async def test_otel_sdk_otlp_json_exporter_spans_answer_in_queries(collector: Collector) -> None:
    from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(endpoint=f"{collector.url}/v1/traces")
    trace_id, service = await asyncio.to_thread(_otel_send, exporter, "jsonshop")
    await _check_otel(collector, service, trace_id)


def _py_zipkin_send(port: int) -> str:
    from py_zipkin.encoding._types import Encoding, Kind
    from py_zipkin.transport import SimpleHTTPTransport
    from py_zipkin.zipkin import zipkin_span

    transport = SimpleHTTPTransport("127.0.0.1", port)
    with zipkin_span(
        service_name="legacy",
        span_name="GET /users/12345",
        transport_handler=transport,
        sample_rate=100.0,
        encoding=Encoding.V2_JSON,
        kind=Kind.SERVER,
    ) as root:
        root.update_binary_annotations({"http.method": "GET"})
        with zipkin_span(service_name="legacy", span_name="query", kind=Kind.CLIENT) as db:
            db.update_binary_annotations({"db.system": "postgresql", "db.statement": "select 1"})
            db.add_sa_binary_annotation(port=5432, service_name="pg", host="10.1.2.3")
        attrs = root.zipkin_attrs
        assert attrs is not None
    return str(attrs.trace_id)


async def test_py_zipkin_spans_are_accepted_with_202_and_answer_in_queries(
    collector: Collector,
) -> None:
    port = int(collector.url.rsplit(":", 1)[1])
    trace_id = await asyncio.to_thread(_py_zipkin_send, port)
    base = collector.url
    await until(lambda: _complete(f"{base}/api/v2/trace/{trace_id}", 2))
    await collector.settle()
    assert await fetch(f"{base}/api/v2/services", None) == ["legacy"]
    assert await fetch(f"{base}/api/v2/spans?serviceName=legacy", None) == [
        "GET /users/{id}",
        "query",
    ]
    deps = await fetch(f"{base}/api/v2/dependencies?endTs={int(clock.wall() * 1000)}", None)
    assert deps == [{"parent": "legacy", "child": "pg", "callCount": 1, "errorCount": 0}]
    found = await fetch(f"{base}/api/v2/traces?serviceName=legacy&limit=5", None)
    assert [t[0]["traceId"] for t in found] == [trace_id]


async def test_overload_answers_429_with_retry_after_and_counts_dropped_spans(
    tmp_path: Path,
) -> None:
    store = SqliteSpanStore(tmp_path / "spans.db")
    c = Collector(store, config=CollectorConfig(queue_spans=5))
    await c.start()
    try:
        span = {"traceId": "a" * 32, "id": "b" * 16, "name": "x", "timestamp": 1, "duration": 1,
                "localEndpoint": {"serviceName": "s"}}  # fmt: skip
        body = json.dumps([span] * 10).encode()

        def post() -> tuple[int, str | None]:
            req = urllib.request.Request(
                f"{c.url}/api/v2/spans", data=body, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as response:
                    return response.status, None
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers.get("Retry-After")

        assert await asyncio.to_thread(post) == (429, "1")
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"{c.url}/metrics", timeout=10).read().decode()
        )
        assert "corral_telemetry_spans_dropped_total 10" in metrics
    finally:
        await c.stop()


async def test_off_loopback_ingest_and_queries_need_their_tokens(collector: Collector) -> None:
    collector.loopback = False  # as if listening on a routable address
    url = f"{collector.url}/api/v2/services"
    with pytest.raises(urllib.error.HTTPError) as no_token:
        await fetch(url, None)
    assert no_token.value.code == 401
    with pytest.raises(urllib.error.HTTPError) as wrong_role:
        await fetch(url, INGEST_TOKEN)
    assert wrong_role.value.code == 403
    assert await fetch(url, READ_TOKEN) == []

    def post(token: str | None) -> int:
        req = urllib.request.Request(
            f"{collector.url}/api/v2/spans",
            data=b"[]",
            headers={"Content-Type": "application/json"},
        )
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    assert await asyncio.to_thread(post, None) == 401
    assert await asyncio.to_thread(post, READ_TOKEN) == 403
    assert await asyncio.to_thread(post, INGEST_TOKEN) == 202


async def test_json_queries_need_the_read_token_even_on_loopback(collector: Collector) -> None:
    with pytest.raises(urllib.error.HTTPError) as denied:
        await fetch(f"{collector.url}/telemetry/top", None)
    assert denied.value.code == 401
    assert await fetch(f"{collector.url}/telemetry/top") == []


async def test_malformed_spans_get_400_naming_the_problem(collector: Collector) -> None:
    def post(path: str, body: bytes, ctype: str) -> tuple[int, dict[str, str]]:
        req = urllib.request.Request(
            f"{collector.url}{path}", data=body, headers={"Content-Type": ctype}
        )
        try:
            urllib.request.urlopen(req, timeout=10)
            return 200, {}
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    code, error = await asyncio.to_thread(
        post, "/api/v2/spans", b'[{"traceId": "xyz", "id": "1"}]', "application/json"
    )
    assert code == 400 and "traceId" in error["message"]
    code, error = await asyncio.to_thread(
        post, "/v1/traces", b"\xff\x00garbage", "application/x-protobuf"
    )
    assert code == 400 and "OTLP" in error["message"]


def test_collector_process_writes_its_url_to_home_and_serves(tmp_path: Path) -> None:
    home = Home(tmp_path / "home")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.telemetry.collector", "--home", str(home.path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = clock.monotonic() + 20
        url_file = home.path / "collector"
        while not url_file.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert clock.monotonic() < deadline, "collector never wrote its URL"
            time.sleep(0.05)  # polling a condition, with the deadline above
        url = url_file.read_text().strip()
        assert url.startswith("http://127.0.0.1:")
        assert get(f"{url}/health", None)["ok"] is True
        assert (home.path / "telemetry" / "spans.db").exists()
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        if proc.stderr:
            proc.stderr.close()
    assert not (home.path / "collector").exists()


class _CountingStore(SqliteSpanStore):
    """A span store that remembers how many spans each write carried."""

    writes: list[int]

    def write(self, spans: Any, cells: Any) -> None:
        self.writes.append(len(spans))
        super().write(spans, cells)


async def test_small_posts_are_stored_together_and_a_lone_one_after_the_gather_time(
    tmp_path: Path,
) -> None:
    store = _CountingStore(tmp_path / "spans.db")
    store.writes = []
    # gather_s is long enough that only reaching gather_spans can end the first batch
    c = Collector(store, config=CollectorConfig(gather_spans=9, gather_s=30.0))
    await c.start()

    def post(first: int) -> int:
        span = {"traceId": "a" * 32, "name": "x", "timestamp": 1, "duration": 1,
                "localEndpoint": {"serviceName": "s"}}  # fmt: skip
        spans = [{**span, "id": f"{first + i:016x}"} for i in range(3)]
        req = urllib.request.Request(
            f"{c.url}/api/v2/spans",
            data=json.dumps(spans).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            return int(response.status)

    try:
        for first in (1, 4, 7):
            assert await asyncio.to_thread(post, first) == 202
        await asyncio.wait_for(c.drained(), 20)
        assert [n for n in store.writes if n] == [9]
        c.config = CollectorConfig(gather_spans=9, gather_s=0.2)
        assert await asyncio.to_thread(post, 10) == 202
        await asyncio.wait_for(c.drained(), 20)
        assert [n for n in store.writes if n] == [9, 3]
        assert len(store.trace("a" * 32)) == 12
    finally:
        await c.stop()
