"""From a fault to the list of affected external APIs (issue 4's figure: ≤ 20 s).

The figure as an operator lives it. The example shop runs under a real platform with
zero-touch tracing, behind the gateway, under a steady load of orders (``POST /api/orders``)
and order listings (``GET /api/orders``). At t0 a fault is injected:

- ``slow``: one ``payments`` instance hangs (SIGSTOP, held until the answer comes; SIGCONT
  after) — requests to it stall until their callers give up (the shop's calls time out at 3 s);
- ``kill``: one ``payments`` instance is killed (SIGKILL; the platform starts a new one);
- ``host``: every app instance on this host (the node ``local``) hangs (SIGSTOP, as ``slow``).

From t0 the bench asks the impact question as ``corral impact --instance|--host`` does, about
the window [t0, now), and the same question about a baseline window of the same length (at
least 10 s) just before t0; the clock stops when the answer names a gateway route whose calls
at the target fail more or got slower than in the baseline (`impact.changes`). The figure
therefore includes the callers' timeouts, the SDK's export delay (``--export-delay-ms``),
ingest and the query. The gateway's routes get a 3 s per-try timeout, as an operator sets
(its default, 15 s, would make the host figure wait for it).

    .venv/bin/python bench/impact.py [--faults slow,kill,host] [--runs 3] [--export-delay-ms 1000]
"""

from __future__ import annotations

import argparse
import contextlib
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

import msgspec
import yaml

from corral.errors import CorralError
from corral.telemetry.impact import Impact, changes
from corral.telemetry.inject import find_site
from corral.testing import Platform

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop"
SERVICES = ("inventory", "payments", "orders", "web")
WANT = {"inventory": 1, "payments": 2, "orders": 2, "web": 1}
QUIET_S = 10.0  # no request failed or slowed this long after a fault: nothing to name
SLOW_S = 1.0  # a request this slow counts as slowed (the shop answers in milliseconds)
QUERY_S: list[float] = []  # how long each impact question took, through the API
BASELINE_S = 12.0  # healthy traffic before each fault: the baseline window is ≥ 10 s


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
        self.slow = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            if n % 10:  # listings are few: the list grows with every order
                body = json.dumps({"item": "pear", "qty": 1}).encode()
                request = urllib.request.Request(
                    self.base + "/api/orders", data=body, method="POST"
                )
            else:
                request = urllib.request.Request(self.base + "/api/orders")
            sent = time.monotonic()
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    response.read()
            except (urllib.error.URLError, OSError):
                self.failed += 1
            self.slow += time.monotonic() - sent >= SLOW_S
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


def copy_shop(to: Path) -> Path:
    """The example shop with stock that lasts: a sold-out item never reaches payments."""
    shutil.copytree(SHOP, to, ignore=shutil.ignore_patterns("__pycache__"))
    inventory = to / "inventory.py"
    text = inventory.read_text()
    initial = 'INITIAL = {"apple": 50, "pear": 30, "plum": 20}'
    if initial not in text:
        raise SystemExit(f"{inventory}: no {initial!r} to raise the stock")
    inventory.write_text(text.replace(initial, 'INITIAL = {"pear": 10**9}'))
    return to


def _impact(platform: Platform, target: dict[str, str], lo_us: int, hi_us: int) -> Impact:
    query = {**target, "start": str(lo_us), "end": str(hi_us)}
    asked = time.perf_counter()
    try:
        answer = platform.client.request("GET", "/telemetry/impact", None, query)
    except CorralError:
        return Impact("", [], [])  # nothing seen of it yet in this window
    finally:
        QUERY_S.append(time.perf_counter() - asked)
    return msgspec.convert(answer, Impact)


def _shop_instances(platform: Platform) -> list[dict[str, Any]]:
    return [i for s in SERVICES for i in platform.running(s)]


def _wait_healthy(platform: Platform) -> None:
    platform.wait_for(
        lambda: all(platform.ready(s) >= n for s, n in WANT.items()), timeout=60, what="the shop"
    )


