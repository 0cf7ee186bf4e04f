"""The dashboard in a real headless Chromium against a real platform running a small app:
what the pages show matches the API, the overview follows a killed instance live, and each
page leaves a screenshot (its path is printed) as an artefact.

One platform for the module; each test gets a fresh browser profile.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.testing import Platform, kill_leftovers, wait_for
from tests.dashboard.browser import Browser, base_url, chromium
from tests.integration.apps import service_yaml, write_app

CHROMIUM = chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Debian's chromium for the dashboard's browser tests (apt-get install chromium)",
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Platform, Path]]:
    base = tmp_path_factory.mktemp("dashboard")
    platform = Platform.launch(base / "home")
    try:
        app = write_app(base)
        gate = base / "db-ready"
        gate.touch()
        manifest = "services:\n" + service_yaml("web", app, instances=2)
        manifest += service_yaml("db", app, mode="pet", extra=f"    env: {{READY_FILE: {gate}}}\n")
        platform.apply_text(manifest)
        platform.wait_for(
            lambda: platform.ready("web") == 2 and platform.ready("db") == 1,
            what="web and db in run",
        )
        yield platform, gate
    finally:
        platform.destroy()
        kill_leftovers(platform.home.path)


async def sign_in(browser: Browser, platform: Platform, path: str = "/") -> None:
    read = platform.home.token("read")
    await browser.goto(f"{base_url(platform)}{path}?token={read}")


async def keep(browser: Browser, tmp_path: Path, name: str) -> Path:
    shot = await browser.screenshot(tmp_path / f"{name}.png")
    print(f"screenshot: {shot}")
    return shot


PHASES_JS = """JSON.stringify(Object.fromEntries([...document.querySelectorAll(
  '#services tr[data-service]')].map(r => [r.dataset.service, Object.fromEntries(
  [...r.querySelectorAll('[data-phases] [data-phase]')].map(c => [c.dataset.phase,
  Number(c.dataset.count)]))])))"""


def api_phases(platform: Platform) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {name: {} for name in platform.services()}
    for instance in platform.instances():
        phases = out.setdefault(instance["service"], {})
        phases[instance["phase"]] = phases.get(instance["phase"], 0) + 1
    return out


async def test_overview_lists_every_service_with_the_phases_the_api_reports(
    shop: tuple[Platform, Path], browser: Browser, tmp_path: Path
) -> None:
    platform, _ = shop
    await sign_in(browser, platform)
    href = await browser.eval("location.href")
    assert href == f"{base_url(platform)}/", "the token must leave the address bar"
    assert await browser.eval("document.cookie") == "", "the session cookie is HttpOnly"
    shown = json.loads(await browser.eval(PHASES_JS))
    assert shown == api_phases(platform) == {"db": {"run": 1}, "web": {"run": 2}}
    await browser.wait_for("document.getElementById('live').dataset.state === 'live'")
    await keep(browser, tmp_path, "overview")


async def test_service_page_shows_its_instances_with_phase_and_port(
    shop: tuple[Platform, Path], browser: Browser, tmp_path: Path
) -> None:
    platform, _ = shop
    await sign_in(browser, platform, "/services/web")
    rows = await browser.eval(
        "[...document.querySelectorAll('#instances tr[data-instance]')].map(r => "
        "[r.dataset.instance, r.querySelector('[data-phase]').dataset.phase, "
        "r.children[3].textContent])"
    )
    expected = sorted([i["id"], i["phase"], str(i["port"])] for i in platform.instances("web"))
    assert sorted(rows) == expected
    await browser.wait_for(
        "!!document.querySelector('#releases tbody tr[data-release]')", what="the release history"
    )
    await keep(browser, tmp_path, "service-web")


async def test_a_killed_instance_changes_phase_on_the_overview_without_a_reload(
    shop: tuple[Platform, Path], browser: Browser, tmp_path: Path
) -> None:
    platform, gate = shop
    await sign_in(browser, platform)
    await browser.wait_for("document.getElementById('live').dataset.state === 'live'")
    await browser.eval("window.sameDocument = true")
    [db] = platform.running("db")
    gate.unlink()  # the pet comes back but does not pass readiness: it stays in `ready`
    os.kill(db["pid"], signal.SIGKILL)
    try:
        await browser.wait_for(
            "document.querySelector('tr[data-service=db] [data-phase=ready]') && "
            "!document.querySelector('tr[data-service=db] [data-phase=run]')",
            timeout=15,
            what="db to show ready instead of run",
        )
        assert await browser.eval("window.sameDocument") is True, "the page must not reload"
        await asyncio.to_thread(
            platform.wait_for, lambda: platform.instances("db")[0]["phase"] == "ready"
        )
        shown = json.loads(await browser.eval(PHASES_JS))
        assert shown["db"] == {"ready": 1}
        latency = await browser.eval("document.body.dataset.maxLatencyMs")
        print(f"live update latency (event recorded → on screen), worst seen: {latency} ms")
        await keep(browser, tmp_path, "overview-after-kill")
    finally:
        gate.touch()
        await asyncio.to_thread(platform.wait_for, lambda: platform.ready("db") == 1)


def post_spans(platform: Platform) -> str:
    """One trace web → db → sqlite, sent to the collector as Zipkin v2 JSON."""
    url = wait_for(
        lambda: (
            (platform.home.path / "collector").exists()
            and (platform.home.path / "collector").read_text().strip()
        ),
        20,
        what="the collector's address",
    )
    trace_id = f"{random.getrandbits(128):032x}"
    now = int(time.time() * 1e6) - 50_000

    def span(
        sid: str,
        parent: str | None,
        service: str,
        kind: str,
        start: int,
        dur: int,
        name: str,
        tags: dict[str, str],
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "traceId": trace_id,
            "id": sid,
            "name": name,
            "kind": kind,
            "timestamp": now + start,
            "duration": dur,
            "localEndpoint": {"serviceName": service},
            "tags": tags,
        }
        if parent:
            body["parentId"] = parent
        return body

    spans = [
        span("a" * 16, None, "web", "SERVER", 0, 9000, "get /orders", {"http.route": "/orders"}),
        span("b" * 16, "a" * 16, "web", "", 1100, 700, "render", {}),
        span("c" * 16, "a" * 16, "web", "CLIENT", 1000, 7000, "get", {"peer.service": "db"}),
        span("d" * 16, "c" * 16, "db", "SERVER", 1200, 6500, "get /rows", {"http.route": "/rows"}),
        span(
            "e" * 16,
            "d" * 16,
            "db",
            "CLIENT",
            1500,
            6000,
            "SELECT",
            {"db.system": "sqlite", "db.statement": "SELECT * FROM t WHERE id = 7"},
        ),
    ]
    request = urllib.request.Request(
        f"{url}/api/v2/spans",
        data=json.dumps(spans).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202
    return trace_id


async def test_topology_and_trace_pages_show_what_telemetry_answers(
    shop: tuple[Platform, Path], browser: Browser, tmp_path: Path
) -> None:
    platform, _ = shop
    trace_id = await asyncio.to_thread(post_spans, platform)
    edges = await asyncio.to_thread(
        platform.wait_for,
        lambda: [
            e for e in platform.client.request("GET", "/telemetry/dependencies") if e["calls"]
        ],
        20,
    )
    await sign_in(browser, platform, "/topology")
    shown = await browser.wait_for(
        "[...document.querySelectorAll('#edges tr[data-edge]')].map(r => r.dataset.edge)",
        what="the edges table",
    )
    assert sorted(shown) == sorted(f"{e['parent']}->{e['child']}" for e in edges)
    assert "web->db" in shown
    if await browser.eval("document.body.dataset.charts") == "ok":
        nodes = {e["parent"] for e in edges} | {e["child"] for e in edges}
        assert await browser.wait_for("document.body.dataset.graphNodes") == str(len(nodes))
    await keep(browser, tmp_path, "topology")

    await browser.goto(f"{base_url(platform)}/traces/{trace_id}")
    assert await browser.wait_for("document.body.dataset.spans", what="the waterfall") == "5"
    critical = await browser.eval(
        "[...document.querySelectorAll('#waterfall tr[data-critical]')].map(r => r.dataset.span)"
    )
    # `render` ran beside the call to db: the request did not wait for it.
    assert critical == ["a" * 16, "c" * 16, "d" * 16, "e" * 16]
    await browser.wait_for("!!document.querySelector('#span-details h3')", what="span details")
    await keep(browser, tmp_path, "trace")
