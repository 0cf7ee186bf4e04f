"""The telemetry collector: its own process, so heavy ingest never delays the control plane.

    POST /api/v2/spans          Zipkin v2 JSON → 202 (as Zipkin answers; py_zipkin insists)
    POST /v1/traces             OTLP/HTTP, protobuf or JSON → 200 ExportTraceServiceResponse
    GET  /api/v2/services | spans?serviceName= | remoteServices?serviceName= | traces | trace/{id}
         | dependencies        the Zipkin v2 query API, so Zipkin UIs and tools work unchanged
    GET  /telemetry/trace/{id} | traces | dependencies | latency | top | slow-sql   JSON queries
    GET  /telemetry/slo | impact | hosts     SLO status per route, impact analysis, host metrics
    GET  /telemetry/signals      per-minute series for the control plane's alert rules
    GET  /health  /metrics      /metrics: OpenMetrics when the scraper's Accept asks for it
    POST /telemetry/samples     process metrics pushed by node agents → the embedded time series
    GET  /telemetry/metrics     one metric's series, downsampled to a step (``metrics_api``)

Ingest is decoupled from the store: a handler decodes (a malformed body is a 400 and nothing of
it is kept), puts the spans on a bounded queue and answers; one writer drains the queue in
batches on a thread of its own (normalise, link, roll up, store in one transaction), waiting up
to `CollectorConfig.gather_s` for a small batch to grow, since small transactions cost more per
span. The process raises the cyclic GC's threshold and shortens the GIL switch interval (see
`GC_THRESHOLD`, `SWITCH_INTERVAL_S`): both measured, in CPU per span and in POST latency. A full
queue answers 429 with Retry-After and counts the spans it refused in
``corral_telemetry_spans_dropped_total`` — never a silent drop; a collector shutting down or a
failing store answers 503.

Security (DESIGN.md): on a loopback listener ingest, the Zipkin API, /metrics and /health answer
without a token; elsewhere ingest needs the ingest (or admin) token and the Zipkin API the read
(or admin) token. The /telemetry JSON queries always need the read or admin token: the platform
API fronts them.

SLOs are read from the live gateway config, fetched through the API's remote Store when
asked (`slo_report`); host metrics are sampled by this process every 10 s into its own small
time series (`hostmetrics`), shown at /metrics and /telemetry/hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hmac
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from corral import clock, model
from corral.errors import CorralError, Forbidden, NotFound, Unauthorized, UserError
from corral.gateway.config import GatewayConfig, validate_gateway_data
from corral.home import Home
from corral.store.remote import RemoteStore
from corral.telemetry import impact, otlp, queries, signals, slo_report, zipkin
from corral.telemetry.exposition import content_type, to_openmetrics, wants_openmetrics
from corral.telemetry.hostmetrics import (
    FIELDS,
    MAX_INSTANCES,
    HostSampler,
    HostSeries,
    SeriesRetention,
    exposition,
)
from corral.telemetry.metrics_api import MetricsKeeper, scrape_platform
from corral.telemetry.model import Facts, Span
from corral.telemetry.normalize import Normalizer
from corral.telemetry.retention import DEFAULT_TIERS, Tier, parse_tiers
from corral.telemetry.rollup import Cell, Done, Key, Linker, accumulate
from corral.telemetry.store import Retention, SpanStore, SqliteSpanStore, TraceQuery
from corral.telemetry.tsdb import TimeSeriesDB

log = logging.getLogger("corral.telemetry")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INGEST_PATHS = frozenset({"/api/v2/spans", "/v1/traces", "/telemetry/samples"})
OPEN_PATHS = frozenset({"/health"})
STORE_BACKOFF_S = 1.0  # after a failed write, refuse ingest (503) this long, then try again
GATEWAY_CONFIG_KEY = model.PREFIX + "gateway/config"  # as corral.gateway.platform.CONFIG_KEY
GatewaySource = Callable[[], Awaitable[GatewayConfig | None]]
# Ingest allocates a few container objects per span (decoded structs, join records, keys), so
# with CPython's default threshold (700) the cyclic collector ran every ~100 spans and re-walked
# every span waiting in the linker: ≈ 13 µs of ≈ 35 µs per span. Spans make no cycles, so a
# young generation of 100k objects costs < 2 µs per span and still frees the cycles aiohttp's
# exceptions make.
GC_THRESHOLD = (100_000, 50, 100)
# The store thread runs Python (normalise, link, roll up) for a whole batch; each time the event
# loop wakes (a socket is readable) it waits for the GIL up to the switch interval, several times
# per POST — at CPython's 5 ms that made POST p99 hundreds of ms. 0.5 ms bounds the wait.
SWITCH_INTERVAL_S = 0.0005
_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class CollectorConfig:
    queue_spans: int = 200_000  # spans accepted but not yet stored; past this, 429
    batch_spans: int = 20_000  # spans per store transaction, at most
    # A store transaction of 500 spans cost ≈ 1.8× per span what one of 20k did (every commit
    # writes each index page it touched), so a small batch waits up to `gather_s` for more.
    gather_spans: int = 5_000
    gather_s: float = 0.1
    link_window_s: float = 10.0  # how long a span waits for its caller/callee/root
    prune_every_s: float = 60.0
    retention: Retention = field(default_factory=Retention)
    host_metrics: SeriesRetention = field(default_factory=SeriesRetention)
    metrics_retention: tuple[Tier, ...] = DEFAULT_TIERS  # the embedded time series (tsdb)


class Ingestor:
    """The writer's side, synchronous (it runs on the store thread): normalise each span, join
    it in the `Linker`, and store spans with the rollup cells that became final."""

    def __init__(
        self, store: SpanStore, window_s: float = 10.0, series: HostSeries | None = None
    ) -> None:
        self.store = store
        self.normalizer = Normalizer()
        self.linker = Linker(window_s=window_s)
        self.stored = 0
        self.series = series
        # instance → host.name of its spans ("" until one says), for impact by host
        self.hosts: dict[str, str] = series.instance_hosts() if series is not None else {}

    def ingest(self, spans: list[Span], now_s: float) -> None:
        facts = self.normalizer.facts
        offer = self.linker.offer
        hosts = self.hosts
        learnt: list[tuple[str, str]] = []
        pairs: list[tuple[Span, Facts]] = list(zip(spans, map(facts, spans), strict=True))
        done: list[Done] = []
        for span, f in pairs:
            offer(span, f, now_s, done)
            if not hosts.get(span.instance):
                host = span.attributes.get("host.name", "")
                if host or span.instance not in hosts:
                    hosts[span.instance] = host
                    if host:
                        learnt.append((span.instance, host))
        cells: dict[tuple[int, Key], Cell] = {}
        accumulate(cells, done)
        accumulate(cells, self.linker.expire(now_s))
        self.store.write(pairs, cells)
        self.stored += len(pairs)
        if len(hosts) > MAX_INSTANCES:
            hosts.clear()  # relearnt from the next spans; the saved table keeps the newest
        if learnt and self.series is not None:
            self.series.save_instance_hosts(learnt, int(now_s))

    def instance_hosts(self) -> dict[str, str]:
        """Which host each instance runs on (safe to call from any thread)."""
        saved = self.series.instance_hosts() if self.series is not None else {}
        live = self.hosts.copy()  # one C-level copy: safe while the writer adds entries
        saved.update((i, h) for i, h in live.items() if h)
        return saved

    def tick(self, now_s: float) -> None:
        cells: dict[tuple[int, Key], Cell] = {}
        accumulate(cells, self.linker.expire(now_s))
        if cells:
            self.store.write([], cells)

    def flush(self) -> None:
        cells: dict[tuple[int, Key], Cell] = {}
        accumulate(cells, self.linker.flush())
        if cells:
            self.store.write([], cells)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Collector:
    def __init__(
        self,
        store: SpanStore,
        *,
        tokens: Callable[[], Mapping[str, str]] = dict,
        config: CollectorConfig | None = None,
        gateway_config: GatewaySource | None = None,
        series: HostSeries | None = None,
        disk_path: str | Path = "/",
        tsdb: TimeSeriesDB | None = None,
    ) -> None:
        self.store = store
        self.keeper = MetricsKeeper(tsdb) if tsdb is not None else None
        self.tokens = tokens
        self.config = config or CollectorConfig()
        self.gateway_config = gateway_config
        self.series = series
        self.host = socket.gethostname()  # as the agent stamps host.name on instances
        self.sampler = HostSampler(disk_path) if series is not None else None
        self.ingestor = Ingestor(store, self.config.link_window_s, series)
        self.loopback = True
        self.received = 0
        self.dropped = 0
        self.failed = 0
        self._pending = 0
        self._queue: asyncio.Queue[list[Span] | None] = asyncio.Queue()
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="telemetry-store")
        self._query_pool = ThreadPoolExecutor(2, thread_name_prefix="telemetry-query")
        self._metrics_pool = ThreadPoolExecutor(1, thread_name_prefix="telemetry-metrics")
        self._writer: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._closing = False
        self._store_error = ""
        self._failed_at = 0.0
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle ----------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 << 20)
        r = app.router
        r.add_post("/api/v2/spans", self.post_zipkin)
        r.add_post("/v1/traces", self.post_otlp)
        r.add_get("/api/v2/services", self.z_services)
        r.add_get("/api/v2/spans", self.z_spans)
        r.add_get("/api/v2/remoteServices", self.z_remote)
        r.add_get("/api/v2/traces", self.z_traces)
        r.add_get("/api/v2/trace/{id}", self.z_trace)
        r.add_get("/api/v2/dependencies", self.z_dependencies)
        r.add_get("/telemetry/trace/{id}", self.q_trace)
        r.add_get("/telemetry/traces", self.q_traces)
        r.add_get("/telemetry/dependencies", self.q_dependencies)
        r.add_get("/telemetry/latency", self.q_latency)
        r.add_get("/telemetry/top", self.q_top)
        r.add_get("/telemetry/slow-sql", self.q_slow_sql)
        r.add_get("/telemetry/slo", self.q_slo)
        r.add_get("/telemetry/impact", self.q_impact)
        r.add_get("/telemetry/hosts", self.q_hosts)
        r.add_get("/telemetry/signals", self.q_signals)
        r.add_get("/health", self.health)
        r.add_get("/metrics", self.metrics)
        r.add_post("/telemetry/samples", self.post_samples)
        r.add_get("/telemetry/metrics", self.q_metrics)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen and start the writer; returns the base URL (``http://host:port``)."""
        self.loopback = is_loopback(host)
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        if self.series is not None:
            self._sampler = asyncio.get_running_loop().create_task(self._sample_loop())
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound}"
        return self.url

    async def stop(self) -> None:
        """Stop accepting, store everything queued, settle pending joins, close the store."""
        self._closing = True
        if self._runner is not None:
            await self._runner.cleanup()
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer_pool, self.ingestor.flush)
        close = getattr(self.store, "close", None)
        if close is not None:
            await loop.run_in_executor(self._writer_pool, close)
        self._writer_pool.shutdown()
        self._query_pool.shutdown()
        self._metrics_pool.shutdown()
        if self.series is not None:
            self.series.close()
        if self.keeper is not None:
            self.keeper.tsdb.close()

    async def drained(self) -> None:
        """Wait until everything accepted so far is stored (tests, benchmarks)."""
        while self._pending:
            await asyncio.sleep(0.005)

    async def settle(self) -> None:
        """Store everything and count every span still waiting for a join (tests)."""
        await self.drained()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer_pool, self.ingestor.flush)

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.config.batch_spans
        last_prune = clock.monotonic()
        while True:
            try:
                batch = await asyncio.wait_for(self._queue.get(), timeout=1.0)
            except TimeoutError:
                await loop.run_in_executor(self._writer_pool, self.ingestor.tick, clock.wall())
                batch = []
            if batch is None:
                return
            spans = batch  # the decoder's own list: extending it in place is safe
            await self._gather(spans, limit)
            if spans:
                try:
                    await loop.run_in_executor(
                        self._writer_pool, self.ingestor.ingest, spans, clock.wall()
                    )
                    self._store_error = ""
                except Exception as exc:  # the store failed: count, report, keep serving
                    self.failed += len(spans)
                    self._store_error = str(exc)
                    self._failed_at = clock.monotonic()
                    log.exception("storing %d spans failed", len(spans))
                finally:
                    self._pending -= len(spans)
            if clock.monotonic() - last_prune > self.config.prune_every_s:
                last_prune = clock.monotonic()
                now_us = int(clock.wall() * 1_000_000)
                await loop.run_in_executor(self._writer_pool, self.store.prune, now_us)
                if self.keeper is not None:
                    await loop.run_in_executor(
                        self._metrics_pool, self.keeper.tsdb.maintain, clock.wall()
                    )

    async def _gather(self, spans: list[Span], limit: int) -> None:
        """Extend `spans` from the queue up to `limit`; while fewer than `gather_spans` are
        at hand, wait for more up to `gather_s` (never when closing)."""
        queue = self._queue
        deadline = clock.monotonic() + self.config.gather_s
        while len(spans) < limit:
            if queue.empty():
                wait = deadline - clock.monotonic()
                if len(spans) >= self.config.gather_spans or wait <= 0 or self._closing:
                    return
                try:
                    more = await asyncio.wait_for(queue.get(), timeout=wait)
                except TimeoutError:
                    return
            else:
                more = queue.get_nowait()
            if more is None:
                queue.put_nowait(None)
                return
            spans.extend(more)

    def sample_host(self) -> None:
        """Take one host sample now (the sampler's step; tests call it directly)."""
        assert self.sampler is not None and self.series is not None
        self.series.add(self.host, self.sampler.sample(clock.wall()))

    async def _sample_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(1, self.config.host_metrics.interval_s)
        while True:
            try:
                await loop.run_in_executor(self._metrics_pool, self.sample_host)
            except Exception:  # a failed sample is a gap in the series, not a dead collector
                log.exception("sampling host metrics failed")
            now = clock.wall()
            await asyncio.sleep(interval - now % interval)  # on the interval's boundaries

    # -- security and errors ------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            self._authorize(request)
            return await handler(request)
        except CorralError as exc:
            return web.json_response(exc.to_dict(), status=exc.status)

    def _authorize(self, request: web.Request) -> None:
        path = request.path
        if path in OPEN_PATHS:
            return
        zipkin_or_ingest = path in INGEST_PATHS or path.startswith("/api/v2/") or path == "/metrics"
        if zipkin_or_ingest and self.loopback:
            return
        roles = ("ingest", "admin") if path in INGEST_PATHS else ("read", "admin")
        header = request.headers.get("Authorization", "")
        offered = header[7:].strip().encode() if header.startswith("Bearer ") else b""
        tokens = self.tokens()
        if offered and any(
            hmac.compare_digest(offered, tokens[r].encode()) for r in roles if tokens.get(r)
        ):
            return
        if not offered:
            raise Unauthorized(
                f"{request.method} {path} needs a token on this listener",
                f"send `Authorization: Bearer …` with the {roles[0]} token from $CORRAL_HOME/"
                f"{'ingest-token' if roles[0] == 'ingest' else 'read-token'}",
            )
        raise Forbidden(
            f"this token cannot call {request.method} {path}",
            f"use the {roles[0]} or admin token",
        )

    # -- ingest -------------------------------------------------------------------------
    def _admit(self, spans: list[Span]) -> web.Response | None:
        """Queue the spans, or answer why not (429/503), counting what is refused."""
        count = len(spans)
        self.received += count
        failing = self._store_error and clock.monotonic() - self._failed_at < STORE_BACKOFF_S
        if self._closing or failing:
            self.dropped += count
            reason = "shutting down" if self._closing else f"store failing: {self._store_error}"
            return _refuse(503, f"the collector cannot store spans now ({reason})", count)
        if self._pending + count > self.config.queue_spans:
            self.dropped += count
            return _refuse(429, "the collector is overloaded: its ingest queue is full", count)
        if count:
            self._pending += count
            self._queue.put_nowait(spans)
        return None

    async def post_zipkin(self, request: web.Request) -> web.Response:
        body = await request.read()
        ctype = request.content_type
        if ctype not in ("application/json", "text/plain", "application/octet-stream", ""):
            raise UserError(
                f"unsupported Content-Type {ctype} for Zipkin spans",
                "send Zipkin v2 JSON (application/json)",
            )
        spans = zipkin.decode(body)
        refused = self._admit(spans)
        return refused or web.Response(status=202)

    async def post_otlp(self, request: web.Request) -> web.Response:
        body = await request.read()
        ctype = request.headers.get("Content-Type", otlp.PROTOBUF)
        spans = otlp.decode(body, ctype)
        refused = self._admit(spans)
        if refused is not None:
            return refused
        payload, out_type = otlp.response(ctype)
        return web.Response(body=payload, content_type=out_type)

    # -- queries ------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._query_pool, lambda: fn(*args, **kwargs))

    async def z_services(self, request: web.Request) -> web.Response:
        return _json_response(await self._run(queries.services, self.store))

    async def z_spans(self, request: web.Request) -> web.Response:
        service = _required(request, "serviceName")
        return _json_response(await self._run(queries.span_names, self.store, service.lower()))

    async def z_remote(self, request: web.Request) -> web.Response:
        service = _required(request, "serviceName")
        return _json_response(await self._run(queries.remote_services, self.store, service.lower()))

    async def z_traces(self, request: web.Request) -> web.Response:
        q = request.query
        end_ms = _int(q, "endTs", int(clock.wall() * 1000))
        lookback_ms = _int(q, "lookback", 86_400_000)
        annotation = q.get("annotationQuery", "")
        query = TraceQuery(
            start_us=(end_ms - lookback_ms) * 1000,
            end_us=end_ms * 1000 + 1,
            service=q.get("serviceName", "").lower(),
            endpoint=q.get("spanName", "") if q.get("spanName", "all") != "all" else "",
            min_duration_us=_int(q, "minDuration", 0),
            max_duration_us=_int(q, "maxDuration", 0),
            error=True if "error" in annotation.split(" and ") else None,
            limit=_int(q, "limit", 10),
        )

        def run() -> bytes:
            ids = self.store.find_traces(query)
            return zipkin.encode_traces(self.store.trace(t) for t in ids)

        return web.Response(body=await self._run(run), content_type="application/json")

    async def z_trace(self, request: web.Request) -> web.Response:
        spans = await self._run(self.store.trace, request.match_info["id"].lower())
        if not spans:
            raise NotFound(f"no trace {request.match_info['id']}", "check the trace id")
        return web.Response(body=zipkin.encode(spans), content_type="application/json")

    async def z_dependencies(self, request: web.Request) -> web.Response:
        end_ms = _int(request.query, "endTs", int(clock.wall() * 1000))
        lookback_ms = _int(request.query, "lookback", 86_400_000)
        edges = await self._run(
            queries.dependencies, self.store, (end_ms - lookback_ms) * 1000, end_ms * 1000 + 1
        )
        return _json_response(queries.zipkin_links(edges))

    def _window(self, request: web.Request, default_s: int = 3600) -> tuple[int, int]:
        """`?start=&end=` in µs since the epoch, or `?minutes=N` back from now."""
        now_us = int(clock.wall() * 1_000_000)
        end = _int(request.query, "end", now_us)
        if "start" in request.query:
            return _int(request.query, "start", 0), end
        minutes = _int(request.query, "minutes", default_s // 60)
        return end - minutes * 60_000_000, end

    async def q_trace(self, request: web.Request) -> web.Response:
        return _json_response(await self._run(queries.trace, self.store, request.match_info["id"]))

    async def q_traces(self, request: web.Request) -> web.Response:
        start, end = self._window(request)
        q = request.query
        error = q.get("error")
        query = TraceQuery(
            start_us=start,
            end_us=end,
            service=q.get("service", ""),
            endpoint=q.get("endpoint", ""),
            min_duration_us=_int(q, "min_duration_us", 0),
            max_duration_us=_int(q, "max_duration_us", 0),
            error=None if error is None else error.lower() in ("1", "true", "yes"),
            limit=_int(q, "limit", 20),
        )
        return _json_response(await self._run(queries.search, self.store, query))

    async def q_dependencies(self, request: web.Request) -> web.Response:
        start, end = self._window(request)
        return _json_response(await self._run(queries.dependencies, self.store, start, end))

    async def q_latency(self, request: web.Request) -> web.Response:
        start, end = self._window(request)
        service = _required(request, "service")
        endpoint = _required(request, "endpoint")
        step = _int(request.query, "step_minutes", 1)
        result = await self._run(queries.latency, self.store, service, endpoint, start, end, step)
        return _json_response(result)

    async def q_top(self, request: web.Request) -> web.Response:
        start, end = self._window(request, default_s=300)
        q = request.query
        result = await self._run(
            queries.top,
            self.store,
            start,
            end,
            by=q.get("by", "calls"),
            group=q.get("group", "endpoint"),
            n=_int(q, "n", 10),
            service=q.get("service", ""),
        )
        return _json_response(result)

    async def q_slow_sql(self, request: web.Request) -> web.Response:
        start, end = self._window(request)
        threshold = _int(request.query, "threshold_us", 100_000)
        n = _int(request.query, "n", 10)
        result = await self._run(
            queries.slow_sql, self.store, start, end, threshold_us=threshold, n=n
        )
        return _json_response(result)

    async def q_slo(self, request: web.Request) -> web.Response:
        source = self.gateway_config
        config = await source() if source is not None else None
        routes = slo_report.objectives_of(config) if config is not None else []
        routes = slo_report.only(routes, request.query.get("route", ""))
        now_us = _int(request.query, "end", int(clock.wall() * 1_000_000))
        result = await self._run(slo_report.report, self.store, routes, now_us)
        return _json_response({"gateway_config": config is not None, "routes": result})

    async def q_impact(self, request: web.Request) -> web.Response:
        start, end = self._window(request, default_s=900)
        q = request.query

        def run() -> impact.Impact:
            hosts = self.ingestor.instance_hosts() if q.get("host") else {}
            return impact.impact(
                self.store,
                start,
                end,
                host=q.get("host", ""),
                instance=q.get("instance", ""),
                sql=q.get("sql", ""),
                hosts=hosts,
            )

        return _json_response(await self._run(run))

    async def q_hosts(self, request: web.Request) -> web.Response:
        series = self.series
        if series is None:
            raise NotFound(
                "this collector samples no host metrics",
                "run it with a home (python -m corral.telemetry.collector --home DIR)",
            )
        now_s = int(clock.wall())
        minutes = _int(request.query, "minutes", 60)
        if minutes <= 0:
            raise UserError(f"minutes={minutes} is not a positive number of minutes", "")
        host = request.query.get("host", self.host)
        resolution, rows = await self._run(
            series.points, host, now_s - minutes * 60, now_s + 1, now_s
        )
        return _json_response(
            {
                "host": host,
                "hosts": series.hosts(),
                "resolution_s": resolution,
                "fields": ["ts", *FIELDS],
                "points": rows,
            }
        )

    async def q_signals(self, request: web.Request) -> web.Response:
        """Per-minute series for the control plane's alert rules and "what changed" view."""
        now_us = _int(request.query, "end", int(clock.wall() * 1_000_000))
        minutes = _int(request.query, "minutes", 15)
        service = request.query.get("service", "")
        routes: list[slo_report.RouteObjectives] = []
        if request.query.get("slo", "1") != "0" and self.gateway_config is not None:
            config = await self.gateway_config()
            routes = slo_report.objectives_of(config) if config is not None else []
        series = self.series

        def run() -> signals.Signals:
            return signals.Signals(
                minute=now_us // 60_000_000,
                services=signals.services(self.store, now_us, minutes, service),
                objectives=signals.objectives(self.store, routes, now_us),
                hosts=signals.hosts(series, now_us // 1_000_000) if series is not None else None,
            )

        return _json_response(await self._run(run))

    async def health(self, request: web.Request) -> web.Response:
        return _json_response({"ok": not self._store_error, "pending": self._pending})

    async def metrics(self, request: web.Request) -> web.Response:
        lines = []
        for name, help_text, value in (
            ("spans_received_total", "Spans decoded from ingest requests", self.received),
            ("spans_stored_total", "Spans written to the span store", self.ingestor.stored),
            (
                "spans_dropped_total",
                "Spans refused with 429/503 (overload, shutdown)",
                self.dropped,
            ),
            ("spans_failed_total", "Spans lost because the store failed", self.failed),
            ("queue_spans", "Spans accepted and not yet stored", self._pending),
            (
                "link_waiting_spans",
                "Spans waiting for their caller/callee/root",
                self.ingestor.linker.waiting,
            ),
        ):
            kind = "counter" if name.endswith("_total") else "gauge"
            metric = f"corral_telemetry_{name}"
            lines += [
                f"# HELP {metric} {help_text}",
                f"# TYPE {metric} {kind}",
                f"{metric} {value}",
            ]
        if self.series is not None and self.sampler is not None:
            lines += exposition(self.host, self.series.latest.get(self.host), self.sampler.counters)
        if self.keeper is not None:
            lines += self.keeper.lines(clock.wall())
        openmetrics = wants_openmetrics(request.headers.get("Accept"))
        text = to_openmetrics(lines) if openmetrics else "\n".join(lines) + "\n"
        return web.Response(body=text.encode(), headers={"Content-Type": content_type(openmetrics)})

    def _keeper(self) -> MetricsKeeper:
        if self.keeper is None:
            raise NotFound(
                "this collector keeps no metric time series",
                "run it with a home (python -m corral.telemetry.collector --home DIR)",
            )
        return self.keeper

    async def post_samples(self, request: web.Request) -> web.Response:
        """Process metrics pushed by a node agent (``corral.agent.metrics_loop``)."""
        keeper = self._keeper()
        body = await request.read()
        loop = asyncio.get_running_loop()
        kept = await loop.run_in_executor(self._metrics_pool, keeper.ingest, body, clock.wall())
        return _json_response({"kept": kept})

    async def q_metrics(self, request: web.Request) -> web.Response:
        """``?name=&since=&until=|minutes=&step=&agg=&<label>=<value>``: one metric's series."""
        keeper = self._keeper()
        query = dict(request.query)
        return _json_response(await self._run(keeper.query, query, int(clock.wall())))


def _refuse(status: int, message: str, count: int) -> web.Response:
    body = {
        "code": "overloaded" if status == 429 else "unavailable",
        "message": f"{message}; {count} spans refused",
        "hint": "retry after the number of seconds in Retry-After",
    }
    return web.Response(
        body=_json.encode(body),
        status=status,
        content_type="application/json",
        headers={"Retry-After": "1"},
    )


def _json_response(data: Any) -> web.Response:
    return web.Response(body=_json.encode(data), content_type="application/json")


def _int(query: Mapping[str, str], name: str, default: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"query parameter {name}={raw!r} is not an integer", "") from None


def _required(request: web.Request, name: str) -> str:
    value = request.query.get(name, "")
    if not value:
        raise UserError(f"query parameter {name} is required", f"add ?{name}=…")
    return value


def store_path(home: Home) -> Path:
    return home.path / "telemetry" / "spans.db"


def home_tokens(home: Home) -> Callable[[], Mapping[str, str]]:
    """Tokens as the control plane generated them; re-read while any is missing."""
    cache: dict[str, str] = {}

    def tokens() -> Mapping[str, str]:
        if len(cache) < 3:
            for role in ("admin", "read", "ingest"):
                token = home.token(role)
                if token:
                    cache[role] = token
        return cache

    return tokens


def store_gateway_config(home: Home) -> GatewaySource:
    """The live gateway config, read through the API's remote Store each time it is asked
    (None when no gateway is configured); raises PlatformUnavailable with no control plane."""

    async def fetch() -> GatewayConfig | None:
        store = RemoteStore.for_home(home, "read")
        try:
            kv = await store.get(GATEWAY_CONFIG_KEY)
        finally:
            await store.close()
        if kv is None:
            return None
        record = msgspec.json.decode(kv.value)
        return validate_gateway_data(
            record["config"], source=f"gateway config v{record.get('version')}", mode="platform"
        )

    return fetch


async def serve(home: Home, host: str, port: int, config: CollectorConfig | None = None) -> None:
    """Run a collector for `home` until SIGTERM/SIGINT; its URL goes to ``$HOME/collector``
    once it listens."""
    home.path.mkdir(parents=True, exist_ok=True)
    path = store_path(home)
    path.parent.mkdir(exist_ok=True)
    config = config or CollectorConfig()
    collector = Collector(
        SqliteSpanStore(path, config.retention),
        tokens=home_tokens(home),
        config=config,
        gateway_config=store_gateway_config(home),
        series=HostSeries(path.parent / "metrics.db", config.host_metrics),
        disk_path=home.path,
        tsdb=TimeSeriesDB(path.parent / "tsdb.db", config.metrics_retention),
    )
    url = await collector.start(host, port)
    home.write_atomic("collector", url + "\n")
    log.info("collector serving at %s", url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scraper = None  # the platform's own counters into the time series (metrics_api)
    if collector.keeper is not None:
        scraper = loop.create_task(scrape_platform(collector.keeper, home))
    try:
        await stop.wait()
    finally:
        if scraper is not None:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
        with contextlib.suppress(FileNotFoundError):
            (home.path / "collector").unlink()
        await collector.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m corral.telemetry.collector")
    parser.add_argument("--home", default=None, help="$CORRAL_HOME (default: the environment's)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--metrics-retention",
        default="",
        help="RESOLUTION:KEEP per tier, finest first (default 10s:24h,1m:7d,1h:90d)",
    )
    args = parser.parse_args(argv)
    gc.set_threshold(*GC_THRESHOLD)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = CollectorConfig()
    if args.metrics_retention:
        config = CollectorConfig(metrics_retention=parse_tiers(args.metrics_retention))
    asyncio.run(serve(Home.resolve(args.home), args.host, args.port, config))


if __name__ == "__main__":
    main()
