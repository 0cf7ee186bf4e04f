"""Endpoint names, SQL fingerprints and peers: bounded names whatever the traffic."""

from __future__ import annotations

import pytest

from corral.telemetry.model import Span
from corral.telemetry.normalize import Normalizer, facts, normalize_path, sql_fingerprint


def span(kind: str = "SERVER", name: str = "op", **attrs: str) -> Span:
    return Span("a" * 32, "b" * 16, None, name, kind, "svc", "svc-0", 0, 1, attributes=attrs)


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/orders/123", "/orders/{id}"),
        ("/orders/123/items/9?x=1", "/orders/{id}/items/{id}"),
        ("/u/550e8400-e29b-41d4-a716-446655440000", "/u/{id}"),
        ("/blobs/9f1c2e3d4b5a6978", "/blobs/{id}"),
        ("/t/AbCdEfGh1234567890xyz", "/t/{id}"),
        ("/api/v1/orders", "/api/v1/orders"),
        ("/static/app.css", "/static/app.css"),
        ("/deadbeef", "/deadbeef"),  # hex-looking words without digits stay
    ],
)
def test_ids_in_paths_become_route_templates(path: str, template: str) -> None:
    assert normalize_path(path) == template


@pytest.mark.parametrize(
    ("sql", "fingerprint"),
    [
        ("SELECT * FROM t WHERE id = 42", "SELECT * FROM t WHERE id = ?"),
        ("select * from t where name = 'O''Brien'", "select * from t where name = ?"),
        ("SELECT a FROM t WHERE id IN (1, 2, 3)", "SELECT a FROM t WHERE id IN (?)"),
        ("SELECT a FROM t WHERE id in (1)", "SELECT a FROM t WHERE id IN (?)"),
        ("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y')", "INSERT INTO t (a, b) VALUES (?,?)"),
        ("SELECT  *\n FROM t -- why\n WHERE x = $1;", "SELECT * FROM t WHERE x = ?"),
        ("SELECT col1, t2.c FROM t2 WHERE v > -4.5e3", "SELECT col1, t2.c FROM t2 WHERE v > ?"),
    ],
)
def test_sql_literals_become_placeholders_and_lists_collapse(sql: str, fingerprint: str) -> None:
    assert sql_fingerprint(sql) == fingerprint


def test_old_and_new_semantic_convention_names_give_the_same_endpoint() -> None:
    old = span(**{"http.method": "GET", "http.target": "/orders/7?full=1"})
    new = span(**{"http.request.method": "GET", "url.path": "/orders/7"})
    full = span(**{"http.method": "GET", "http.url": "http://h:1/orders/7"})
    newest = span(**{"http.request.method": "GET", "url.full": "https://h/orders/7"})
    assert {facts(s).endpoint for s in (old, new, full, newest)} == {"GET /orders/{id}"}


def test_http_route_wins_over_the_raw_path() -> None:
    s = span(**{"http.method": "POST", "http.route": "/carts/{cart}", "url.path": "/carts/9"})
    assert facts(s).endpoint == "POST /carts/{cart}"


def test_spans_without_http_keep_their_name_with_ids_replaced() -> None:
    assert facts(span(name="GET /users/12345")).endpoint == "GET /users/{id}"
    assert facts(span(name="process-batch")).endpoint == "process-batch"


def test_statement_from_old_or_new_name_is_fingerprinted() -> None:
    old = span("CLIENT", **{"db.system": "sqlite", "db.statement": "SELECT 1 FROM t WHERE a=5"})
    new = span("CLIENT", **{"db.system": "sqlite", "db.query.text": "SELECT 1 FROM t WHERE a=6"})
    assert facts(old).fingerprint == facts(new).fingerprint == "SELECT ? FROM t WHERE a=?"


@pytest.mark.parametrize(
    ("attrs", "peer"),
    [
        ({"peer.service": "billing", "server.address": "10.0.0.1"}, "billing"),
        ({"db.system": "postgresql", "server.address": "db1", "server.port": "5432"},
         "postgresql@db1:5432"),
        ({"db.system": "sqlite"}, "sqlite"),
        ({"db.system": "redis", "net.peer.name": "cache", "net.peer.port": "6379"},
         "redis@cache:6379"),
        ({"messaging.system": "kafka", "messaging.destination.name": "orders"}, "kafka:orders"),
        ({"server.address": "api.bank.example"}, "api.bank.example"),
        ({"http.url": "https://api.bank.example/v1/charges"}, "api.bank.example"),
    ],
)  # fmt: skip
def test_uninstrumented_peers_are_named_from_attributes(attrs: dict[str, str], peer: str) -> None:
    assert facts(span("CLIENT", **attrs)).peer == peer


def test_server_spans_have_no_detected_peer() -> None:
    assert facts(span("SERVER", **{"server.address": "me"})).peer == ""


def test_memoising_normalizer_agrees_with_the_pure_functions() -> None:
    n = Normalizer(cache_size=2)
    samples = [span(**{"http.method": "GET", "url.path": f"/orders/{i}"}) for i in range(5)] + [
        span("CLIENT", **{"db.system": "sqlite", "db.statement": f"SELECT {i}"}) for i in range(5)
    ]
    for s in samples * 2:
        assert n.facts(s) == facts(s)
