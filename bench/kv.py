"""The AP store (N=3, R=W=2, 3 nodes) against the Raft store and etcd, same harness, same run.

    .venv/bin/python bench/kv.py [--seconds 5] [--sequential 1000] [--no-etcd] [--no-raft]

Every system runs as three processes on 127.0.0.1 with fsync on, driven by one aiohttp client
(a keep-alive connection per simulated client), 256-byte values, unique keys:
- the AP store: ``corral kv serve`` ×3 (``corral.kv.testing.LocalCluster``), ``PUT/GET
  /kv/bench/KEY``; clients spread over the three nodes (there is no leader);
- the Raft store: ``bench/raft_vs_etcd.py``'s node (``RaftStore.txn`` behind ``POST /put``),
  writes to the leader;
- etcd 3.4 through its v3 HTTP/JSON gateway, writes to the leader (skipped if absent).
Figures: sequential put and get p50/p99; server CPU per operation (every server process's
CPU time from /proc over the phase ÷ operations — wall-clock figures are noisy on a shared
machine, CPU per op is not); put throughput and p99 at 64 clients; then with one
AP-store replica SIGKILLed, the same load: write success rate and p99 against the healthy run.
Targets (issue 9): put/get p50 ≤ 1.4 ms; ≥ 5k ops/s at 64 clients and ≥ 0.7× etcd; one replica
down: 100 % of W=2 writes succeed, p99 ≤ 2× healthy.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

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


@dataclass
class System:
    name: str
    put_urls: list[str]  # where writers go (round-robin over clients)
    put: Callable[[aiohttp.ClientSession, str, str], object]
    get: Callable[[aiohttp.ClientSession, str, str], object] | None = None
    errors: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # the system's server processes
    cpu_per_op: dict[str, float] = field(default_factory=dict)  # seconds, all servers summed

    def cpu(self) -> float:
        return cpu_seconds(self.pids)


async def _check(response: aiohttp.ClientResponse, ok: tuple[int, ...]) -> None:
    body = await response.read()
    if response.status not in ok:
        raise RuntimeError(f"answered {response.status}: {body[:200]!r}")


async def kv_put(session: aiohttp.ClientSession, url: str, key: str) -> None:
    async with session.put(f"{url}/kv/bench/{key}", data=VALUE) as r:
        await _check(r, (204, 300))


async def kv_get(session: aiohttp.ClientSession, url: str, key: str) -> None:
    async with session.get(f"{url}/kv/bench/{key}") as r:
        await _check(r, (200, 300))


def json_put(cluster: Cluster) -> Callable[[aiohttp.ClientSession, str, str], object]:
    async def put(session: aiohttp.ClientSession, url: str, key: str) -> None:
        path, body = cluster.put_request(key)
        async with session.post(url + path, json=body) as r:
            await _check(r, (200,))

    return put


async def etcd_get(session: aiohttp.ClientSession, url: str, key: str) -> None:
    body = {"key": base64.b64encode(key.encode()).decode()}
    async with session.post(f"{url}/v3/kv/range", json=body) as r:
        await _check(r, (200,))


async def sequential(
    session: aiohttp.ClientSession, system: System, count: int
) -> tuple[list[float], list[float]]:
    url = system.put_urls[0]
    keys = [f"s{next(_ids)}" for _ in range(count)]
    for key in keys[:50]:
        await system.put(session, url, key)  # type: ignore[misc]  # an awaitable
    puts: list[float] = []
    cpu = system.cpu()
    for key in keys:
        t = time.perf_counter()
        await system.put(session, url, key)  # type: ignore[misc]  # an awaitable
        puts.append(time.perf_counter() - t)
    system.cpu_per_op["put"] = (system.cpu() - cpu) / count
    gets: list[float] = []
    if system.get is not None:
        cpu = system.cpu()
        for key in keys:
            t = time.perf_counter()
            await system.get(session, url, key)  # type: ignore[misc]  # an awaitable
            gets.append(time.perf_counter() - t)
        system.cpu_per_op["get"] = (system.cpu() - cpu) / count
    return puts, gets


async def load(
    session: aiohttp.ClientSession, system: System, clients: int, seconds: float
) -> tuple[float, float, int, int]:
    """(ok ops/s, p99 s, ok, failed) with ``clients`` writers."""
    latencies: list[float] = []
    failed = 0
    stop = time.monotonic() + seconds

    async def writer(i: int) -> None:
        nonlocal failed
        url = system.put_urls[i % len(system.put_urls)]
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                await system.put(session, url, f"l{next(_ids)}")  # type: ignore[misc]  # awaitable
            except Exception as exc:
                failed += 1
                if len(system.errors) < 5:
                    system.errors.append(repr(exc))
                continue
            latencies.append(time.perf_counter() - t)

    start = time.monotonic()
    cpu = system.cpu()
    await asyncio.gather(*(writer(i) for i in range(clients)))
    elapsed = time.monotonic() - start
    system.cpu_per_op[f"put@{clients}"] = (system.cpu() - cpu) / max(1, len(latencies))
    return len(latencies) / elapsed, pct(latencies, 0.99), len(latencies), failed


async def measure(
    system: System, args: argparse.Namespace, kill: Callable[[], None] | None = None
) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        fig: dict[str, float] = {}
        puts, gets = await sequential(session, system, args.sequential)
        fig["put p50 ms"] = pct(puts, 0.5) * 1000
        fig["put p99 ms"] = pct(puts, 0.99) * 1000
        if gets:
            fig["get p50 ms"] = pct(gets, 0.5) * 1000
            fig["get p99 ms"] = pct(gets, 0.99) * 1000
        ops, p99, ok, failed = await load(session, system, 64, args.seconds)
        fig["64 clients ops/s"] = ops
        fig["64 clients p99 ms"] = p99 * 1000
        fig["64 clients failed"] = failed
        for what, seconds in system.cpu_per_op.items():
            fig[f"cpu/{what} ms"] = seconds * 1000
        if kill is not None:
            kill()
            ops, p99, ok, failed = await load(session, system, 64, args.seconds)
            fig["1 down ops/s"] = ops
            fig["1 down p99 ms"] = p99 * 1000
            fig["1 down success %"] = 100.0 * ok / max(1, ok + failed)
        return fig


async def raft_ready(cluster: CorralCluster | EtcdCluster) -> str:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        h = Harness(cluster, session)
        await h.ready()
        i, _ = await cluster.leader(session)
        return cluster.urls[i]


def run_kv(args: argparse.Namespace) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="kv-bench-"))
    cluster = LocalCluster(base, 3)
    try:
        cluster.wait_ready(timeout=30)
        urls = [f"http://{h}" for h in cluster.http]
        # the writers stay on n1 and n2 so the killed replica is never their coordinator
        pids = [p.pid for p in cluster.procs if p is not None]
        system = System("kv", urls[:2], kv_put, kv_get, pids=pids)

        def kill() -> None:
            cluster.kill(2)

        fig = asyncio.run(measure(system, args, kill))
        if system.errors:
            print(f"kv: first errors: {system.errors[:2]}")
        return fig
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)


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
        fig = asyncio.run(measure(system, args))
        if system.errors:
            print(f"{name}: first errors: {system.errors[:2]}")
        return fig
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sequential", type=int, default=1000)
    parser.add_argument("--no-etcd", action="store_true")
    parser.add_argument("--no-raft", action="store_true")
    args = parser.parse_args()
    results = {"kv": run_kv(args)}
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
                "64 clients p99 ms", "64 clients failed", "cpu/put ms", "cpu/get ms",
                "cpu/put@64 ms"):  # fmt: skip
        row = f"{key:22} {kv.get(key, float('nan')):9.3g} "
        for name, fig in results.items():
            if name == "kv":
                continue
            theirs = fig.get(key, float("nan"))
            ratio = kv.get(key, float("nan")) / theirs if theirs else float("nan")
            row += f"{theirs:9.3g} {ratio:8.2f} "
        print(row)
    print(
        f"\none replica SIGKILLed: W=2 writes succeeded {kv['1 down success %']:.2f} %, p99 "
        f"{kv['1 down p99 ms']:.2f} ms = {kv['1 down p99 ms'] / kv['64 clients p99 ms']:.2f}× "
        f"healthy, {kv['1 down ops/s']:.0f} ops/s"
    )
    print(
        "targets: put/get p50 <= 1.4 ms; >= 5k ops/s at 64 clients and >= 0.7x etcd; "
        "one down: 100 % success, p99 <= 2x healthy"
    )


if __name__ == "__main__":
    main()
