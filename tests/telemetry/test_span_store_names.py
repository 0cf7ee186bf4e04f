"""Raw span names (``GET /api/orders/123``) are unbounded: the span store keeps them in the
span body, not as rows of its `names` table, and still answers traces with them unchanged."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from corral.telemetry.model import Span
from corral.telemetry.normalize import facts
from corral.telemetry.store import SqliteSpanStore
from tests.telemetry.gen import BASE_US


def _names_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM names").fetchone()[0])


def _order_span(i: int) -> Span:
    path = f"/api/orders/{i}"
    return Span(
        f"{i:032x}", f"{i:016x}", None, f"GET {path}", "SERVER", "gateway", "gateway-0",
        BASE_US + i * 1000, 5_000, attributes={"http.request.method": "GET", "url.path": path},
    )  # fmt: skip


def test_ten_thousand_distinct_raw_span_names_add_a_handful_of_names_rows(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spans.db"
    store = SqliteSpanStore(path)
    try:
        store.write([(_order_span(0), facts(_order_span(0)))], {})
        before = _names_rows(path)
        spans = [_order_span(i) for i in range(1, 10_001)]
        for i in range(0, len(spans), 1000):
            store.write([(s, facts(s)) for s in spans[i : i + 1000]], {})
        assert _names_rows(path) - before <= 5
        assert [s.name for s in store.trace(f"{4242:032x}")] == ["GET /api/orders/4242"]
    finally:
        store.close()


def test_spans_named_by_id_or_by_text_read_back_unchanged_after_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spans.db"
    store = SqliteSpanStore(path)
    span = _order_span(7)
    templated = Span(
        "ab" * 16, "cd" * 8, None, facts(span).endpoint, "SERVER", "gateway", "gateway-0",
        BASE_US, 1_000,
    )  # fmt: skip
    try:
        store.write([(span, facts(span)), (templated, facts(templated))], {})
    finally:
        store.close()
    reopened = SqliteSpanStore(path)  # names come back from the table, bodies from disk
    try:
        assert [s.name for s in reopened.trace(span.trace_id)] == ["GET /api/orders/7"]
        assert [s.name for s in reopened.trace(templated.trace_id)] == [facts(span).endpoint]
    finally:
        reopened.close()
