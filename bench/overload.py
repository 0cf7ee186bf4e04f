"""Overload on real processes: offered load 3× an upstream's capacity through the gateway, and how
critical, normal and best-effort routes fare (issue 6's figure; the simulator's
``tests/sim/test_traffic_sim.py`` asserts the same scenario).

    .venv/bin/python bench/overload.py [--seconds 30] [--factor 3]

Method, as the simulator's scenario: an upstream with 20 slots, each request holding one for
50 ms ± 20 % (capacity 400 req/s; aiohttp, core 1), beyond which requests wait in its queue; the
gateway's data plane in platform mode (one worker, core 0) with three routes to that service —
``/critical`` (criticality critical), ``/normal`` and ``/best-effort`` — all under one
service-scoped concurrency policy (30 in flight, a queue of 10 waiting up to 200 ms, where a
more critical arrival displaces a less critical waiter) and the adaptive shedder; an open-loop
Poisson load generator (core 1): 1/6 of the load for 5 s, then ``--factor`` × capacity for
``--seconds``, 20 % critical, 30 % normal, 50 % best effort. Success is a 200 within 1 s (the
simulator's definition); "shed" is the gateway's 503. Per class: offered, success %, shed %,
other failures, p50/p99 of the successes, over the overload phase only.
Target (issue 6): critical ≥ 99 % success under 3× overload, best effort shed first.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import uvloop

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.kv import LeanConnection

CLASSES = {"critical": 0.2, "normal": 0.3, "best_effort": 0.5}
SLOTS, SERVICE = 20, 0.05
SUCCESS_WITHIN = 1.0


def gateway_config() -> dict[str, Any]:
    def route(name: str) -> dict[str, Any]:
        return {
            "name": name,
            "service": "svc",
            "match": {"path_prefix": "/" + name.replace("_", "-")},
            "criticality": name,
            "concurrency": ["svc"],
        }

    return {
        "policies": {
            "concurrency": {
                "svc": {
                    "max_in_flight": 30,
                    "queue": 10,
                    "queue_timeout": "200ms",
                    "scope": "service",
                }
            }
        },
        "adaptive": {"cpu": 80, "loop_lag": "50ms"},
        "routes": [route(name) for name in CLASSES],
    }


# --- the two servers (each its own process, started by ``main``) ----------------------------


async def serve_upstream() -> None:
    from aiohttp import web

    slots = asyncio.Semaphore(SLOTS)
    rng = random.Random(7)

    async def handle(_request: web.Request) -> web.Response:
        async with slots:
            await asyncio.sleep(SERVICE * rng.uniform(0.8, 1.2))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


async def serve_gateway(upstream: str) -> None:
    from corral.gateway.config import validate_gateway_data
    from corral.gateway.proxy import Gateway
    from corral.gateway.router import compile_routes

    config = validate_gateway_data(gateway_config(), mode="platform")
    gw = Gateway(compile_routes(config, 1), config.limits, rng=random.Random(5))
    server = await gw.listen("127.0.0.1", 0)
    gw.set_endpoints("svc", [(upstream, 1)])
    port = cast(Any, server).sockets[0].getsockname()[1]  # uvloop's Server is only alike
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


def spawn(role: str, cpus: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        ["taskset", "-c", cpus, sys.executable, __file__, "--role", role, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"overload bench: the {role} did not start ({line!r})")
    return proc, int(line.split()[1])


# --- the load generator ----------------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.offered = dict.fromkeys(CLASSES, 0)
        self.ok: dict[str, list[float]] = {c: [] for c in CLASSES}
        self.late = dict.fromkeys(CLASSES, 0)  # a 200, but after SUCCESS_WITHIN
        self.shed = dict.fromkeys(CLASSES, 0)
        self.failed = dict.fromkeys(CLASSES, 0)


async def generate(port: int, rate: float, seconds: float, rng: random.Random) -> Results:
    """Open loop: arrivals on a Poisson clock whatever the answers; idle connections reused."""
    url = f"http://127.0.0.1:{port}"
    idle: list[LeanConnection] = []
    results = Results()
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def one(kind: str, path: str) -> None:
        start = time.perf_counter()
        conn = idle.pop() if idle else None
        try:
            if conn is None or conn.transport is None:
                conn = await LeanConnection.open(url)
            status, _ = await conn.request(b"GET", path)
        except (ConnectionError, OSError):
            results.failed[kind] += 1
            return
        took = time.perf_counter() - start
        idle.append(conn)
        if status == 200:
            if took <= SUCCESS_WITHIN:
                results.ok[kind].append(took)
            else:
                results.late[kind] += 1
        elif status == 503:
            results.shed[kind] += 1
        else:
            results.failed[kind] += 1

    end = loop.time() + seconds
    at = loop.time()
    kinds, weights = list(CLASSES), list(CLASSES.values())
    while True:
        at += rng.expovariate(rate)
        if at >= end:
            break
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        kind = rng.choices(kinds, weights)[0]
        results.offered[kind] += 1
        task = loop.create_task(one(kind, "/" + kind.replace("_", "-") + "/x"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=15)
    for conn in idle:
        conn.close()
    return results


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(results: Results, rate: float, seconds: float, capacity: float) -> None:
    print(
        f"overload bench: {rate:.0f} req/s offered for {seconds:g} s = {rate / capacity:.1f}× the "
        f"upstream's capacity ({SLOTS} slots × {SERVICE * 1000:.0f} ms = {capacity:.0f} req/s)"
    )
    print(
        f"{'route':12} {'offered':>8} {'success':>8} {'shed':>7} {'late':>6} {'failed':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7}"
    )
    for kind in CLASSES:
        offered = max(1, results.offered[kind])
        ok = results.ok[kind]
        print(
            f"{kind:12} {results.offered[kind]:8d} {100 * len(ok) / offered:7.2f}% "
            f"{100 * results.shed[kind] / offered:6.2f}% {results.late[kind]:6d} "
            f"{results.failed[kind]:7d} {pct(ok, 0.5) * 1000:7.1f} {pct(ok, 0.99) * 1000:7.1f}"
        )
    served = sum(len(v) for v in results.ok.values()) / seconds
    print(f"served within 1 s: {served:.0f} req/s (capacity {capacity:.0f})")
    print("target: critical >= 99 % success under 3x overload, best effort shed first")


async def drive(port: int, capacity: float, factor: float, seconds: float) -> None:
    rng = random.Random(11)
    await generate(port, capacity / 2, 5.0, rng)  # warm: pools, the shedder's estimates
    rate = capacity * factor
    results = await generate(port, rate, seconds, rng)
    report(results, rate, seconds, capacity)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--factor", type=float, default=3.0)
    parser.add_argument("--role", choices=["upstream", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--upstream", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        uvloop.run(serve_upstream())
        return 0
    if args.role == "gateway":
        uvloop.run(serve_gateway(args.upstream))
        return 0
    procs: list[subprocess.Popen[str]] = []
    try:
        upstream, up_port = spawn("upstream", "1")
        procs.append(upstream)
        gateway, gw_port = spawn("gateway", "0", "--upstream", f"127.0.0.1:{up_port}")
        procs.append(gateway)
        uvloop.run(drive(gw_port, SLOTS / SERVICE, args.factor, args.seconds))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
