"""The questions telemetry answers, over a `SpanStore`.

Raw spans answer only per-trace questions (a trace by id, trace search); everything that
summarises traffic — dependencies, latency distributions, TOP-N, slow SQL → APIs — sums rollup
cells (`rollup`), so it costs O(keys × minutes in the window) whatever the span count.

Vocabulary: an *entry* key is where a request enters a service (a SERVER/CONSUMER span, or a
root span of any kind): TOP-N and latency count those. An *API* is the root endpoint of a trace
(``"service endpoint"``, e.g. the gateway's route): slow SQL names the APIs its statements
serve and their share of those APIs' time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import msgspec

from corral.errors import NotFound, UserError
from corral.telemetry.model import CALLEE_KINDS, Span
from corral.telemetry.rollup import BOUNDS_US, BUCKETS, EDGE_IN, EDGE_OUT, ROOT, Key, quantile
from corral.telemetry.store import RollupRow, SpanStore, TraceQuery


class Stats(msgspec.Struct):
    calls: int = 0
    errors: int = 0
    sum_us: int = 0
    hist: list[int] = msgspec.field(default_factory=lambda: [0] * BUCKETS)

    def add(self, row: RollupRow) -> None:
        self.calls += row.calls
        self.errors += row.errors
        self.sum_us += row.sum_us
        hist = self.hist
        for i, n in enumerate(row.hist):
            hist[i] += n

    def p(self, q: float) -> float:
        return quantile(self.hist, q)


def is_entry(key: Key) -> bool:
    return key.kind in CALLEE_KINDS or bool(key.flags & ROOT)


# -- traces -----------------------------------------------------------------------------


class WaterfallRow(msgspec.Struct):
    depth: int
    offset_us: int  # from the trace's start
    span: Span


class Waterfall(msgspec.Struct):
    trace_id: str
    start_us: int
    duration_us: int
    services: list[str]
    errors: int
    rows: list[WaterfallRow]  # depth-first, children by start time


def waterfall(spans: list[Span]) -> list[WaterfallRow]:
    """Order spans as a tree: parents before children, siblings by start. Spans whose parent
    is missing (not yet arrived, or dropped) are shown as roots."""
    start = min(s.start_us for s in spans)
    ids = {s.span_id for s in spans if not s.shared}
    children: dict[str | None, list[Span]] = {}
    for s in spans:
        parent = s.parent_id if s.parent_id in ids else None
        if s.shared and any(o.span_id == s.span_id and not o.shared for o in spans):
            parent = s.span_id  # a shared server span hangs under its client span
        children.setdefault(parent, []).append(s)
    for group in children.values():
        group.sort(key=lambda s: (s.start_us, s.shared, s.span_id))
    rows: list[WaterfallRow] = []
    placed: set[int] = set()

    def visit(span: Span, depth: int) -> None:
        if id(span) in placed:
            return
        placed.add(id(span))
        rows.append(WaterfallRow(depth, span.start_us - start, span))
        if span.shared:
            return
        for child in children.get(span.span_id, ()):
            visit(child, depth + 1)

    for root in children.get(None, ()):
        visit(root, 0)
    for s in spans:  # cycles in bad data still show every span once
        if id(s) not in placed:
            visit(s, 0)
    return rows


def trace(store: SpanStore, trace_id: str) -> Waterfall:
    spans = store.trace(trace_id.lower())
    if not spans:
        raise NotFound(
            f"no trace {trace_id}",
            "trace ids are hex; spans arrive in batches, so retry in a few seconds",
        )
    start = min(s.start_us for s in spans)
    end = max(s.start_us + s.duration_us for s in spans)
    return Waterfall(
        trace_id=trace_id.lower(),
        start_us=start,
        duration_us=end - start,
        services=sorted({s.service for s in spans}),
        errors=sum(s.error for s in spans),
        rows=waterfall(spans),
    )


class TraceSummary(msgspec.Struct):
    trace_id: str
    root_service: str
    root_name: str
    start_us: int
    duration_us: int
    spans: int
    errors: int
    services: list[str]


def summarize(trace_id: str, spans: list[Span]) -> TraceSummary:
    root = next((s for s in spans if s.parent_id is None), spans[0])
    start = min(s.start_us for s in spans)
    end = max(s.start_us + s.duration_us for s in spans)
    return TraceSummary(
        trace_id=trace_id,
        root_service=root.service,
        root_name=root.name,
        start_us=start,
        duration_us=end - start,
        spans=len(spans),
        errors=sum(s.error for s in spans),
        services=sorted({s.service for s in spans}),
    )


def search(store: SpanStore, query: TraceQuery) -> list[TraceSummary]:
    out = []
    for trace_id in store.find_traces(query):
        spans = store.trace(trace_id)
        if spans:
            out.append(summarize(trace_id, spans))
    return out


# -- dependencies -----------------------------------------------------------------------


class Edge(msgspec.Struct):
    parent: str
    child: str
    calls: int
    errors: int
    avg_us: float
    p95_us: float
    uninstrumented: bool  # the child sends no spans: a database, a queue, an external host


def dependencies(store: SpanStore, start_us: int, end_us: int) -> list[Edge]:
    edges: dict[tuple[str, str, bool], Stats] = {}
    for row in store.rollups(
        start_us, end_us, where=lambda k: bool(k.flags & (EDGE_IN | EDGE_OUT))
    ):
        key = row.key
        if key.flags & EDGE_IN:
            edge = (key.peer, key.service, False)
        else:
            edge = (key.service, key.peer, True)
        edges.setdefault(edge, Stats()).add(row)
    return [
        Edge(parent, child, s.calls, s.errors, s.sum_us / s.calls if s.calls else 0.0, s.p(0.95), u)
        for (parent, child, u), s in sorted(edges.items())
    ]


# -- latency ----------------------------------------------------------------------------


class LatencyPoint(msgspec.Struct):
    start_us: int
    calls: int
    errors: int
    p50_us: float
    p90_us: float
    p99_us: float


class Latency(msgspec.Struct):
    service: str
    endpoint: str
    calls: int
    errors: int
    bounds_us: list[int]  # bucket upper bounds; the last bucket has no bound
    histogram: list[int]
    p50_us: float
    p90_us: float
    p99_us: float
    series: list[LatencyPoint]


def latency(
    store: SpanStore, service: str, endpoint: str, start_us: int, end_us: int, step_minutes: int = 1
) -> Latency:
    def wanted(k: Key) -> bool:
        return k.service == service and k.endpoint == endpoint and is_entry(k)

    total = Stats()
    steps: dict[int, Stats] = {}
    for row in store.rollups(start_us, end_us, step_minutes=max(1, step_minutes), where=wanted):
        total.add(row)
        steps.setdefault(row.minute, Stats()).add(row)
    series = [
        LatencyPoint(m * 60_000_000, s.calls, s.errors, s.p(0.5), s.p(0.9), s.p(0.99))
        for m, s in sorted(steps.items())
    ]
    return Latency(
        service,
        endpoint,
        total.calls,
        total.errors,
        list(BOUNDS_US),
        total.hist,
        total.p(0.5),
        total.p(0.9),
        total.p(0.99),
        series,
    )


# -- TOP-N ------------------------------------------------------------------------------

ORDERS = ("calls", "p95", "hotspot", "errors")
GROUPS = ("endpoint", "service")


class TopRow(msgspec.Struct):
    service: str
    endpoint: str  # "" when grouped by service
    calls: int
    errors: int
    sum_us: int  # the hotspot measure: Σ response time in the window
    avg_us: float
    p95_us: float


def top(
    store: SpanStore,
    start_us: int,
    end_us: int,
    *,
    by: str = "calls",
    group: str = "endpoint",
    n: int = 10,
    service: str = "",
) -> list[TopRow]:
    if by not in ORDERS or group not in GROUPS:
        raise UserError(
            f"cannot rank {group!r} by {by!r}",
            f"rank by one of {', '.join(ORDERS)}; group by one of {', '.join(GROUPS)}",
        )

    def wanted(k: Key) -> bool:
        return is_entry(k) and (not service or k.service == service)

    stats: dict[tuple[str, str], Stats] = {}
    for row in store.rollups(start_us, end_us, where=wanted):
        name = (row.key.service, row.key.endpoint if group == "endpoint" else "")
        stats.setdefault(name, Stats()).add(row)
    rows = [
        TopRow(
            svc, ep, s.calls, s.errors, s.sum_us, s.sum_us / s.calls if s.calls else 0.0, s.p(0.95)
        )
        for (svc, ep), s in stats.items()
    ]
    measure: dict[str, Callable[[TopRow], float]] = {
        "calls": lambda r: r.calls,
        "p95": lambda r: r.p95_us,
        "hotspot": lambda r: r.sum_us,
        "errors": lambda r: r.errors,
    }
    rank = measure[by]
    rows.sort(key=lambda r: (-rank(r), r.service, r.endpoint))
    return rows[:n]


# -- slow SQL ---------------------------------------------------------------------------


class ApiShare(msgspec.Struct):
    api: str  # "service endpoint" of the traces' root
    calls: int  # executions of the statement within this API's traces
    db_time_us: int
    api_time_us: int  # Σ duration of this API's requests in the window
    share: float  # db_time / api_time


class SlowStatement(msgspec.Struct):
    fingerprint: str
    service: str
    peer: str
    calls: int
    errors: int
    sum_us: int
    avg_us: float
    p95_us: float
    apis: list[ApiShare]


def slow_sql(
    store: SpanStore, start_us: int, end_us: int, *, threshold_us: int = 100_000, n: int = 10
) -> list[SlowStatement]:
    """Statement fingerprints whose p95 is at least `threshold_us`, slowest Σ time first, each
    with the APIs whose traces ran it and the share of those APIs' time it took."""
    rows = store.rollups(
        start_us, end_us, where=lambda k: bool(k.fingerprint) or bool(k.flags & ROOT)
    )
    statements: dict[tuple[str, str, str], Stats] = {}
    per_api: dict[tuple[str, str, str], dict[str, Stats]] = {}
    api_time: dict[str, int] = {}
    for row in rows:
        key = row.key
        if key.flags & ROOT:
            api_time[key.api] = api_time.get(key.api, 0) + row.sum_us
        if key.fingerprint:
            name = (key.service, key.peer, key.fingerprint)
            statements.setdefault(name, Stats()).add(row)
            if key.api:
                per_api.setdefault(name, {}).setdefault(key.api, Stats()).add(row)
    out = []
    for (svc, peer, fp), s in statements.items():
        p95 = s.p(0.95)
        if p95 < threshold_us:
            continue
        apis = [
            ApiShare(
                api,
                a.calls,
                a.sum_us,
                api_time.get(api, 0),
                a.sum_us / api_time[api] if api_time.get(api) else 0.0,
            )
            for api, a in per_api.get((svc, peer, fp), {}).items()
        ]
        apis.sort(key=lambda a: (-a.db_time_us, a.api))
        out.append(
            SlowStatement(fp, svc, peer, s.calls, s.errors, s.sum_us, s.sum_us / s.calls, p95, apis)
        )
    out.sort(key=lambda st: (-st.sum_us, st.fingerprint))
    return out[:n]


# -- Zipkin v2 query API helpers --------------------------------------------------------


def services(store: SpanStore) -> list[str]:
    return sorted({k.service for k in store.catalog() if k.service})


def span_names(store: SpanStore, service: str) -> list[str]:
    return sorted({k.endpoint for k in store.catalog() if k.service == service and k.endpoint})


def remote_services(store: SpanStore, service: str) -> list[str]:
    return sorted(
        {k.peer for k in store.catalog() if k.service == service and k.peer and not is_entry(k)}
    )


def zipkin_links(edges: Iterable[Edge]) -> list[dict[str, object]]:
    return [
        {"parent": e.parent, "child": e.child, "callCount": e.calls, "errorCount": e.errors}
        for e in edges
    ]
