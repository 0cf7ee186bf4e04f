"""Telemetry as part of the platform: the collector runs as a system service, instances get
OpenTelemetry settings pointing at it, and the API fronts its queries."""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.testing import Platform
from tests.integration.apps import PY


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with Platform.start(tmp_path / "home") as p:
        yield p


def test_spans_sent_to_the_collector_answer_through_the_platform_api(
    platform: Platform, tmp_path: Path
) -> None:
    env_file = tmp_path / "env.json"
    dump = f"import json, os; json.dump(dict(os.environ), open({str(env_file)!r}, 'w'))"
    platform.apply_text(
        f'services:\n  web:\n    command: [{PY}, -c, "{dump}; import time; time.sleep(600)"]\n'
    )
    [collector] = platform.wait_for(
        lambda: [
            i for i in platform.instances("corral-collector", system=True) if i["phase"] == "run"
        ]
    )
    url = (
        platform.wait_for(lambda: (platform.home.path / "collector").exists())
        and (platform.home.path / "collector").read_text().strip()
    )
    assert url == f"http://127.0.0.1:{collector['port']}"
    env = platform.wait_for(lambda: env_file.exists() and json.loads(env_file.read_text()))
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == url
    assert env["OTEL_SERVICE_NAME"] == "web"
    assert "service.instance.id=web-" in env["OTEL_RESOURCE_ATTRIBUTES"]
    admin = platform.home.token("admin")
    assert admin and admin not in json.dumps(env)  # never the admin token

    trace_id = f"{random.getrandbits(128):032x}"
    now = int(time.time() * 1e6)
    span = {
        "traceId": trace_id,
        "id": "1" * 16,
        "name": "get /orders/42",
        "kind": "SERVER",
        "timestamp": now,
        "duration": 1500,
        "localEndpoint": {"serviceName": "web"},
        "tags": {"http.method": "GET", "http.route": "/orders/{id}"},
    }
    request = urllib.request.Request(
        f"{url}/api/v2/spans",
        data=json.dumps([span]).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202

    def found() -> dict[str, object] | None:
        result = platform.client.request("GET", f"/telemetry/trace/{trace_id}")
        return result if result else None

    trace = platform.wait_for(found, what="the trace through /api/v1/telemetry")
    assert trace_id in json.dumps(trace)
