"""The gateway in platform mode: routes from the manifest to services' `run` instances,
live route edits through the admin API, and routing that follows crashes and scaling."""

from __future__ import annotations

import os
import signal
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.testing import Platform
from tests.integration.apps import service_yaml, write_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""  # not listening (yet)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with Platform.start(tmp_path / "home") as p:
        yield p


def manifest(app: Path, port: int, instances: int = 2) -> str:
    return (
        "services:\n"
        + service_yaml("web", app, instances=instances)
        + service_yaml("api", app)
        + f"gateway:\n  listen: 127.0.0.1:{port}\n  routes:\n"
        "    - {name: api, match: {path_prefix: /api}, service: api}\n"
        "    - {name: web, match: {path_prefix: /}, service: web}\n"
    )


def test_requests_reach_the_routed_service_and_follow_a_crash(
    platform: Platform, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    port = free_port()
    result = platform.apply_text(manifest(app, port))
    assert result["gateway"] == "created"
    platform.wait_for(lambda: platform.ready("web") == 2 and platform.ready("api") == 1)
    platform.wait_for(lambda: get(port, "/")[0] == 200, what="the gateway to serve")
    assert get(port, "/api/x")[1].startswith("api-")  # the body is the instance id
    served = {get(port, "/")[1] for _ in range(20)}
    assert served == {i["id"] for i in platform.running("web")}  # both instances get traffic
    platform.wait_for(
        lambda: [i["phase"] for i in platform.instances("corral-gateway", system=True)] == ["run"],
        what="the gateway, a system service, in run",
    )
    assert platform.instances() and "corral-gateway" not in {
        i["service"] for i in platform.instances()
    }
    # Kill one web instance: GETs keep succeeding (the other instance, retries on failure).
    victim = platform.running("web")[0]
    os.kill(victim["pid"], signal.SIGKILL)
    statuses = [get(port, "/")[0] for _ in range(50)]
    assert statuses.count(200) >= 48, statuses
    platform.wait_for(lambda: platform.ready("web") == 2)
    platform.wait_for(lambda: victim["id"] not in {get(port, "/")[1] for _ in range(10)})


def test_live_route_edits_apply_at_once_and_apply_reports_what_it_discards(
    platform: Platform, tmp_path: Path
) -> None:
    app = write_app(tmp_path)
    port = free_port()
    platform.apply_text(manifest(app, port, instances=1))
    platform.wait_for(lambda: get(port, "/api/a")[1].startswith("api-"), what="api routed")
    bad = {"name": "x", "match": {"path_prefix": "/x"}, "service": "nope"}
    with pytest.raises(Exception, match="unknown service 'nope'"):
        platform.client.request("PUT", "/gateway/routes/x", bad)
    # Send /api to web instead, live: the change reaches routing within a second.
    route = {"name": "api", "match": {"path_prefix": "/api"}, "service": "web"}
    dry = platform.client.request("PUT", "/gateway/routes/api?dry_run=1", route)
    assert dry["dry_run"] is True
    assert get(port, "/api/a")[1].startswith("api-")
    edited = platform.client.request("PUT", "/gateway/routes/api", route)
    assert edited["version"] == 2
    platform.wait_for(lambda: get(port, "/api/a")[1].startswith("web-"), timeout=3.0)
    result = platform.apply_text(manifest(app, port, instances=1))
    assert result["discarded_live_edits"] == ["api"] and result["gateway"] == "updated"
    platform.wait_for(lambda: get(port, "/api/a")[1].startswith("api-"), timeout=3.0)
    platform.client.request("DELETE", "/gateway/routes/api")
    platform.wait_for(lambda: get(port, "/api/a")[1].startswith("web-"), timeout=3.0)
    rolled = platform.client.request("POST", "/gateway/rollback")
    assert rolled["routes"] == ["api", "web"]
