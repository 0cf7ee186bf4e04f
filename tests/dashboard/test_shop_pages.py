"""The SLO, Hosts, Impact and Service ("what changed") pages in a real headless Chromium,
against a real platform running the example shop while requests flow through its gateway.
What each page shows is compared with what the API answers; each page leaves a screenshot
(its path is printed) as an artefact.

One platform and one load generator for the module; each test gets a fresh browser profile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.testing import Platform, kill_leftovers, wait_for
from tests.dashboard.browser import Browser, base_url, chromium

CHROMIUM = chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs Debian's chromium for the dashboard's browser tests (apt-get install chromium)",
)
SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
SLOS = {
    "orders-api": "slo: {availability: 99.9%, latency: {p95: 300ms}, window: 1h}",
    "web": "slo: {availability: 99%, window: 1d}",
}


class Shop:
    def __init__(self, platform: Platform, gateway: str) -> None:
        self.platform = platform
        self.gateway = gateway
        self.requests = 0
        self.checkout_instance = ""  # the instance a posted trace's API reaches
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._load, name="shop-load", daemon=True)

    def _load(self) -> None:
        """Shoppers: a steady trickle through the gateway for as long as the module runs."""
        paths = ["/api/orders", "/", "/api/stock"]
        while not self._stop.is_set():
            with contextlib.suppress(OSError, urllib.error.URLError):
                path = paths[self.requests % len(paths)]
                with urllib.request.urlopen(self.gateway + path, timeout=5) as response:
                    response.read()
            self.requests += 1
            self._stop.wait(0.01)

    def api(self, path: str, **query: Any) -> Any:
        return self.platform.client.request("GET", path, query=query or None)

    def __enter__(self) -> Shop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def shop_manifest(base: Path) -> tuple[Path, str]:
    """The example, its gateway on a free port and an SLO on each route."""
    copy = base / "shop"
    shutil.copytree(SHOP, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    text = (copy / "corral.yaml").read_text().replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    for route, slo in SLOS.items():
        marker = f"    - name: {route}\n"
        assert marker in text, f"the example shop has no route {route}"
        head, tail = text.split(marker, 1)
        match, rest = tail.split("      service: web\n", 1)
        text = f"{head}{marker}{match}      service: web\n      {slo}\n{rest}"
    return copy, text


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    base = tmp_path_factory.mktemp("dashboard-shop")
    platform = Platform.launch(base / "home")
    try:
        copy, text = shop_manifest(base)
        platform.apply_text(text, base_dir=copy)
        platform.wait_for(
            lambda: all(platform.ready(s) >= 1 for s in ("inventory", "payments", "orders", "web")),
            timeout=40,
            what="the shop in run",
        )
        gateway = text.split("listen: ", 1)[1].split("\n", 1)[0]
        with Shop(platform, f"http://{gateway}") as running:
            # Posted early: the collector links a statement to its API a few seconds later.
            running.checkout_instance = platform.running("orders")[0]["id"]
            post_checkout_trace(running, running.checkout_instance, socket.gethostname())
            wait_for(lambda: running.requests >= 30, 20, what="requests through the gateway")
            yield running
    finally:
        # Nothing here needs a graceful stop: SIGKILL the control plane, then every shim and
        # app it started (a graceful `down` of the shop costs ~10 s of the suite).
        platform.kill9()
        kill_leftovers(platform.home.path)


async def open_page(browser: Browser, shop: Shop, path: str) -> None:
    """Sign in on the way (the token leaves the address at once)."""
    separator = "&" if "?" in path else "?"
    token = shop.platform.home.token("read")
    await browser.goto(f"{base_url(shop.platform)}{path}{separator}token={token}")


async def keep(browser: Browser, tmp_path: Path, name: str) -> None:
    shot = await browser.screenshot(tmp_path / f"{name}.png", full_page=True)
    print(f"screenshot: {shot}")


async def test_slo_page_shows_every_routes_budget_and_burn_down_as_the_api_reports(
    shop: Shop, browser: Browser, tmp_path: Path
) -> None:
    before = await asyncio.to_thread(
        wait_for,
        lambda: [r for r in shop.api("/telemetry/slo")["routes"] if r["objectives"][0]["requests"]],
        20,
        what="SLO traffic on both routes",
    )
    await open_page(browser, shop, "/slo")
    shown = json.loads(
        await browser.wait_for(
            "document.body.dataset.burndown && JSON.stringify([...document.querySelectorAll("
            "'#slo tr[data-route]')].map(r => [r.dataset.route, r.dataset.objective, "
            "Number(r.querySelector('[data-requests]').dataset.requests), "
            "Number(r.querySelector('[data-budget]').dataset.budget)]))",
            timeout=15,
            what="the SLO table and burn-down",
        )
    )
    after = shop.api("/telemetry/slo")["routes"]
    expected = [(r["route"], o["kind"]) for r in after for o in r["objectives"]]
    assert [(route, kind) for route, kind, _, _ in shown] == expected
    assert expected == [
        ("orders-api", "availability"),
        ("orders-api", "latency"),
        ("web", "availability"),
    ]
    counts = {(r["route"], o["kind"]): o for r in before for o in r["objectives"]}
    final = {(r["route"], o["kind"]): o for r in after for o in r["objectives"]}
    for route, kind, requests, budget in shown:
        # Requests keep flowing: what the page shows lies between two API answers.
        assert counts[(route, kind)]["requests"] <= requests <= final[(route, kind)]["requests"]
        between = sorted(o[(route, kind)]["budget_left"] for o in (counts, final))
        assert between[0] - 0.05 <= budget <= between[1] + 0.05
    assert await browser.eval("document.querySelectorAll('#burndown [data-burndown]').length") == 2
    await keep(browser, tmp_path, "slo")


async def test_hosts_page_shows_host_metrics_beside_the_instances_on_it(
    shop: Shop, browser: Browser, tmp_path: Path
) -> None:
    metrics = await asyncio.to_thread(
        wait_for,
        lambda: (answer := shop.api("/telemetry/hosts", minutes=5))["points"] and answer,
        25,
        what="a host sample from the collector",
    )
    host = metrics["host"]
    await open_page(browser, shop, "/hosts")
    await browser.wait_for("document.body.dataset.hosts", what="the host metrics")
    cpu = await browser.eval(
        f"document.querySelector('#host-summary tr[data-host=\"{host}\"]').dataset.cpu"
    )
    assert 0.0 <= float(cpu) <= 1.0
    shown = await browser.eval(
        f"[...document.querySelectorAll('section[data-host=\"{host}\"] tr[data-instance]')]"
        ".map(r => r.dataset.instance)"
    )
    on_host = [i["id"] for i in shop.platform.instances(system=True) if i["node"] == "local"]
    assert sorted(shown) == sorted(on_host)
    assert any(i.startswith("corral-collector") for i in shown)
    assert await browser.eval(
        f"!!document.querySelector('section[data-host=\"{host}\"] details table')"
    ), "the charts' table equivalent"
    await keep(browser, tmp_path, "hosts")


def post_checkout_trace(shop: Shop, instance: str, host: str) -> str:
    """One request to an instrumented API that reaches `instance` and runs a SQL statement
    (the shop's own services send no spans yet: the gateway's edge spans carry no instance)."""
    collector = (shop.platform.home.path / "collector").read_text().strip()
    trace = f"{random.getrandbits(128):032x}"
    now = int(time.time() * 1e6) - 20_000
    tags = {"service.instance.id": instance, "host.name": host}
    spans = [
        {
            "traceId": trace,
            "id": "a" * 16,
            "name": "get /checkout",
            "kind": "SERVER",
            "timestamp": now,
            "duration": 9000,
            "localEndpoint": {"serviceName": "orders"},
            "tags": {"http.route": "/checkout", **tags},
        },
        {
            "traceId": trace,
            "id": "b" * 16,
            "parentId": "a" * 16,
            "name": "SELECT",
            "kind": "CLIENT",
            "timestamp": now + 1000,
            "duration": 6000,
            "localEndpoint": {"serviceName": "orders"},
            "tags": {
                "db.system": "sqlite",
                "db.statement": "SELECT qty FROM stock WHERE id = 7",
                **tags,
            },
        },
    ]
    request = urllib.request.Request(
        f"{collector}/api/v2/spans",
        data=json.dumps(spans).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 202
    return trace


async def test_impact_page_lists_the_apis_that_reach_an_instance_or_a_sql_statement(
    shop: Shop, browser: Browser, tmp_path: Path
) -> None:
    orders = shop.checkout_instance

    def checkout_api() -> list[str]:
        apis = [a["api"] for a in shop.api("/telemetry/impact", instance=orders)["apis"]]
        return apis if any("/checkout" in api for api in apis) else []

    expected = await asyncio.to_thread(wait_for, checkout_api, 15, what="the trace ingested")
    await open_page(browser, shop, f"/impact?kind=instance&value={orders}")
    await browser.wait_for("document.body.dataset.impactApis", what="the affected APIs")
    shown = await browser.eval(
        "[...document.querySelectorAll('#impact tr[data-api]')].map(r => r.dataset.api)"
    )
    # Under load the ranking (by time spent) may reorder between two reads; the set may not.
    assert sorted(shown) == sorted(expected)
    checkout = next(api for api in shown if "/checkout" in api)
    await keep(browser, tmp_path, "impact-instance")

    statement = "SELECT qty FROM stock WHERE id = 7"
    by_sql = await asyncio.to_thread(
        wait_for,
        lambda: shop.api("/telemetry/impact", sql=statement)["apis"],
        10,
        what="the statement's APIs",
    )
    await browser.eval(
        "document.getElementById('impact-kind').value = 'sql';"
        f"document.getElementById('impact-value').value = {json.dumps(statement)};"
        "delete document.body.dataset.impactApis;"
        "document.querySelector('#impact-form button').click()"
    )
    await browser.wait_for("document.body.dataset.impactApis", what="the APIs behind the SQL")
    shown = await browser.eval(
        "[...document.querySelectorAll('#impact tr[data-api]')].map(r => r.dataset.api)"
    )
    assert shown == [a["api"] for a in by_sql] == [checkout]
    assert "kind=sql" in await browser.eval("location.search"), "the address names the question"


async def test_service_page_marks_what_changed_on_its_charts_and_follows_new_changes(
    shop: Shop, browser: Browser, tmp_path: Path
) -> None:
    platform = shop.platform
    platform.client.request("POST", "/services/web/scale", {"instances": 2})
    await asyncio.to_thread(platform.wait_for, lambda: platform.ready("web") == 2)
    await open_page(browser, shop, "/services/web")
    kinds = await browser.eval(
        "[...document.querySelectorAll('#changes li[data-kind]')].map(li => li.dataset.kind)"
    )
    assert "scale" in kinds and "release" in kinds
    if await browser.eval("document.body.dataset.charts") == "ok":
        drawn = await browser.wait_for(
            "document.body.dataset.markers", timeout=15, what="markers on the latency chart"
        )
        assert int(drawn) == len(kinds), "every change of the last hour is on the chart"
    await browser.wait_for("document.getElementById('live').dataset.state === 'live'")
    await browser.eval("window.sameDocument = true")
    platform.client.request("POST", "/services/web/scale", {"instances": 1})
    await browser.wait_for(
        f"document.querySelectorAll('#changes li[data-kind=scale]').length > "
        f"{kinds.count('scale')}",
        timeout=10,
        what="the new scale on the page",
    )
    assert await browser.eval("window.sameDocument") is True, "the page must not reload"
    await keep(browser, tmp_path, "service-web-changes")
