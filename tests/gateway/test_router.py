"""Routing: priority, most-specific-first, and what each kind of match takes."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from corral.gateway.config import validate_gateway_data
from corral.gateway.router import RouteTable, compile_routes


def table(*routes: dict[str, Any]) -> RouteTable:
    data = {"routes": [{"upstreams": ["127.0.0.1:9"], **r} for r in routes]}
    return compile_routes(validate_gateway_data(data), version=3)


def name(t: RouteTable, method: str, host: str, path: str, query: str = "", **headers: str) -> str:
    lookup = {k.replace("_", "-"): v for k, v in headers.items()}
    found = t.match(method, host, path, query, lookup.get)
    return found.route.name if found else "-"


def test_prefix_matches_on_segment_bounds_only() -> None:
    t = table({"name": "api", "match": {"path_prefix": "/api"}})
    assert name(t, "GET", "x", "/api") == "api"
    assert name(t, "GET", "x", "/api/orders") == "api"
    assert name(t, "GET", "x", "/apix") == "-"


def test_longer_prefix_wins_over_shorter_whatever_the_order() -> None:
    t = table(
        {"name": "all", "match": {"path_prefix": "/"}},
        {"name": "api", "match": {"path_prefix": "/api"}},
        {"name": "orders", "match": {"path_prefix": "/api/orders"}},
    )
    assert name(t, "GET", "x", "/api/orders/1") == "orders"
    assert name(t, "GET", "x", "/api/users") == "api"
    assert name(t, "GET", "x", "/") == "all"


def test_exact_beats_template_beats_prefix() -> None:
    t = table(
        {"name": "prefix", "match": {"path_prefix": "/orders"}},
        {"name": "template", "match": {"path_template": "/orders/{id}"}},
        {"name": "exact", "match": {"path": "/orders/special"}},
    )
    assert name(t, "GET", "x", "/orders/special") == "exact"
    assert name(t, "GET", "x", "/orders/42") == "template"
    assert name(t, "GET", "x", "/orders/42/items") == "prefix"


def test_explicit_priority_beats_specificity() -> None:
    t = table(
        {"name": "specific", "match": {"path": "/a/b"}},
        {"name": "catchall", "match": {"path_prefix": "/"}, "priority": 10},
    )
    assert name(t, "GET", "x", "/a/b") == "catchall"


def test_host_exact_then_wildcard_then_any_and_port_is_ignored() -> None:
    t = table(
        {"name": "any", "match": {"path_prefix": "/"}},
        {"name": "wild", "match": {"host": "*.shop.local"}},
        {"name": "exact", "match": {"host": "api.shop.local"}},
    )
    assert name(t, "GET", "API.shop.local:8080", "/") == "exact"
    assert name(t, "GET", "www.shop.local", "/") == "wild"
    assert name(t, "GET", "other", "/") == "any"


def test_methods_headers_and_query_all_have_to_hold() -> None:
    t = table(
        {
            "name": "beta",
            "match": {
                "path_prefix": "/",
                "methods": ["post"],
                "headers": {"X-Beta": "1"},
                "query": {"debug": "*"},
            },
        },
        {"name": "plain", "match": {"path_prefix": "/"}},
    )
    assert name(t, "POST", "x", "/a", "debug=", x_beta="1") == "beta"
    assert name(t, "GET", "x", "/a", "debug=", x_beta="1") == "plain"
    assert name(t, "POST", "x", "/a", "", x_beta="1") == "plain"
    assert name(t, "POST", "x", "/a", "debug=1", x_beta="2") == "plain"


def test_template_params_fill_a_rewritten_path() -> None:
    t = table(
        {
            "name": "t",
            "match": {"path_template": "/orders/{id}/items/{item}"},
            "rewrite": {"path": "/v2/items/{item}?order={id}"},
        }
    )
    found = t.match("GET", "x", "/orders/7/items/9")
    assert found is not None
    assert found.route.upstream_path("/orders/7/items/9", found.params) == "/v2/items/9?order=7"


def test_prefix_rewrite_replaces_only_the_prefix() -> None:
    t = table({"name": "t", "match": {"path_prefix": "/api/"}, "rewrite": {"path_prefix": "/"}})
    found = t.match("GET", "x", "/api/orders")
    assert found is not None
    assert found.route.upstream_path("/api/orders", {}) == "/orders"


def test_routes_to_one_service_share_one_cluster() -> None:
    data = {
        "routes": [
            {"name": "a", "match": {"path_prefix": "/a"}, "service": "shop"},
            {"name": "b", "match": {"path_prefix": "/b"}, "service": "shop"},
            {"name": "c", "upstreams": ["127.0.0.1:1"]},
        ]
    }
    t = compile_routes(validate_gateway_data(data, mode="platform"), 1)
    assert sorted(t.clusters) == ["service:shop", "static:c"]
    assert t.clusters["service:shop"].service == "shop"
    assert t.by_name["a"].cluster == "service:shop"


segments = st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=4)


@given(prefixes=st.lists(segments, min_size=1, max_size=5, unique_by=tuple), path=segments)
def test_the_matching_prefix_is_always_the_longest_one(
    prefixes: list[list[str]], path: list[str]
) -> None:
    routes = [
        {"name": f"r{i}", "match": {"path_prefix": "/" + "/".join(p)}}
        for i, p in enumerate(prefixes)
    ]
    t = table(*routes)
    request = "/" + "/".join(path)
    found = t.match("GET", "x", request)
    candidates = [p for p in prefixes if path[: len(p)] == p]
    if not candidates:
        assert found is None
    else:
        assert found is not None
        best = max(len("/" + "/".join(p)) if p else 0 for p in candidates)
        assert len(found.route.path) == (best if best > 1 else 0)