def one_run(
    platform: Platform, load: Load, fault: str, timeout: float
) -> tuple[float | None, list[str]]:
    """Seconds from the fault until the impact answer names the routes it made worse; None
    when no request failed or slowed at all (a killed instance replaced before its callers
    noticed): "no API affected" is then the right answer, and there is no figure."""
    if fault == "host":
        victims = _shop_instances(platform)
        target = {"host": socket.gethostname()}
    else:
        victims = platform.running("payments")[:1]
        target = {"instance": victims[0]["id"]}
    pids = [int(v["pid"]) for v in victims]
    sig = signal.SIGKILL if fault == "kill" else signal.SIGSTOP
    failed, slow = load.failed, load.slow
    t0_us = int(time.time() * 1_000_000)
    t0 = time.monotonic()
    for pid in pids:
        os.kill(pid, sig)
    baselines: dict[int, Impact] = {}
    try:
        while True:
            now_us = int(time.time() * 1_000_000)
            length = max(10_000_000, now_us - t0_us)
            key = length // 1_000_000
            if key not in baselines:
                baselines[key] = _impact(platform, target, t0_us - length, t0_us)
            worse = changes(_impact(platform, target, t0_us, now_us), baselines[key])
            if worse:
                return time.monotonic() - t0, [f"{w.api} ({w.why})" for w in worse]
            unnoticed = (load.failed, load.slow) == (failed, slow)
            if unnoticed and time.monotonic() - t0 > QUIET_S:
                return None, []
            if time.monotonic() - t0 > timeout:
                now = _impact(platform, target, t0_us, now_us)
                raise SystemExit(
                    f"{fault}: no affected API named after {timeout:g}s; baseline "
                    f"{baselines[key]}, now {now}"
                )
            time.sleep(0.2)
    finally:
        if sig == signal.SIGSTOP:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default="slow,kill,host", help="comma-separated")
    parser.add_argument(
        "--export-delay-ms", type=int, default=1000, help="OTEL_BSP_SCHEDULE_DELAY of the shop"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if find_site() is None:
        sys.exit("the OpenTelemetry site is not built: run scripts/bootstrap.sh")
    faults = [f for f in args.faults.split(",") if f]
    with tempfile.TemporaryDirectory(prefix="corral-impact-") as tmp:
        work = Path(tmp)
        shop = copy_shop(work / "shop")
        manifest = yaml.safe_load((shop / "corral.yaml").read_text())
        port = _free_port()
        manifest["gateway"]["listen"] = f"127.0.0.1:{port}"
        for route in manifest["gateway"]["routes"]:
            route["timeouts"] = {"per_try": "3s"}
        for service in manifest["services"].values():
            service.setdefault("env", {})["OTEL_BSP_SCHEDULE_DELAY"] = str(args.export_delay_ms)
        with Platform.start(work / "home", auto_instrument=True) as platform:
            platform.apply_text(yaml.safe_dump(manifest), base_dir=shop)
            _wait_healthy(platform)
            figures: dict[str, list[float]] = {f: [] for f in faults}
            unnoticed = dict.fromkeys(faults, 0)
            with Load(port) as load:
                for run in range(args.runs):
                    for fault in faults:
                        _wait_healthy(platform)
                        time.sleep(BASELINE_S)  # a healthy baseline before every fault
                        seconds, apis = one_run(platform, load, fault, args.timeout)
                        if seconds is None:
                            unnoticed[fault] += 1
                            print(f"{fault} run {run + 1}: no request failed or slowed")
                            continue
                        figures[fault].append(seconds)
                        print(f"{fault} run {run + 1}: {seconds:.2f} s → {'; '.join(apis)}")
            for fault, values in figures.items():
                quiet = f"; {unnoticed[fault]} run(s) hurt no request" if unnoticed[fault] else ""
                if not values:
                    print(f"{fault:>4}: no run hurt a request{quiet}")
                    continue
                print(
                    f"{fault:>4}: fault → affected APIs named: median "
                    f"{statistics.median(values):.2f} s, max {max(values):.2f} s over "
                    f"{len(values)} run(s) (target ≤ 20 s){quiet}"
                )
            ms = sorted(q * 1000 for q in QUERY_S)
            print(
                f"impact query through the API: median {statistics.median(ms):.0f} ms, "
                f"max {ms[-1]:.0f} ms over {len(ms)} questions"
            )
            print(
                f"export delay {args.export_delay_ms} ms; load: {load.sent} requests, "
                f"{load.failed} failed"
            )


if __name__ == "__main__":
    main()
