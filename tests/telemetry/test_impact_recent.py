"""Impact over the last seconds: a window that cuts minutes is answered exactly (raw spans at
the edges, rollups inside), a hung instance is blamed for the calls it never answered, and the
verdict against a baseline names the APIs that got worse — and only those."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.telemetry.collector import Ingestor
from corral.telemetry.impact import changes, impact
from corral.telemetry.impact_core import Sample, affected, learn_addresses
from corral.telemetry.model import Span
from corral.telemetry.normalize import facts, sql_fingerprint
from corral.telemetry.store import SqliteSpanStore
from tests.telemetry.gen import BASE_US
from tests.telemetry.test_impact import SLOW_SQL, entry, got, shop

S = 1_000_000


@pytest.fixture(scope="module")
def stored(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SqliteSpanStore, list[Span]]]:
    spans = shop(11, 500)
    store = SqliteSpanStore(tmp_path_factory.mktemp("recent") / "spans.db")
    ingestor = Ingestor(store, window_s=60)
    for i in range(0, len(spans), 97):
        ingestor.ingest(spans[i : i + 97], 0.0)
    ingestor.flush()
    yield store, spans
    store.close()


@pytest.mark.parametrize(
    "window",
    [
        (BASE_US + 17_300_000, BASE_US + 245_900_000),  # both edges cut a minute
        (BASE_US + 70 * S, BASE_US + 95 * S),  # inside one minute
        (BASE_US + 120 * S, BASE_US + 180 * S + 1),  # one whole minute and one µs
    ],
)
def test_a_window_that_cuts_minutes_counts_exactly_the_spans_that_start_in_it(
    stored: tuple[SqliteSpanStore, list[Span]], window: tuple[int, int]
) -> None:
    store, spans = stored
    lo, hi = window

    def brute_in(hit: Callable[[Span], bool]) -> dict[str, tuple[int, ...]]:
        """api → (requests, api time, calls at the target, target time, target errors)."""
        roots = {s.trace_id: s for s in spans if s.parent_id is None}
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
        for s in spans:
            if not lo <= s.start_us < hi:
                continue
            row = out[_api(roots[s.trace_id])]
            if s.parent_id is None:
                row[0] += 1
                row[1] += s.duration_us
            if hit(s):
                row[2:] = [row[2] + 1, row[3] + s.duration_us, row[4] + s.error]
        return {api: tuple(v) for api, v in out.items() if v[2]}

    slow = impact(store, lo, hi, instance="orders-1")
    assert got(slow) == brute_in(lambda s: s.instance == "orders-1" and entry(s))
    assert slow.apis  # the window is long enough to see the slow instance's APIs
    fingerprint = sql_fingerprint(SLOW_SQL.format(n=1))
    by_sql = impact(store, lo, hi, sql=fingerprint)
    assert got(by_sql) == brute_in(lambda s: facts(s).fingerprint == fingerprint)


def _api(root: Span) -> str:
    return f"{root.service} {facts(root).endpoint}"


def test_a_busy_partial_minute_falls_back_to_its_whole_minute(
    stored: tuple[SqliteSpanStore, list[Span]],
) -> None:
    store, _ = stored
    lo, hi = BASE_US + 70 * S, BASE_US + 95 * S
    capped = impact(store, lo, hi, instance="orders-1", raw_traces=1)
    whole = impact(store, BASE_US + 60 * S, BASE_US + 120 * S, instance="orders-1")
    assert got(capped) == got(whole)


def _request(rng: random.Random, t: int, payments: str, *, hung: bool = False) -> list[Span]:
    """One order: gateway → orders → payments at ``payments`` (127.0.0.1:900N). A hung
    payments instance answers nothing: the orders client span times out after 3 s."""
    trace = f"{rng.getrandbits(128):032x}"
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(4)]
    port = {"payments-0": "9000", "payments-1": "9001", "payments-2": "9001"}[payments]
    call = 3 * S if hung else 2_000
    total = call + 1_000
    spans = [
        Span(trace, ids[0], None, "POST /api/orders", "SERVER", "gw", "gw-0", t, total,
             error=hung, attributes={"http.method": "POST", "http.route": "/api/orders"}),
        Span(trace, ids[1], ids[0], "POST /pay", "SERVER", "orders", "orders-0", t + 10,
             total - 20, error=hung, attributes={"http.method": "POST", "http.route": "/pay"}),
        Span(trace, ids[2], ids[1], "POST", "CLIENT", "orders", "orders-0", t + 20, call,
             error=hung, attributes={"http.method": "POST",
                                     "http.url": f"http://127.0.0.1:{port}/charge"}),
    ]  # fmt: skip
    if not hung:
        spans.append(
            Span(
                trace,
                ids[3],
                ids[2],
                "POST /charge",
                "SERVER",
                "payments",
                payments,
                t + 30,
                call - 20,
                attributes={"http.method": "POST", "http.route": "/charge"},
            )
        )
    return spans


def test_a_hung_instance_is_blamed_for_the_calls_it_never_answered(tmp_path: Path) -> None:
    rng = random.Random(5)
    t0 = BASE_US + 30 * S  # mid-minute: the fault shares its minute with healthy traffic
    spans: list[Span] = []
    for i in range(40):  # 20 s of healthy traffic to both instances before the fault
        spans += _request(rng, t0 - 20 * S + i * S // 2, f"payments-{i % 2}")
    for i in range(10):  # then payments-1 hangs: half the orders time out
        spans += _request(rng, t0 + i * S // 2, f"payments-{i % 2}", hung=bool(i % 2))
    store = SqliteSpanStore(tmp_path / "spans.db")
    ingestor = Ingestor(store, window_s=60)
    ingestor.ingest(spans, 0.0)
    ingestor.flush()
    try:
        now = impact(store, t0, t0 + 5 * S, instance="payments-1")
        baseline = impact(store, t0 - 5 * S, t0, instance="payments-1")
        healthy = impact(store, t0, t0 + 5 * S, instance="payments-0")
        healthy_before = impact(store, t0 - 5 * S, t0, instance="payments-0")
    finally:
        store.close()
    [api] = now.apis
    assert api.api == "gw POST /api/orders"
    assert (api.calls, api.target_errors) == (5, 5)  # the 5 timed-out calls, nothing else
    assert api.target_p95_us >= 2 * S
    [worse] = changes(now, baseline)
    assert worse.api == "gw POST /api/orders" and worse.why == "errors 0% → 100%"
    assert healthy.apis and changes(healthy, healthy_before) == []  # its twin is fine


def test_the_verdict_names_slower_apis_and_ignores_steady_ones() -> None:
    base = [Sample("a", 100, 1, 10_000.0), Sample("b", 100, 0, 10_000.0)]
    now = [
        Sample("a", 50, 0, 900_000.0),  # slower by far
        Sample("b", 50, 1, 12_000.0),  # one error in 50 and a little slower: noise
        Sample("c", 3, 0, 5_000_000.0),  # new to the target: no latency to compare with
    ]
    [worse] = affected(now, base)
    assert worse.api == "a" and worse.why == "p95 10.0 ms → 900.0 ms"
    errors = affected([Sample("c", 4, 4, 1.0)], [])
    assert [w.why for w in errors] == ["errors 0% → 100%"]


def test_a_port_reused_by_a_replacement_blames_whoever_held_it_at_the_time() -> None:
    rng = random.Random(9)
    old = [_request(rng, BASE_US + i * S, "payments-1") for i in range(10)]
    new = [_request(rng, BASE_US + 20 * S + i * S, "payments-2") for i in range(10)]
    holders = learn_addresses(new + old)  # arrival order does not matter
    assert holders["127.0.0.1:9001"].at(BASE_US + 15 * S) == "payments-1"
    assert holders["127.0.0.1:9001"].at(BASE_US + 25 * S) == "payments-2"
    shared = [_request(rng, BASE_US + i * S, f"payments-{1 + i % 2}") for i in range(10)]
    assert "127.0.0.1:9001" not in learn_addresses(shared)  # answers alternate: ambiguous
