"""Gateway throughput against nginx-as-a-proxy, measured side by side in the same run.

Method (issue 3): an upstream nginx (``return 200``, 1 worker) and wrk are pinned to core 1;
the proxy under test runs alone on core 0 — first the Corral gateway (``workers: 1``), then
nginx as a reverse proxy (1 worker, keep-alive upstream pool, X-Forwarded-* and X-Request-Id
set). wrk uses 50 keep-alive connections and sends 9 realistic headers (Host plus 8 more). Each
proxy runs ``--runs`` times for ``--duration`` seconds; the median run is reported: req/s, p50,
p99, and the proxy's **CPU µs per request** from /proc (utime + stime of the proxy's processes
over the run ÷ requests) — the fair figure, since req/s is co-limited by the load-generator core.
Then one connection with everything — wrk, the proxy and the upstream (moved there for it) —
on core 0, ``--runs`` interleaved rounds of 3 s: the latency the proxy adds at p50 over nginx's
(the median of the rounds' differences), with no idle core to wake between
hops (with the upstream left on core 1 every request waited out two cross-core wake-ups of a
sleeping vCPU: ~150 µs per request for either proxy, and a noisy difference).

"Plain proxying": one prefix route, pooled keep-alive upstream, X-Forwarded-*, X-Request-Id and
traceparent added, counters on. ``--observed`` is the issue's second figure: edge spans exported
(``telemetry: {zipkin: URL}``, to the upstream nginx on core 1 as the span sink) and the JSON
access log on (``access_log: PATH``); nginx then writes its access log too.

    .venv/bin/python bench/gateway.py [--duration 10] [--runs 3] [--connections 50]
                                      [--features] [--observed]

``--features`` turns on issue 6's standard feature set on the route (a rate limit, a concurrency
limit, criticality, a circuit breaker and a fallback, none of them tripping): its targets are
>= 0.75x nginx req/s and CPU per request <= 1.3x.

Needs nginx, wrk and taskset; prints a clear message and exits 0 without them.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

HEADERS = [
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Accept-Language: en-US,en;q=0.9",
    "Accept-Encoding: gzip, deflate, br",
    "Referer: https://shop.example.com/catalog/shoes?page=2",
    "Cookie: session=5f3c9a7e21b84d0f9c1a; theme=dark; ab=b",
    "Cache-Control: no-cache",
    "X-Client-Version: 4.12.1",
]
TICKS = os.sysconf("SC_CLK_TCK")
# Issue 6's "standard features": every policy a protected route usually carries, set so that
# none of them trips (what is measured is their cost on a request that passes them all).
FEATURES_POLICIES = """policies:
  rate_limits:
    per-client: {rate: 1000000, burst: 1000000, key: client_ip}
  concurrency:
    api: {max_in_flight: 10000, queue: 100, queue_timeout: 1s}
"""
FEATURES_ROUTE = """    rate_limits: [per-client]
    concurrency: [api]
    criticality: normal
    breaker: {window: 10s, min_calls: 20, error_rate: 50, open_time: 5s, half_open_probes: 2}
    fallback: {status: 503, body: degraded}
"""


@dataclass
class Run:
    rps: float
    p50_us: float
    p99_us: float
    cpu_us: float
    errors: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def nginx_conf(work: Path, name: str, body: str) -> Path:
    root = work / name
    root.mkdir()
    conf = root / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
master_process on;
user root;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  keepalive_requests 1000000;
  {body}
}}
"""
    )
    return conf


