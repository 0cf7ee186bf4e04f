"""From an instance fault to the list of affected external APIs (issue 4's figure: ≤ 20 s).

The example shop runs under a real platform with zero-touch tracing, behind the gateway, under
a steady load of orders (``POST /api/orders``) and order listings (``GET /api/orders``). At t0
one ``payments`` instance is made unresponsive (SIGSTOP for ``--stall`` seconds, then SIGCONT:
a hung process, the fault that looks like "slow" from outside). From t0 the bench polls the API
as ``corral impact --instance`` does, asking only about the window that starts at t0, and
stops the clock when the answer lists the external APIs (gateway routes) whose requests reached
the faulty instance. The figure therefore includes the stall itself (the hung requests' spans
end only when it does), the SDK's export delay (``--export-delay-ms``), ingest and the query.

    .venv/bin/python bench/impact.py [--stall 2] [--export-delay-ms 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from corral.errors import CorralError
from corral.telemetry.inject import find_site
from corral.testing import Platform

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Load:
    """Orders and listings through the gateway from a few threads, until stopped."""

    def __init__(self, port: int, threads: int = 4) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.stop = threading.Event()
        self.sent = 0
        self.failed = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            if n % 2:
                body = json.dumps({"item": "pear", "qty": 1}).encode()
                request = urllib.request.Request(
                    self.base + "/api/orders", data=body, method="POST"
                )
            else:
                request = urllib.request.Request(self.base + "/api/orders")
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
            except (urllib.error.URLError, OSError):
                self.failed += 1
            self.sent += 1
            time.sleep(0.02)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def _impact(platform: Platform, instance: str, start_us: int) -> dict[str, dict[str, Any]]:
    try:
        answer = platform.client.request(
            "GET", "/telemetry/impact", None, {"instance": instance, "start": str(start_us)}
        )
    except CorralError:
        return {}  # nothing seen of it yet in this window
    return {a["api"]: a for a in answer.get("apis", [])}


def one_run(platform: Platform, stall: float, timeout: float) -> tuple[float, list[str]]:
    """Seconds from the fault until the impact answer covers it: rollups are per minute, so the
    window that starts at t0 also holds the minute's earlier (healthy) traffic; the fault is
    "listed" once, after the stall, an API's calls at the instance grew over what the same
    question answered just before the fault (the requests that queued on the hung instance)."""
    victim = platform.running("payments")[0]
    pid = int(victim["pid"])
    t0_wall = time.time()
    start_us = int(t0_wall * 1_000_000)
    before = _impact(platform, victim["id"], start_us)
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    resumed = False
    try:
        while True:
            now = time.monotonic()
            if not resumed and now - t0 >= stall:
                os.kill(pid, signal.SIGCONT)
                resumed = True
            affected = [
                api
                for api, a in _impact(platform, victim["id"], start_us).items()
                if a["target_time_us"] - before.get(api, {}).get("target_time_us", 0)
                >= stall * 500_000
            ]
            if affected:
                return time.monotonic() - t0, sorted(affected)
            if now - t0 > timeout:
                after = _impact(platform, victim["id"], start_us)
                raise SystemExit(
                    f"no affected API listed after {timeout:g}s; before the fault {before}, "
                    f"now {after}"
                )
            time.sleep(0.1)
    finally:
        if not resumed:
            os.kill(pid, signal.SIGCONT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stall", type=float, default=2.0, help="seconds the instance hangs")
    parser.add_argument(
        "--export-delay-ms", type=int, default=1000, help="OTEL_BSP_SCHEDULE_DELAY of the shop"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if find_site() is None:
        sys.exit("the OpenTelemetry site is not built: run scripts/bootstrap.sh")
    with tempfile.TemporaryDirectory(prefix="corral-impact-") as tmp:
        work = Path(tmp)
        shop = work / "shop"
        shutil.copytree(SHOP, shop, ignore=shutil.ignore_patterns("__pycache__"))
        manifest = yaml.safe_load((shop / "corral.yaml").read_text())
        port = _free_port()
        manifest["gateway"]["listen"] = f"127.0.0.1:{port}"
        for service in manifest["services"].values():
            service.setdefault("env", {})["OTEL_BSP_SCHEDULE_DELAY"] = str(args.export_delay_ms)
        with Platform.start(work / "home", auto_instrument=True) as platform:
            platform.apply_text(yaml.safe_dump(manifest), base_dir=shop)
            names = ("inventory", "payments", "orders", "web")
            platform.wait_for(
                lambda: all(platform.ready(s) >= 1 for s in names), timeout=60, what="the shop"
            )
            platform.wait_for(lambda: platform.ready("payments") >= 2, timeout=30)
            figures = []
            with Load(port) as load:
                time.sleep(3)  # traffic reaches every instance before the fault
                for run in range(args.runs):
                    seconds, apis = one_run(platform, args.stall, args.timeout)
                    figures.append(seconds)
                    print(f"run {run + 1}: {seconds:.2f} s → {', '.join(apis)}")
                    time.sleep(2)
            median = statistics.median(figures)
            print(
                f"instance fault → affected APIs listed: median {median:.2f} s, "
                f"max {max(figures):.2f} s over {len(figures)} run(s) "
                f"(stall {args.stall:g} s, export delay {args.export_delay_ms} ms; target ≤ 20 s); "
                f"load: {load.sent} requests, {load.failed} failed"
            )


if __name__ == "__main__":
    main()
