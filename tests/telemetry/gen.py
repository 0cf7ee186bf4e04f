"""Generated traffic for the telemetry tests, and the brute-force answers to check against.

`traces(rng, n)` makes shop-like traces: a gateway root span, calls to instrumented services
(some as Zipkin shared spans), SQL statements with literals, calls to an uninstrumented
payment host, errors. `brute_cells` computes every rollup cell from the complete span list
with no join window — what the linker must reproduce whatever the arrival order.
"""

from __future__ import annotations

import random
from collections import defaultdict

from corral.telemetry.model import CALLEE_KINDS, CALLER_KINDS, Span
from corral.telemetry.normalize import facts
from corral.telemetry.rollup import EDGE_IN, EDGE_OUT, MINUTE_US, ROOT, Cell, Key, api_name

BASE_US = 1_699_999_200_000_000  # on an hour boundary: partitions align


def _id(rng: random.Random, n: int = 16) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _skus(rng: random.Random) -> str:
    return ", ".join(str(rng.randrange(99)) for _ in range(rng.randrange(1, 5)))


def traces(rng: random.Random, n: int, *, start_us: int = BASE_US, span_s: int = 600) -> list[Span]:
    spans: list[Span] = []
    for _ in range(n):
        trace = _id(rng, 32)
        t0 = start_us + rng.randrange(span_s * 1_000_000)
        order = rng.randrange(1, 10_000)
        gw_id, gw_client = _id(rng), _id(rng)
        total = rng.randrange(2_000, 400_000)
        err = rng.random() < 0.1
        path = rng.choice([f"/api/orders/{order}", "/api/orders", f"/api/users/{_id(rng, 12)}"])
        method = "GET" if "users" in path or order % 2 else "POST"
        spans.append(
            Span(trace, gw_id, None, f"{method} {path}", "SERVER", "gateway", "gateway-0", t0,
                 total, err, "boom" if err else "",
                 {"http.request.method": method, "url.path": path})
        )  # fmt: skip
        shared = rng.random() < 0.2
        spans.append(
            Span(trace, gw_client, gw_id, method, "CLIENT", "gateway", "gateway-0", t0 + 10,
                 total - 20, err, attributes={"http.method": method, "http.url": f"http://127.0.0.1:9001{path}"})
        )  # fmt: skip
        orders_id = gw_client if shared else _id(rng)
        inst = f"orders-{rng.randrange(2)}"
        spans.append(
            Span(trace, orders_id, gw_id if shared else gw_client, method, "SERVER", "orders",
                 inst, t0 + 20, total - 40, err, attributes={"http.method": method,
                 "http.target": path + "?x=1"}, shared=shared)
        )  # fmt: skip
        parent = orders_id
        t = t0 + 30
        for _q in range(rng.randrange(0, 4)):
            dur = rng.choice([300, 900, 5_000, 120_000, 250_000])
            stmt = rng.choice(
                [
                    f"SELECT * FROM orders WHERE id = {order}",
                    f"SELECT qty FROM stock WHERE sku IN ({_skus(rng)})",
                    f"UPDATE stock SET qty = qty - {rng.randrange(9)} WHERE sku = 'sku-{order}'",
                ]
            )
            spans.append(
                Span(trace, _id(rng), parent, "SELECT", "CLIENT", "orders", inst, t, dur,
                     attributes={"db.system": "sqlite", "db.statement": stmt})
            )  # fmt: skip
            t += dur
        if rng.random() < 0.5:
            pay_client, pay_server = _id(rng), _id(rng)
            spans.append(
                Span(trace, pay_client, parent, "POST", "CLIENT", "orders", inst, t, 5_000,
                     attributes={"http.request.method": "POST", "url.full": "http://127.0.0.1:9002/pay"})
            )  # fmt: skip
            spans.append(
                Span(trace, pay_server, pay_client, "POST /pay", "SERVER", "payments",
                     "payments-0", t + 5, 4_000, rng.random() < 0.2,
                     attributes={"http.request.method": "POST", "http.route": "/pay"})
            )  # fmt: skip
            spans.append(
                Span(trace, _id(rng), pay_server, "POST", "CLIENT", "payments", "payments-0",
                     t + 10, 3_000, attributes={"http.request.method": "POST",
                     "url.full": "https://api.bank.example/v1/charges",
                     "server.address": "api.bank.example"})
            )  # fmt: skip
    return spans


def brute_keys(spans: list[Span]) -> list[tuple[int, Key, Span]]:
    by_id: dict[tuple[str, str], Span] = {}
    callee: dict[tuple[str, str], str] = {}
    roots: dict[str, str] = {}
    for s in spans:
        if not (s.shared and s.kind in CALLEE_KINDS):
            by_id[(s.trace_id, s.span_id)] = s
        if s.kind in CALLEE_KINDS and s.caller_id:
            callee[(s.trace_id, s.caller_id)] = s.service
        if s.parent_id is None:
            roots[s.trace_id] = api_name(s.service, facts(s).endpoint)
    out = []
    for s in spans:
        f = facts(s)
        flags, peer, api = 0, "", ""
        if s.parent_id is None:
            flags |= ROOT
            api = roots[s.trace_id]
        elif s.kind in CALLEE_KINDS or s.kind in CALLER_KINDS:
            api = roots.get(s.trace_id, "")
        if s.kind in CALLEE_KINDS and s.caller_id:
            caller = by_id.get((s.trace_id, s.caller_id))
            if caller is not None and caller.service != s.service:
                peer, flags = caller.service, flags | EDGE_IN
        elif s.kind in CALLER_KINDS:
            found = callee.get((s.trace_id, s.span_id))
            if found:
                peer = found
            elif f.peer:
                peer, flags = f.peer, flags | EDGE_OUT
        key = Key(s.service, s.instance, f.endpoint, s.kind, peer, f.fingerprint, api, flags)
        out.append((s.start_us // MINUTE_US, key, s))
    return out


def brute_cells(spans: list[Span]) -> dict[tuple[int, Key], Cell]:
    cells: dict[tuple[int, Key], Cell] = defaultdict(Cell)
    for minute, key, s in brute_keys(spans):
        cells[(minute, key)].add(s.duration_us, s.error)
    return dict(cells)


def as_tuples(cells: dict[tuple[int, Key], Cell]) -> dict[tuple[int, Key], tuple[object, ...]]:
    return {k: (c.count, c.errors, c.sum_us, tuple(c.hist)) for k, c in cells.items()}