def start(argv: list[str], cpus: str, stderr: int | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", cpus, *argv], stderr=stderr)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, pids = [], [pid]
    while pids:
        p = pids.pop()
        out.append(p)
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        pids.extend(int(c) for c in children)
    return out


def tree_cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` and all its descendants (clock ticks)."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def pin(pid: int, cpus: str) -> None:
    """Move ``pid``, its threads and its descendants to ``cpus``."""
    for p in process_tree(pid):
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(p)], capture_output=True)


def wrk(
    port: int, duration: float, connections: int, cpus: str
) -> tuple[float, float, float, int, int]:
    argv = [
        "taskset",
        "-c",
        cpus,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
    ]
    for h in HEADERS:
        argv += ["-H", h]
    argv.append(f"http://127.0.0.1:{port}/api/orders/42?expand=items")
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    sock_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if sock_errors:
        errors += sum(int(x) for x in sock_errors.groups())

    def pct(label: str) -> float:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)\b", out)
        assert m is not None, out
        scale = {"us": 1.0, "ms": 1000.0, "s": 1e6}[m.group(2)]
        return float(m.group(1)) * scale

    return rps, pct("50"), pct("99"), total, errors


def measure(pid: int, port: int, duration: float, connections: int, cpus: str) -> Run:
    before = tree_cpu_ticks(pid)
    rps, p50, p99, total, errors = wrk(port, duration, connections, cpus)
    ticks = tree_cpu_ticks(pid) - before
    cpu_us = ticks / TICKS * 1e6 / max(total, 1)
    return Run(rps, p50, p99, cpu_us, errors)


def median_run(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument(
        "--features",
        action="store_true",
        help="issue 6's standard feature set on the route (rate limit, concurrency limit, "
        "criticality, circuit breaker, fallback), none of them tripping",
    )
    parser.add_argument(
        "--observed",
        action="store_true",
        help="edge spans exported and the JSON access log on (nginx logs its access log too)",
    )
    args = parser.parse_args()
    missing = [tool for tool in ("nginx", "wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        print(f"skipped: {', '.join(missing)} not installed (apt-get install nginx wrk util-linux)")
        return 0
    if (os.cpu_count() or 1) < 2:
        print("skipped: needs 2 cores (proxy on core 0, upstream and wrk on core 1)")
        return 0
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        work = Path(tmp)
        try:
            up_port, gw_port, ng_port = free_port(), free_port(), free_port()
            upstream = nginx_conf(
                work,
                "upstream",
                f"server {{ listen 127.0.0.1:{up_port}; location / {{ return 200; }} }}",
            )
            upstream_nginx = start(["nginx", "-c", str(upstream)], "1")
            procs.append(upstream_nginx)
            wait_port(up_port)
            nginx_log = f"access_log {work}/nginx-access.log;" if args.observed else ""
            observed = (
                f"telemetry: {{zipkin: 'http://127.0.0.1:{up_port}/api/v2/spans'}}\n"
                f"access_log: {work}/access.log\n"
                if args.observed
                else ""
            )
            proxy = nginx_conf(
                work,
                "proxy",
                f"""
  upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{ng_port};
    {nginx_log}
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Request-Id $request_id;
    }}
  }}""",
            )
            nginx_proxy = start(["nginx", "-c", str(proxy)], "0")
            procs.append(nginx_proxy)
            config = work / "gw.yaml"
            config.write_text(
                f"listen: 127.0.0.1:{gw_port}\nworkers: 1\n"
                + observed
                + (FEATURES_POLICIES if args.features else "")
                + f"routes:\n  - name: api\n    match: {{path_prefix: /}}\n"
                f"    upstreams: [127.0.0.1:{up_port}]\n"
                + (FEATURES_ROUTE if args.features else "")
            )
            gateway = start(
                [sys.executable, "-m", "corral.gateway.serve", "--config", str(config)],
                "0",
                stderr=subprocess.DEVNULL,
            )
            procs.append(gateway)
            wait_port(ng_port)
            wait_port(gw_port)
            time.sleep(0.5)
            results: dict[str, list[Run]] = {"corral": [], "nginx": []}
            targets = {"corral": (gateway.pid, gw_port), "nginx": (nginx_proxy.pid, ng_port)}
            for pid, port in targets.values():  # warm up: pools, caches
                measure(pid, port, 2, args.connections, "1")
            for _ in range(args.runs):
                for name, (pid, port) in targets.items():
                    results[name].append(measure(pid, port, args.duration, args.connections, "1"))
            single: dict[str, list[Run]] = {"corral": [], "nginx": []}
            pin(upstream_nginx.pid, "0")
            for pid, port in targets.values():  # 1 connection, all on core 0
                measure(pid, port, 1, 1, "0")  # warm up
            for _ in range(args.runs):  # interleaved: the machine's drift hits both alike
                for name, (pid, port) in targets.items():
                    single[name].append(measure(pid, port, min(args.duration, 3), 1, "0"))
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    c, n = median_run(results["corral"]), median_run(results["nginx"])
    print(
        f"gateway bench: {args.runs} x {args.duration:g}s, {args.connections} connections, "
        f"9 headers; proxy on core 0, upstream nginx + wrk on core 1 (median run)"
    )
    import corral.gateway  # the same check the gateway's worker makes (corral/compiled.py)

    build = "compiled (mypyc)" if corral.gateway.COMPILED else "interpreted"
    print(f"gateway build: {build}   (CORRAL_COMPILED=off compares the interpreted one)")
    print(f"{'':8} {'req/s':>9} {'p50 µs':>8} {'p99 µs':>8} {'CPU µs/req':>11} {'errors':>7}")
    for name, r in (("corral", c), ("nginx", n)):
        print(
            f"{name:8} {r.rps:9.0f} {r.p50_us:8.0f} {r.p99_us:8.0f} {r.cpu_us:11.1f} {r.errors:7d}"
        )
    goal = (
        "req/s >= 0.75x, CPU <= 1.3x (issue 6, standard features)"
        if args.features
        else "none: issue 3's second figure, spans and access log on"
        if args.observed
        else "req/s >= 0.85x, p99 <= 1.5x, CPU <= 1.2x"
    )
    print(
        f"ratio    {c.rps / n.rps:9.2f}x {c.p50_us / n.p50_us:7.2f}x {c.p99_us / n.p99_us:7.2f}x "
        f"{c.cpu_us / n.cpu_us:10.2f}x   (targets: {goal})"
    )
    ones, ngs = single["corral"], single["nginx"]
    added = [a.p50_us - b.p50_us for a, b in zip(ones, ngs, strict=True)]
    print(
        f"1 connection, all on core 0 ({len(added)} interleaved rounds, medians): p50 corral "
        f"{median(r.p50_us for r in ones):.0f} µs, nginx {median(r.p50_us for r in ngs):.0f} µs, "
        f"added {median(added):+.0f} µs (target <= +10 µs; rounds "
        f"{', '.join(f'{a:+.0f}' for a in added)}); proxy CPU per request "
        f"{median(r.cpu_us for r in ones):.1f} vs {median(r.cpu_us for r in ngs):.1f} µs"
    )
    print("runs:", {k: [f"{r.rps:.0f}/{r.cpu_us:.1f}" for r in v] for k, v in results.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
