"""Rollups computed at ingest equal a brute-force computation over the raw spans, whatever the
arrival order; the queries over them equal brute-force answers; retention drops partitions."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.telemetry import queries
from corral.telemetry.collector import Ingestor
from corral.telemetry.model import CALLEE_KINDS, Span
from corral.telemetry.normalize import Normalizer, facts
from corral.telemetry.rollup import EDGE_IN, EDGE_OUT, ROOT, Cell, Key, Linker, accumulate, quantile
from corral.telemetry.store import Retention, SqliteSpanStore, TraceQuery
from tests.telemetry.gen import BASE_US, as_tuples, brute_cells, brute_keys, traces

WINDOW = (BASE_US - 60_000_000, BASE_US + 700_000_000)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 40))
def test_linker_cells_equal_brute_force_in_any_arrival_order(seed: int, count: int) -> None:
    rng = random.Random(seed)
    spans = traces(rng, count)
    expected = as_tuples(brute_cells(spans))
    rng.shuffle(spans)
    linker = Linker(window_s=60)
    cells: dict[tuple[int, Key], Cell] = {}
    for i, span in enumerate(spans):
        accumulate(cells, linker.offer(span, facts(span), i * 0.001))
    accumulate(cells, linker.flush())
    assert as_tuples(cells) == expected
    assert linker.waiting == 0


_ATTRIBUTE_VALUES = {
    "http.request.method": ["GET", "post", ""],
    "http.method": ["PUT", ""],
    "http.route": ["/orders/{id}", "/o/123", ""],
    "url.path": ["/orders/42", "/a/9f1c2e3d4b5a6978/b", ""],
    "http.target": ["/x/7?q=1", ""],
    "url.full": ["http://h:1/users/5?x", "https://u:p@api.example/v1/c", ""],
    "http.url": ["http://old/2", ""],
    "db.statement": ["SELECT * FROM t WHERE id = 1", ""],
    "db.query.text": ["UPDATE t SET a = 'x' WHERE id IN (1, 2)", ""],
    "db.system": ["sqlite", ""],
    "db.system.name": ["postgresql", ""],
    "peer.service": ["billing", ""],
    "server.address": ["db.local", ""],
    "net.peer.name": ["old.local", ""],
    "network.peer.address": ["10.0.0.9", ""],
    "server.port": ["5432", ""],
    "net.peer.port": ["15432", ""],
    "messaging.system": ["kafka", ""],
    "messaging.destination.name": ["orders", ""],
    "messaging.destination": ["legacy", ""],
}


@settings(max_examples=120, deadline=None)
@given(
    attrs=st.dictionaries(
        st.sampled_from(sorted(_ATTRIBUTE_VALUES)), st.integers(0, 2), max_size=8
    ),
    kind=st.sampled_from(["", "SERVER", "CLIENT", "PRODUCER", "CONSUMER"]),
    name=st.sampled_from(["GET /orders/123", "SELECT", "send", "/a/b/77"]),
    remote=st.sampled_from(["", "cache"]),
    peer=st.sampled_from(["", "10.1.1.1:80"]),
)
def test_the_ingest_normaliser_names_what_the_pure_rules_name(
    attrs: dict[str, int], kind: str, name: str, remote: str, peer: str
) -> None:
    """Old and new semantic-convention names, empty values, every kind: the memoising
    normaliser the collector uses gives the same endpoint, peer and SQL fingerprint."""
    values = {k: _ATTRIBUTE_VALUES[k][i % len(_ATTRIBUTE_VALUES[k])] for k, i in attrs.items()}
    span = Span(
        "a" * 32, "b" * 16, None, name, kind, "svc", "svc-0", 0, 1,
        attributes=values, remote_service=remote, peer=peer,
    )  # fmt: skip
    normalizer = Normalizer(cache_size=4)
    assert normalizer.facts(span) == facts(span)
    assert normalizer.facts(span) == facts(span)  # and from its memo tables


def test_a_batch_offered_into_one_list_rolls_up_like_span_by_span() -> None:
    spans = traces(random.Random(5), 60)
    random.Random(6).shuffle(spans)
    one_by_one, batched = Linker(window_s=60), Linker(window_s=60)
    expected: dict[tuple[int, Key], Cell] = {}
    for span in spans:
        accumulate(expected, one_by_one.offer(span, facts(span), 1.0))
    accumulate(expected, one_by_one.flush())
    done: list[tuple[int, Key, Span]] = []
    for span in spans:
        batched.offer(span, facts(span), 1.0, done)
    done += batched.flush()
    cells: dict[tuple[int, Key], Cell] = {}
    accumulate(cells, done)
    assert as_tuples(cells) == as_tuples(expected) == as_tuples(brute_cells(spans))


def test_spans_whose_partners_never_come_are_counted_after_the_window() -> None:
    spans = traces(random.Random(3), 20)
    orphans = [s for s in spans if s.kind != "SERVER" or s.parent_id is not None]  # no roots
    linker = Linker(window_s=5)
    cells: dict[tuple[int, Key], Cell] = {}
    for span in orphans:
        accumulate(cells, linker.offer(span, facts(span), 100.0))
    assert sum(c.count for c in cells.values()) < len(orphans)
    accumulate(cells, linker.expire(104.9))
    accumulate(cells, linker.expire(105.0))
    assert sum(c.count for c in cells.values()) == len(orphans)
    assert linker.waiting == 0
    assert all(key.api == "" for (_m, key) in cells if not key.flags & ROOT)


def _stored(tmp_path: Path, spans: list[Span]) -> SqliteSpanStore:
    store = SqliteSpanStore(tmp_path / "spans.db")
    ingestor = Ingestor(store, window_s=60)
    shuffled = list(spans)
    random.Random(9).shuffle(shuffled)
    for i in range(0, len(shuffled), 97):
        ingestor.ingest(shuffled[i : i + 97], 0.0)
    ingestor.flush()
    return store


def test_store_rollups_queries_and_traces_equal_brute_force(tmp_path: Path) -> None:
    spans = traces(random.Random(11), 300)
    store = _stored(tmp_path, spans)
    try:
        _check_rollups(store, spans)
        _check_queries(store, spans)
        _check_traces(store, spans)
    finally:
        store.close()


def _check_rollups(store: SqliteSpanStore, spans: list[Span]) -> None:
    rows = store.rollups(*WINDOW, step_minutes=1)
    got = {(r.minute, r.key): (r.calls, r.errors, r.sum_us, tuple(r.hist)) for r in rows}
    assert got == as_tuples(brute_cells(spans))


def _check_queries(store: SqliteSpanStore, spans: list[Span]) -> None:
    keyed = brute_keys(spans)
    # dependencies: parent → child edges with calls and errors
    edges: dict[tuple[str, str, bool], list[int]] = defaultdict(lambda: [0, 0])
    for _m, key, s in keyed:
        if key.flags & EDGE_IN:
            e = edges[(key.peer, key.service, False)]
        elif key.flags & EDGE_OUT:
            e = edges[(key.service, key.peer, True)]
        else:
            continue
        e[0] += 1
        e[1] += s.error
    got = {
        (e.parent, e.child, e.uninstrumented): [e.calls, e.errors]
        for e in queries.dependencies(store, *WINDOW)
    }
    assert got == dict(edges)
    assert ("gateway", "orders", False) in got and ("orders", "sqlite", True) in got
    assert ("payments", "api.bank.example", True) in got
    # TOP-N endpoints by calls, hotspot and p95
    per_endpoint: dict[tuple[str, str], list[Span]] = defaultdict(list)
    for _m, key, s in keyed:
        if key.kind in CALLEE_KINDS or key.flags & ROOT:
            per_endpoint[(key.service, key.endpoint)].append(s)
    by_calls = sorted(per_endpoint, key=lambda k: (-len(per_endpoint[k]), k))
    assert [
        (r.service, r.endpoint) for r in queries.top(store, *WINDOW, by="calls", n=5)
    ] == by_calls[:5]
    hot = sorted(per_endpoint, key=lambda k: (-sum(s.duration_us for s in per_endpoint[k]), k))
    assert [(r.service, r.endpoint) for r in queries.top(store, *WINDOW, by="hotspot", n=3)] == hot[
        :3
    ]
    services = queries.top(store, *WINDOW, group="service", n=10)
    assert {r.service: r.calls for r in services} == {
        svc: sum(len(v) for (s2, _e), v in per_endpoint.items() if s2 == svc)
        for svc in {s for s, _ in per_endpoint}
    }
    # latency: the histogram of one endpoint and its percentiles
    name = ("orders", "GET /api/orders/{id}")
    lat = queries.latency(store, *name, *WINDOW, step_minutes=5)
    cell = Cell()
    for s in per_endpoint[name]:
        cell.add(s.duration_us, s.error)
    assert (lat.calls, lat.histogram) == (cell.count, cell.hist)
    assert lat.p99_us == quantile(cell.hist, 0.99)
    assert sum(p.calls for p in lat.series) == cell.count and len(lat.series) >= 2
    # slow SQL: statements with p95 over 100 ms, the APIs they serve and their share of time
    slow = queries.slow_sql(store, *WINDOW, threshold_us=100_000, n=10)
    assert slow, "the generated data has slow statements"
    api_time: dict[str, int] = defaultdict(int)
    for _m, key, s in keyed:
        if key.flags & ROOT:
            api_time[key.api] += s.duration_us
    for st_ in slow:
        db = [
            (k, s)
            for _m, k, s in keyed
            if k.fingerprint == st_.fingerprint and k.service == st_.service
        ]
        cell = Cell()
        for _k, s in db:
            cell.add(s.duration_us, s.error)
        assert quantile(cell.hist, 0.95) >= 100_000
        assert st_.calls == cell.count
        per_api: dict[str, int] = defaultdict(int)
        for k, s in db:
            per_api[k.api] += s.duration_us
        assert {a.api: a.db_time_us for a in st_.apis} == dict(per_api)
        for a in st_.apis:
            assert a.share == per_api[a.api] / api_time[a.api]
            assert a.api.startswith("gateway ")


def _check_traces(store: SqliteSpanStore, spans: list[Span]) -> None:
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        by_trace[s.trace_id].append(s)
    some = sorted(by_trace)[:5]
    for trace_id in some:
        got = store.trace(trace_id)
        assert sorted(got, key=lambda s: (s.span_id, s.kind)) == sorted(
            by_trace[trace_id], key=lambda s: (s.span_id, s.kind)
        )
        w = queries.trace(store, trace_id)
        assert w.rows[0].depth == 0 and w.rows[0].span.parent_id is None
        assert len(w.rows) == len(by_trace[trace_id])
    # search: traces with an orders span slower than 200 ms, newest first
    q = TraceQuery(
        start_us=WINDOW[0], end_us=WINDOW[1], service="orders", min_duration_us=200_000, limit=1000
    )
    expected = {s.trace_id for s in spans if s.service == "orders" and s.duration_us >= 200_000}
    found = store.find_traces(q)
    assert set(found) == expected
    errors = TraceQuery(start_us=WINDOW[0], end_us=WINDOW[1], error=True, limit=1000)
    assert set(store.find_traces(errors)) == {s.trace_id for s in spans if s.error}
    endpoint = TraceQuery(start_us=WINDOW[0], end_us=WINDOW[1], service="gateway",
                          endpoint="GET /api/users/{id}", limit=3)  # fmt: skip
    summaries = queries.search(store, endpoint)
    assert len(summaries) == 3
    starts = [t.start_us for t in summaries]
    assert starts == sorted(starts, reverse=True)
    assert all(t.root_name.startswith("GET /api/users/") for t in summaries)


def test_retention_drops_old_partitions_and_the_size_cap_drops_the_oldest(tmp_path: Path) -> None:
    retention = Retention(partition_s=60, spans_s=300, max_bytes=1 << 40)
    store = SqliteSpanStore(tmp_path / "spans.db", retention)
    try:
        spans = traces(random.Random(5), 200, span_s=600)  # 10 one-minute partitions
        ingestor = Ingestor(store)
        ingestor.ingest(spans, 0.0)
        ingestor.flush()
        total = store.span_count()
        assert store.prune(BASE_US + 600_000_000) == 5  # older than 5 minutes
        kept = store.span_count()
        assert 0 < kept < total
        assert all(s.start_us >= BASE_US + 300_000_000 for s in _all(store, spans))
        # rollups outlive raw spans: the dependency map still covers the whole window
        assert queries.dependencies(store, *WINDOW)
        store.retention = Retention(partition_s=60, spans_s=300, max_bytes=1)
        dropped = store.prune(BASE_US + 600_000_000)
        assert dropped == 4 and 0 < store.span_count() < kept  # the newest partition stays
    finally:
        store.close()


def _all(store: SqliteSpanStore, spans: list[Span]) -> list[Span]:
    return [s for t in sorted({s.trace_id for s in spans}) for s in store.trace(t)]
