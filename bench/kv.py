"""The AP store (N=3, R=W=2, 3 nodes) against the Raft store and etcd, same harness, same run.

    .venv/bin/python bench/kv.py [--seconds 5] [--sequential 1000] [--no-etcd] [--no-raft]
                                 [--down kill|stop|partition] [--runs K]

Every system runs as three processes on 127.0.0.1 with fsync on, driven by one lean HTTP/1.1
client on uvloop (``LeanConnection``: an ``asyncio.Protocol`` over httptools' response parser,
a keep-alive connection per simulated client), 256-byte values, unique keys. The client shares
the machine's cores with the servers: aiohttp's client on asyncio's loop spent ~0.2 ms of CPU
per put at 64 clients — three quarters of what the three AP-store nodes spend together — and so
capped every system's figure; the lean one spends ~0.03 ms. Every system is driven by it alike:
- the AP store: ``corral kv serve`` ×3 (``corral.kv.testing.LocalCluster``), ``PUT/GET
  /kv/bench/KEY``; clients spread over n1 and n2 (there is no leader; n3 is the replica
  taken down, so it never coordinates a measured write);
- the Raft store: ``bench/raft_vs_etcd.py``'s node (``RaftStore.txn`` behind ``POST /put``),
  writes to the leader;
- etcd 3.4 through its v3 HTTP/JSON gateway, writes to the leader (skipped if absent).
Figures: sequential put and get p50/p99; server CPU per operation (every server process's
CPU time from /proc over the phase ÷ operations — wall-clock figures are noisy on a shared
machine, CPU per op is not) and the client's own (``client cpu/put@64``); put throughput and
p99 at 64 clients, with the load average when the run ended; then with one
AP-store replica down, the same load: write success rate, p99 against the healthy run, and the
survivors' CPU per put. ``--down kill`` SIGKILLs the replica (its connections are reset at
once); ``--down stop`` SIGSTOPs it, which is what a partition looks like to the others —
packets vanish, nothing is reset; ``--down partition`` is the real thing: one node per network
namespace around a bridge (``tests/netns.py``, root only), the measuring client in a namespace
of its own (this script re-run as ``--role driver``), and the replica cut off from the other
two by iptables, both ways. ``--runs K`` repeats the AP-store part on K fresh clusters and
prints each run's one-replica-down figures, then their range.
Targets (issue 9): put/get p50 ≤ 1.4 ms; ≥ 5k ops/s at 64 clients and ≥ 0.7× etcd; one replica
down: 100 % of W=2 writes succeed, p99 ≤ 2× healthy.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import aiohttp
import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.raft_vs_etcd import (
    VALUE,
    Cluster,
    CorralCluster,
    EtcdCluster,
    Harness,
    pct,
)
from corral.kv.testing import LocalCluster
from corral.testing import wait_for

_ids = itertools.count()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time the processes have used so far (``/proc/PID/stat``): unlike
    wall-clock figures, robust to other load on a shared machine."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # a killed node: its time so far is lost, which undercounts slightly
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


class LeanConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to one server, one request at a time: a request is
    a single ``write`` and its response is parsed by httptools (de-chunking, 204 without a
    body), so the client's CPU per request is a few microseconds of Python."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.host = b""

    @classmethod
    async def open(cls, url: str) -> LeanConnection:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        _, conn = await asyncio.get_running_loop().create_connection(cls, host, port)
        conn.host = f"{host}:{port}".encode()
        return conn

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are only alike

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(ConnectionError(f"the server closed the connection: {exc}"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)
            self.close()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), b"".join(self.body)))
        self.body = []

    def _fail(self, exc: BaseException) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def request(
        self, method: bytes, path: str, body: bytes = b"", content_type: bytes = b""
    ) -> tuple[int, bytes]:
        """(status, body); ``ConnectionError`` when the connection is gone or answers nothing
        within ``REQUEST_TIMEOUT``."""
        if self.transport is None:
            raise ConnectionError("the connection is closed")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self.waiter = waiter
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n" % (
            method, path.encode(), self.host, len(body),
        )  # fmt: skip
        if content_type:
            head += b"Content-Type: " + content_type + b"\r\n"
        self.transport.write(head + b"\r\n" + body)
        timer = loop.call_later(REQUEST_TIMEOUT, self._timed_out, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _timed_out(self, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
        if not waiter.done():
            # the response may still come: this connection can no longer be trusted
            self._fail(ConnectionError(f"no response within {REQUEST_TIMEOUT} s"))
            self.close()


REQUEST_TIMEOUT = 10.0
Op = Callable[[LeanConnection, str], Awaitable[None]]


@dataclass
class System:
    name: str
    put_urls: list[str]  # where writers go (round-robin over clients)
    put: Op
    get: Op | None = None
    errors: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # the system's server processes
    cpu_per_op: dict[str, float] = field(default_factory=dict)  # seconds, all servers summed

    def cpu(self) -> float:
        return cpu_seconds(self.pids)


def _check(answer: tuple[int, bytes], ok: tuple[int, ...]) -> None:
    status, body = answer
    if status not in ok:
        raise RuntimeError(f"answered {status}: {body[:200]!r}")


async def kv_put(conn: LeanConnection, key: str) -> None:
    _check(await conn.request(b"PUT", f"/kv/bench/{key}", VALUE), (204, 300))


async def kv_get(conn: LeanConnection, key: str) -> None:
    _check(await conn.request(b"GET", f"/kv/bench/{key}"), (200, 300))


def json_put(cluster: Cluster) -> Op:
    async def put(conn: LeanConnection, key: str) -> None:
        path, body = cluster.put_request(key)
        _check(await conn.request(b"POST", path, json.dumps(body).encode(), _JSON), (200,))

    return put


async def etcd_get(conn: LeanConnection, key: str) -> None:
    body = json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode()
    _check(await conn.request(b"POST", "/v3/kv/range", body, _JSON), (200,))


_JSON = b"application/json"


async def sequential(system: System, count: int) -> tuple[list[float], list[float]]:
    conn = await LeanConnection.open(system.put_urls[0])
    try:
        keys = [f"s{next(_ids)}" for _ in range(count)]
        for key in keys[:50]:
            await system.put(conn, key)
        puts: list[float] = []
        cpu = system.cpu()
        for key in keys:
            t = time.perf_counter()
            await system.put(conn, key)
            puts.append(time.perf_counter() - t)
        system.cpu_per_op["put"] = (system.cpu() - cpu) / count
        gets: list[float] = []
        if system.get is not None:
            cpu = system.cpu()
            for key in keys:
                t = time.perf_counter()
                await system.get(conn, key)
                gets.append(time.perf_counter() - t)
            system.cpu_per_op["get"] = (system.cpu() - cpu) / count
        return puts, gets
    finally:
        conn.close()


async def load(system: System, clients: int, seconds: float) -> tuple[float, float, int, int]:
    """(ok ops/s, p99 s, ok, failed) with ``clients`` writers, each on its own connection."""
    latencies: list[float] = []
    failed = 0
    stop = time.monotonic() + seconds

    async def writer(i: int) -> None:
        nonlocal failed
        url = system.put_urls[i % len(system.put_urls)]
        conn: LeanConnection | None = None
        try:
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    if conn is None or conn.transport is None:
                        conn = await LeanConnection.open(url)
                    await system.put(conn, f"l{next(_ids)}")
                except Exception as exc:
                    failed += 1
                    if len(system.errors) < 5:
                        system.errors.append(repr(exc))
                    continue
                latencies.append(time.perf_counter() - t)
        finally:
            if conn is not None:
                conn.close()

    start = time.monotonic()
    cpu = system.cpu()
    client_cpu = time.process_time()
    await asyncio.gather(*(writer(i) for i in range(clients)))
    elapsed = time.monotonic() - start
    ops = max(1, len(latencies))
    system.cpu_per_op[f"put@{clients}"] = (system.cpu() - cpu) / ops
    system.cpu_per_op[f"client put@{clients}"] = (time.process_time() - client_cpu) / ops
    return len(latencies) / elapsed, pct(latencies, 0.99), len(latencies), failed


async def measure(
    system: System, args: argparse.Namespace, kill: Callable[[], None] | None = None
) -> dict[str, float]:
    fig: dict[str, float] = {}
    puts, gets = await sequential(system, args.sequential)
    fig["put p50 ms"] = pct(puts, 0.5) * 1000
    fig["put p99 ms"] = pct(puts, 0.99) * 1000
    if gets:
        fig["get p50 ms"] = pct(gets, 0.5) * 1000
        fig["get p99 ms"] = pct(gets, 0.99) * 1000
    ops, p99, ok, failed = await load(system, 64, args.seconds)
    fig["64 clients ops/s"] = ops
    fig["64 clients p99 ms"] = p99 * 1000
    fig["64 clients failed"] = failed
    fig["64 clients load avg"] = os.getloadavg()[0]
    for what, seconds in system.cpu_per_op.items():
        fig[f"cpu/{what} ms"] = seconds * 1000
    if kill is not None:
        kill()
        ops, p99, ok, failed = await load(system, 64, args.seconds)
        fig["1 down ops/s"] = ops
        fig["1 down p99 ms"] = p99 * 1000
        fig["1 down success %"] = 100.0 * ok / max(1, ok + failed)
        fig["1 down failed"] = failed
        fig["cpu/1 down put@64 ms"] = system.cpu_per_op["put@64"] * 1000
    return fig


async def raft_ready(cluster: CorralCluster | EtcdCluster) -> str:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        h = Harness(cluster, session)
        await h.ready()
        i, _ = await cluster.leader(session)
        return cluster.urls[i]


def run_kv(args: argparse.Namespace) -> dict[str, float]:
    if args.down == "partition":
        return run_kv_partitioned(args)
    base = Path(tempfile.mkdtemp(prefix="kv-bench-"))
    cluster = LocalCluster(base, 3)
    try:
        cluster.wait_ready(timeout=30)
        urls = [f"http://{h}" for h in cluster.http]
        # the writers stay on n1 and n2 so the killed replica is never their coordinator
        pids = [p.pid for p in cluster.procs if p is not None]
        system = System("kv", urls[:2], kv_put, kv_get, pids=pids)

        def kill() -> None:
            if args.down == "stop":
                cluster.signal(2, signal.SIGSTOP)
            else:
                cluster.kill(2)

        fig = uvloop.run(measure(system, args, kill))
        if system.errors:
            print(f"kv: first errors: {system.errors[:2]}")
        return fig
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)


def run_kv_partitioned(args: argparse.Namespace) -> dict[str, float]:
    from tests import netns

    usable, why = netns.available()
    if not usable:
        raise SystemExit(f"--down partition: {why}")
    base = Path(tempfile.mkdtemp(prefix="kv-bench-"))
    names = ["n1", "n2", "n3"]
    net = netns.Net([*names, "c"])
    procs: list[subprocess.Popen[bytes]] = []
    driver: subprocess.Popen[str] | None = None
    try:
        for name in names:
            address = net.address(name)
            argv = [
                sys.executable, "-m", "corral.cli.kv", "serve", "--name", name,
                "--listen", f"{address}:8500", "--peer", f"{address}:8501",
                "--join", f"{net.address('n1')}:8501", "--data", str(base / name),
                "--membership", "test",
            ]  # fmt: skip
            with open(base / f"{name}.log", "ab") as log:
                procs.append(
                    subprocess.Popen(net.command(name, argv), stdout=log, stderr=subprocess.STDOUT)
                )
        urls = ",".join(f"http://{net.address(name)}:8500" for name in names)
        drive = [
            sys.executable, __file__, "--role", "driver", "--urls", urls,
            "--pids", ",".join(str(p.pid) for p in procs),
            "--seconds", str(args.seconds), "--sequential", str(args.sequential),
        ]  # fmt: skip
        driver = subprocess.Popen(
            net.command("c", drive),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert driver.stdin is not None and driver.stdout is not None
        fig: dict[str, float] = {}
        for line in driver.stdout:
            if line.strip() == "DOWN":  # cut n3 off from n1 and n2, both ways
                for other in ("n1", "n2"):
                    net.one_way("n3", other)
                    net.one_way(other, "n3")
                driver.stdin.write("OK\n")
                driver.stdin.flush()
            elif line.startswith("FIG "):
                fig = json.loads(line[4:])
            else:
                print(line, end="")
        if driver.wait() != 0 or not fig:
            raise SystemExit(f"--down partition: the driver failed (node logs in {base})")
        return fig
    finally:
        if driver is not None:  # e.g. interrupted mid-run: the driver goes with the nodes
            driver.kill()
            driver.wait(10)
            for pipe in (driver.stdin, driver.stdout):
                if pipe is not None:
                    pipe.close()
        for proc in procs:
            proc.kill()
            proc.wait(10)
        net.close()
        shutil.rmtree(base, ignore_errors=True)


def drive_partitioned(args: argparse.Namespace) -> None:
    """``--role driver``: inside the client's namespace, wait for the three nodes to see each
    other, then measure; "DOWN" on stdout asks the parent to cut n3 off ("OK" on stdin)."""
    urls = args.urls.split(",")

    def sees_all(url: str) -> bool:
        try:
            with urllib.request.urlopen(f"{url}/kv-admin/status", timeout=2) as r:
                members: list[dict[str, str]] = json.loads(r.read())["members"]
        except OSError:
            return False
        return sum(m["state"] == "alive" for m in members) == len(urls)

    for url in urls:
        wait_for(partial(sees_all, url), 30, 0.2, f"kv node {url} to see the cluster")
    system = System("kv", urls[:2], kv_put, kv_get, pids=[int(p) for p in args.pids.split(",")])

    def down() -> None:
        print("DOWN", flush=True)
        sys.stdin.readline()

    fig = uvloop.run(measure(system, args, down))
    if system.errors:
        print(f"kv: first errors: {system.errors[:2]}", flush=True)
    print("FIG " + json.dumps(fig), flush=True)


def run_leader_based(
    name: str, make: Callable[[Path], Cluster], args: argparse.Namespace
) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix=f"kv-bench-{name}-"))
    cluster = make(base)
    try:
        assert isinstance(cluster, CorralCluster | EtcdCluster)
        leader = asyncio.run(raft_ready(cluster))
        getter = etcd_get if isinstance(cluster, EtcdCluster) else None
        pids = [p.pid for p in cluster.procs if p is not None]
        system = System(name, [leader], json_put(cluster), getter, pids=pids)
        fig = uvloop.run(measure(system, args))
        if system.errors:
            print(f"{name}: first errors: {system.errors[:2]}")
        return fig
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _down_line(down: str, kv: dict[str, float]) -> str:
    how = {"stop": "SIGSTOPped", "partition": "partitioned"}.get(down, "SIGKILLed")
    return (
        f"{how}: W=2 writes succeeded {kv['1 down success %']:.2f} % "
        f"({kv['1 down failed']:.0f} failed), p99 {kv['1 down p99 ms']:.2f} ms = "
        f"{kv['1 down p99 ms'] / kv['64 clients p99 ms']:.2f}× healthy "
        f"({kv['64 clients p99 ms']:.2f} ms), {kv['1 down ops/s']:.0f} ops/s "
        f"(healthy {kv['64 clients ops/s']:.0f}); node CPU per put "
        f"{kv['cpu/1 down put@64 ms']:.3f} ms (healthy {kv['cpu/put@64 ms']:.3f} ms); "
        f"put/get p50 {kv['put p50 ms']:.2f} / {kv['get p50 ms']:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--no-etcd", action="store_true")
    parser.add_argument("--no-raft", action="store_true")
    parser.add_argument("--down", choices=["kill", "stop", "partition"], default="kill")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--role", choices=["driver"], help=argparse.SUPPRESS)
    parser.add_argument("--urls", default="", help=argparse.SUPPRESS)
    parser.add_argument("--pids", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "driver":
        drive_partitioned(args)
        return
    runs = []
    for i in range(args.runs):
        runs.append(run_kv(args))
        print(f"kv run {i + 1}: " + _down_line(args.down, runs[-1]), flush=True)
    results = {"kv": runs[-1]}
    print("kv: " + ", ".join(f"{k} {v:.3g}" for k, v in results["kv"].items()), flush=True)
    if not args.no_raft:
        results["raft"] = run_leader_based("raft", lambda b: CorralCluster(b, "default"), args)
        print("raft: " + ", ".join(f"{k} {v:.3g}" for k, v in results["raft"].items()))
    if not args.no_etcd and shutil.which("etcd"):
        results["etcd"] = run_leader_based("etcd", EtcdCluster, args)
        print("etcd: " + ", ".join(f"{k} {v:.3g}" for k, v in results["etcd"].items()))
    kv = results["kv"]
    print(
        f"\n{'figure':22} {'kv':>9} "
        + " ".join(f"{n:>9} {'kv/' + n:>8}" for n in results if n != "kv")
    )
    for key in ("put p50 ms", "put p99 ms", "get p50 ms", "get p99 ms", "64 clients ops/s",
                "64 clients p99 ms", "64 clients failed", "64 clients load avg", "cpu/put ms",
                "cpu/get ms", "cpu/put@64 ms", "cpu/client put@64 ms"):  # fmt: skip
        row = f"{key:22} {kv.get(key, float('nan')):9.3g} "
        for name, fig in results.items():
            if name == "kv":
                continue
            theirs = fig.get(key, float("nan"))
            ratio = kv.get(key, float("nan")) / theirs if theirs else float("nan")
            row += f"{theirs:9.3g} {ratio:8.2f} "
        print(row)
    print("\none replica " + _down_line(args.down, kv))
    if len(runs) > 1:
        ratios = [r["1 down p99 ms"] / r["64 clients p99 ms"] for r in runs]
        success = [r["1 down success %"] for r in runs]
        print(
            f"{len(runs)} runs: success {min(success):.2f}–{max(success):.2f} %, p99 ratio "
            f"{min(ratios):.2f}–{max(ratios):.2f}× (runs within 2×: "
            f"{sum(r <= 2 for r in ratios)} of {len(runs)})"
        )
    print(
        "targets: put/get p50 <= 1.4 ms; >= 5k ops/s at 64 clients and >= 0.7x etcd; "
        "one down: 100 % success, p99 <= 2x healthy"
    )


if __name__ == "__main__":
    main()
