"""Issue 4's figure on a real platform: a payments instance of the example shop hangs under
load, and within 20 s the impact question for that instance names the gateway route whose
orders it fails — the shop traced by zero-touch auto-instrumentation, nothing posted by hand."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
import yaml

from corral.errors import CorralError
from corral.telemetry.impact import Impact, changes
from corral.telemetry.inject import find_site
from corral.testing import Platform

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
BOUND_S = 20.0

pytestmark = pytest.mark.skipif(
    find_site() is None, reason="the OpenTelemetry site is not built (scripts/bootstrap.sh)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shop(to: Path, port: int) -> str:
    shutil.copytree(SHOP, to, ignore=shutil.ignore_patterns("__pycache__"))
    inventory = to / "inventory.py"
    # Stock that lasts: a sold-out item is refused before payments is called.
    text = inventory.read_text().replace("INITIAL = {", 'INITIAL = {"pear": 10**9} or {', 1)
    inventory.write_text(text)
    manifest = yaml.safe_load((to / "corral.yaml").read_text())
    manifest["gateway"]["listen"] = f"127.0.0.1:{port}"
    for service in manifest["services"].values():
        # Export every 100 ms and probe readiness every 100 ms: the test waits for neither.
        service.setdefault("env", {})["OTEL_BSP_SCHEDULE_DELAY"] = "100"
        service["health"]["readiness"]["period"] = "100ms"
    return str(yaml.safe_dump(manifest))


@pytest.fixture
def orders_load(tmp_path: Path) -> Iterator[tuple[Platform, threading.Event]]:
    """The shop on a platform, and orders through the gateway until the test ends."""
    port = _free_port()
    manifest = _shop(tmp_path / "shop", port)
    stop = threading.Event()

    def order() -> None:
        body = json.dumps({"item": "pear", "qty": 1}).encode()
        while not stop.is_set():
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/orders", data=body, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
            except (urllib.error.URLError, OSError):
                stop.wait(0.05)  # the gateway has no route yet, or the fault shows

    with Platform.start(tmp_path / "home", auto_instrument=True) as platform:
        platform.apply_text(manifest, base_dir=tmp_path / "shop")
        want = {"inventory": 1, "payments": 2, "orders": 2, "web": 1}
        platform.wait_for(
            lambda: all(platform.ready(s) >= n for s, n in want.items()),
            timeout=40,
            what="the shop in run",
        )
        threads = [threading.Thread(target=order, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            yield platform, stop
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=15)


def _impact(platform: Platform, instance: str, lo_us: int, hi_us: int) -> Impact:
    query = {"instance": instance, "start": str(lo_us), "end": str(hi_us)}
    try:
        answer = platform.client.request("GET", "/telemetry/impact", None, query)
    except CorralError:
        return Impact("", [], [])  # nothing of it seen yet
    return msgspec.convert(answer, Impact)


def test_a_hung_instance_is_named_with_the_route_it_fails_within_20_seconds(
    orders_load: tuple[Platform, threading.Event],
) -> None:
    platform, _ = orders_load
    victim = platform.running("payments")[0]
    since_us = int(time.time() * 1_000_000)

    def baseline() -> Impact | None:
        answer = _impact(platform, victim["id"], since_us, int(time.time() * 1_000_000))
        return answer if any(a.calls >= 5 for a in answer.apis) else None

    healthy = platform.wait_for(baseline, timeout=20, what="orders reaching the victim")
    t0_us = int(time.time() * 1_000_000)
    t0 = time.monotonic()
    os.kill(int(victim["pid"]), signal.SIGSTOP)
    try:

        def named() -> list[str] | None:
            now = _impact(platform, victim["id"], t0_us, int(time.time() * 1_000_000))
            return [f"{w.api}: {w.why}" for w in changes(now, healthy)] or None

        worse = platform.wait_for(named, timeout=BOUND_S, what="the route the fault hurts")
        elapsed = time.monotonic() - t0
    finally:
        os.kill(int(victim["pid"]), signal.SIGCONT)
    # POST /api/orders is routed by the gateway's catch-all route "web".
    assert worse[0].startswith("corral-gateway POST web: errors"), worse
    assert elapsed <= BOUND_S
