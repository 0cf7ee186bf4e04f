"""Policy configuration: the manifest's named policies and route policy fields, with every
problem reported at its path."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from corral.errors import ManifestError
from corral.gateway.policy_config import (
    ROUTE_POLICY_FIELDS,
    RateLimitPolicy,
    validate_policy_data,
)

GOOD = """
gateway:
  policies:
    rate_limits:
      per-client: {rate: 100, per: 1s, burst: 200}
      api: {algorithm: sliding_window, limit: 1000, window: 1m, key: "header:x-api-key",
            scope: global}
    hot_params:
      product: {key: "param:id", limit: 50, overrides: {"42": 500}}
    breakers: {default: {open_time: 10s, slow_call_duration: 500ms}}
    concurrency: {svc: {max_in_flight: 200, queue: 20, scope: service}}
  adaptive: {cpu: 80, loop_lag: 50ms}
  cache: {max_bytes: 16MiB}
  routes:
    - name: orders
      service: orders
      match: {path_template: "/orders/{id}"}
      criticality: critical
      rate_limits: [per-client, {rate: 5, key: "param:id"}]
      hot_params: [product]
      concurrency: [svc, {max_in_flight: 20}]
      breaker: default
      split:
        to: [{release: 8, weight: 5}, {release: 7, weight: 95}]
        sticky_on: "cookie:uid"
        targets: [{header: X-Canary, value: "1", to: release-8}]
        mirror: {to: {service: orders-shadow}, percent: 10}
      cache: {ttl: 30s}
    - name: static
      upstreams: [127.0.0.1:9000]
"""


def problems(data: Any, mode: str = "platform") -> dict[str, str]:
    with pytest.raises(ManifestError) as caught:
        validate_policy_data(data, source="m", mode=mode)
    return {p.path: p.message for p in caught.value.problems}


def test_a_full_policy_section_loads_with_names_and_inline_policies() -> None:
    config = validate_policy_data(yaml.safe_load(GOOD), mode="platform")
    orders = config.routes["orders"]
    assert orders.criticality == "critical"
    assert orders.rate_limits[0] == "per-client"
    assert isinstance(orders.rate_limits[1], RateLimitPolicy)
    assert orders.split is not None and orders.split.to[0].name == "release-8"
    assert orders.cache is not None and orders.cache.ttl == 30.0
    assert config.gateway.cache.max_bytes == 16 << 20
    assert config.gateway.policies.breakers["default"].slow_call_duration == 0.5
    assert config.routes["static"].criticality == "normal"
    assert "criticality" in ROUTE_POLICY_FIELDS


def test_every_policy_problem_is_reported_at_its_path_at_once() -> None:
    found = problems(
        {
            "policies": {
                "rate_limits": {"a": {"rate": 0}, "b": {"algorithm": "sliding_window"}},
                "breakers": {"x": {"open_time": "1m", "max_open_time": "10s"}},
            },
            "routes": [
                {
                    "name": "r",
                    "upstreams": ["127.0.0.1:1"],
                    "rate_limits": ["per-clinet", 5, {"rate": 1, "key": "hdr:x"}],
                    "criticality": "vip",
                    "breaker": "nope",
                    "concurrency": [{"queue": 3}],
                }
            ],
        }
    )
    assert "greater than 0" in found["policies.rate_limits.a.rate"]
    assert "needs limit" in found["policies.rate_limits.b"]
    assert "below open_time" in found["policies.breakers.x"]
    assert "not defined" in found["routes[0].rate_limits[0]"]
    assert "policy name or an inline policy" in found["routes[0].rate_limits[1]"]
    assert "not a key" in found["routes[0].rate_limits[2].key"]
    assert "routes[0].criticality" in found
    assert "not defined" in found["routes[0].breaker"]
    assert "required" in found["routes[0].concurrency[0].max_in_flight"]


def test_an_unknown_policy_name_gets_a_did_you_mean() -> None:
    data = {
        "policies": {"rate_limits": {"per-client": {"rate": 1}}},
        "routes": [{"name": "r", "service": "s", "rate_limits": ["per-clinet"]}],
    }
    with pytest.raises(ManifestError) as caught:
        validate_policy_data(data, mode="platform")
    assert "per-client" in caught.value.problems[0].hint


def test_references_that_need_the_route_are_checked() -> None:
    found = problems(
        {
            "policies": {"rate_limits": {"svc": {"rate": 1, "scope": "service"}}},
            "routes": [
                {"name": "a", "upstreams": ["127.0.0.1:1"], "rate_limits": ["svc"]},
                {
                    "name": "b",
                    "service": "s",
                    "match": {"path_template": "/items/{item}"},
                    "hot_params": [{"key": "param:id", "limit": 1}],
                },
                {
                    "name": "c",
                    "upstreams": ["127.0.0.1:1"],
                    "split": {"to": [{"service": "x", "weight": 1}]},
                },
            ],
        },
        mode="standalone",
    )
    assert "scope: service" in found["routes[0].rate_limits[0]"]
    assert "'id'" in found["routes[1].hot_params[0]"]
    assert "standalone" in found["routes[2].split"]


def test_split_targets_must_name_a_backend() -> None:
    found = problems(
        {
            "routes": [
                {
                    "name": "a",
                    "service": "s",
                    "split": {
                        "to": [{"release": 2, "weight": 1}, {"release": 1, "weight": 9}],
                        "targets": [{"header": "X-Canary", "value": "1", "to": "release-3"}],
                    },
                }
            ]
        }
    )
    assert "not a backend" in found["routes[0].split"]
