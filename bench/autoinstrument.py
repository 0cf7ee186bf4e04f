"""Zero-touch tracing's cost (issue 4): the example shop's per-request latency with vs without
auto-instrumentation, printed as a delta against the target (≤ +0.5 ms p50).

    .venv/bin/python bench/autoinstrument.py [--requests 2000]

Two copies of the shop run side by side as plain processes (web → orders → inventory with its
SQLite stock, and payments): one started with the environment the agent gives an instrumented
Python service (the bootstrap and the OpenTelemetry site on PYTHONPATH, OTEL_* pointing at a
real collector process, which stores what it receives), one with the same environment minus the
injection. Requests alternate between them (an order: POST /api/orders, 4 hops, 2 SQL
statements, 9 spans), so the machine's noise lands on both alike. Startup time of one Python
process with and without the bootstrap is printed too.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from corral.telemetry import autoinstrument
from corral.telemetry.inject import find_site

ROOT = Path(__file__).resolve().parents[1]
SHOP = ROOT / "examples" / "shop"
SERVICES = ("inventory", "payments", "orders", "web")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(port: int, path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"port {port}{path} did not answer within {timeout:g}s")
        time.sleep(0.05)


@contextlib.contextmanager
def _shop(
    work: Path, name: str, extra_env: dict[str, str]
) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """One copy of the shop; yields web's port and its processes."""
    data = work / name / "inventory"
    data.mkdir(parents=True)
    db = sqlite3.connect(data / "inventory.db")
    db.execute("CREATE TABLE stock (item TEXT PRIMARY KEY, qty INTEGER NOT NULL)")
    db.execute("INSERT INTO stock VALUES ('pear', 1000000000)")  # never runs out
    db.commit()
    db.close()
    ports = {s: _free_port() for s in SERVICES}
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    base.update({f"{s.upper()}_URL": f"http://127.0.0.1:{p}" for s, p in ports.items()})
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for service in SERVICES:
            env = {
                **base,
                **extra_env,
                "PORT": str(ports[service]),
                "CORRAL_INSTANCE": f"{service}-{name}",
                "OTEL_SERVICE_NAME": service,
                "DATA_DIR": str(data),
            }
            procs.append(
                subprocess.Popen(
                    [sys.executable, f"{service}.py"],
                    cwd=SHOP,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=open(work / name / f"{service}.err", "wb"),
                )
            )
            _wait_http(ports[service], "/ready")
        yield ports["web"], procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _order(conn: http.client.HTTPConnection) -> float:
    body = json.dumps({"item": "pear", "qty": 1})
    started = time.perf_counter()
    conn.request("POST", "/api/orders", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    answer = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 201:
        raise SystemExit(f"order failed on port {conn.port}: {response.status} {answer[:300]!r}")
    return elapsed * 1000


def _cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> dict[str, float]:
    """User + system CPU so far (from /proc: robust to a busy machine) per service, and
    ``<service>/bg`` for its long-lived threads other than the main one (the span exporter's:
    the request threads of ``ThreadingHTTPServer`` are gone between two orders)."""
    out: dict[str, float] = {}
    for service, proc in zip(SERVICES, procs, strict=True):
        process = psutil.Process(proc.pid)
        times = process.cpu_times()
        out[service] = times.user + times.system
        for thread in process.threads():
            if thread.id != proc.pid:
                out[f"{service}/bg/{thread.id}"] = thread.user_time + thread.system_time
    return out


def _per_order(before: dict[str, float], after: dict[str, float], orders: int) -> dict[str, float]:
    """µs of CPU per order: per service, ``<service>/bg`` (threads alive at both samples) and
    ``total``."""
    out: dict[str, float] = {}
    for key, value in after.items():
        if key not in before:
            continue
        name = key.rsplit("/", 1)[0] if "/bg/" in key else key
        out[name] = out.get(name, 0.0) + (value - before[key]) / orders * 1e6
    out["total"] = sum(out[service] for service in SERVICES)
    return out


def _startup_ms(env: dict[str, str], runs: int = 10) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="orders per shop copy")
    parser.add_argument(
        "--compare",
        metavar="BOOTSTRAP_DIR",
        help="a third copy traced by another bootstrap (e.g. an earlier commit's otel_site, "
        "from `git archive`), interleaved with the two others: a before/after on one machine",
    )
    args = parser.parse_args()
    site = find_site()
    if site is None:
        raise SystemExit("the OpenTelemetry site is not built: run scripts/bootstrap.sh")

    with tempfile.TemporaryDirectory(prefix="corral-bench-ai-") as tmp:
        work = Path(tmp)
        home = work / "home"
        home.mkdir()
        cport = _free_port()
        command = [sys.executable, "-m", "corral.telemetry.collector", "--home", str(home)]
        collector = subprocess.Popen(
            [*command, "--port", str(cport)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_http(cport, "/health")
            otel = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{cport}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_RESOURCE_ATTRIBUTES": "deployment.release=v1,host.name=bench",
            }
            spec = {"health": {"readiness": {"http": "/ready"}, "liveness": {"http": "/healthz"}}}
            traced_env = autoinstrument.instrumented_env(otel, site, spec)
            plain_env = dict(otel)
            start_plain = _startup_ms({**os.environ, **plain_env})
            start_traced = _startup_ms({**os.environ, **traced_env})
            envs = {"plain": plain_env, "traced": traced_env}
            if args.compare:
                compared = traced_env["PYTHONPATH"].replace(site.bootstrap, args.compare, 1)
                envs["compared"] = {**traced_env, "PYTHONPATH": compared}
            with contextlib.ExitStack() as stack:
                shops = {n: stack.enter_context(_shop(work, n, e)) for n, e in envs.items()}
                procs = {name: shop_procs for name, (_, shop_procs) in shops.items()}
                conns = {
                    name: http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    for name, (port, _) in shops.items()
                }
                for conn in conns.values():  # warm up: imports, first export, sqlite pages
                    for _ in range(50):
                        _order(conn)
                times: dict[str, list[float]] = {name: [] for name in envs}
                cpu_before = {k: _cpu_seconds(v) for k, v in procs.items()}
                names = list(envs)
                for i in range(args.requests):
                    shift = i % len(names)  # each copy first, second, … in turn
                    for name in names[shift:] + names[:shift]:
                        times[name].append(_order(conns[name]))
                time.sleep(6)  # the SDK's batch delay: let the last spans go out (and count)
                cpu = {
                    k: _per_order(cpu_before[k], _cpu_seconds(v), args.requests)
                    for k, v in procs.items()
                }
                for conn in conns.values():
                    conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", cport, timeout=10)
            conn.request("GET", "/api/v2/services")
            spans = json.loads(conn.getresponse().read() or b"[]")
            conn.close()
        finally:
            collector.terminate()
            collector.wait(10)

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    p50 = {k: statistics.median(v) for k, v in times.items()}
    p99 = {k: pct(v, 0.99) for k, v in times.items()}
    delta = p50["traced"] - p50["plain"]
    print(
        f"shop order (POST /api/orders through web → orders → inventory + payments), "
        f"{args.requests} each, interleaved"
    )
    print(f"  without auto-instrumentation: p50 {p50['plain']:.3f} ms  p99 {p99['plain']:.3f} ms")
    print(f"  with    auto-instrumentation: p50 {p50['traced']:.3f} ms  p99 {p99['traced']:.3f} ms")
    print(
        f"  overhead p50: {delta:+.3f} ms per request (target ≤ +0.5 ms: "
        f"{'met' if delta <= 0.5 else 'NOT met'}); ratio {p50['traced'] / p50['plain']:.2f}×"
    )
    print(
        f"  shop CPU per request (4 processes, export included): {cpu['plain']['total']:.0f} µs "
        f"plain, {cpu['traced']['total']:.0f} µs traced "
        f"({cpu['traced']['total'] - cpu['plain']['total']:+.0f} µs)"
    )
    for service in SERVICES:
        plain, traced = cpu["plain"][service], cpu["traced"][service]
        background = cpu["traced"].get(f"{service}/bg", 0.0)
        print(
            f"    {service:9s} {plain:5.0f} → {traced:5.0f} µs ({traced - plain:+4.0f}; "
            f"export thread {background:3.0f})"
        )
    if "compared" in cpu:
        extra = p50["compared"] - p50["plain"]
        print(
            f"  compared ({args.compare}): p50 {p50['compared']:.3f} ms ({extra:+.3f} ms), "
            f"CPU {cpu['compared']['total']:.0f} µs per request "
            f"({cpu['compared']['total'] - cpu['plain']['total']:+.0f} µs)"
        )
    print(f"  services seen by the collector: {', '.join(sorted(spans))}")
    print(
        f"python start-up (-c pass): {start_plain:.0f} ms plain, {start_traced:.0f} ms with "
        f"the bootstrap ({start_traced - start_plain:+.0f} ms)"
    )


if __name__ == "__main__":
    main()
