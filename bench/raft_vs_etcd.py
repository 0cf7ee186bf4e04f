"""The Raft store against a fresh 3-node etcd 3.4 on loopback, same harness, same run (issue 8).

    .venv/bin/python bench/raft_vs_etcd.py [--seconds 5] [--kills 5] [--sequential 2000]

Both clusters run as three processes on 127.0.0.1 with fsync on. Both are driven by the same
Python client (aiohttp, one keep-alive connection per client) through HTTP/JSON: etcd's v3
gateway (``POST /v3/kv/put``), and for Corral a small aiohttp endpoint in each node process
that calls ``RaftStore.txn`` (the CLI/API wiring comes later). 256-byte values, unique keys.

Figures: sequential put p50/p99; throughput and p99 at 16 and 64 clients; elections during the
throughput runs; leader SIGKILL → first successful write through a surviving node (median and
max of ``--kills`` trials) with the default timeouts, and for Corral also with the fast preset.
Ratios are Corral / etcd (throughput: higher is better; latency: lower is better).

    python bench/raft_vs_etcd.py node ID PORTS HTTP_PORTS DIR PRESET   (one Corral node)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from corral.testing import free_ports

VALUE = b"v" * 256
ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# --------------------------------------------------------------------------- a Corral node


async def serve_node(
    node_id: int, ports: list[int], http_ports: list[int], base: Path, preset: str
) -> None:
    from corral.consensus.config import PRESETS
    from corral.errors import CorralError
    from corral.store.base import Put
    from corral.store.raft import RaftStore

    peers = {i: f"127.0.0.1:{p}" for i, p in enumerate(ports, 1)}
    store = await RaftStore.open(node_id, peers, base / f"n{node_id}", PRESETS[preset])

    async def put(request: web.Request) -> web.Response:
        body = await request.json()
        try:
            result = await store.txn([], [Put(body["key"], base64.b64decode(body["value"]))])
        except CorralError as exc:
            return web.json_response(exc.to_dict(), status=503)
        return web.json_response({"revision": result.revision})

    async def status(_request: web.Request) -> web.Response:
        st = store.node.status()
        transport = store.node.transport
        assert transport is not None
        connected = {p: transport.connected(p) for p in sorted(peers) if p != node_id}
        return web.json_response(
            {
                "id": node_id,
                "leader": store.is_leader,
                "term": st.term,
                "lead": st.lead,
                "role": st.role.value,
                "commit": st.commit,
                "connected": connected,
            }
        )

    app = web.Application()
    app.router.add_post("/put", put)
    app.router.add_get("/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", http_ports[node_id - 1]).start()
    await asyncio.Event().wait()


# --------------------------------------------------------------------------- clusters


@dataclass
class Cluster:
    name: str
    urls: list[str]
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    start_one: Callable[[int], subprocess.Popen[bytes]] | None = None

    def put_request(self, key: str) -> tuple[str, dict[str, str]]:
        raise NotImplementedError

    async def leader(self, session: aiohttp.ClientSession) -> tuple[int, int]:
        """(index of the leader's process, term)."""
        raise NotImplementedError

    def stop(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


class EtcdCluster(Cluster):
    def __init__(self, base: Path) -> None:
        client, peer = free_ports(3), free_ports(3)
        initial = ",".join(f"e{i}=http://127.0.0.1:{peer[i]}" for i in range(3))
        super().__init__("etcd", [f"http://127.0.0.1:{c}" for c in client])
        self.ids: dict[str, int] = {}

        def start(i: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [
                    "etcd",
                    f"--name=e{i}",
                    f"--data-dir={base / f'e{i}'}",
                    f"--listen-client-urls=http://127.0.0.1:{client[i]}",
                    f"--advertise-client-urls=http://127.0.0.1:{client[i]}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer[i]}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer[i]}",
                    f"--initial-cluster={initial}",
                    "--initial-cluster-state=new",
                    "--initial-cluster-token=bench",
                    "--log-level=error",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        self.start_one = start
        self.procs = [start(i) for i in range(3)]

    def put_request(self, key: str) -> tuple[str, dict[str, str]]:
        return "/v3/kv/put", {
            "key": base64.b64encode(key.encode()).decode(),
            "value": base64.b64encode(VALUE).decode(),
        }

    async def leader(self, session: aiohttp.ClientSession) -> tuple[int, int]:
        for i, url in enumerate(self.urls):
            if self.procs[i] is None:
                continue
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.post(f"{url}/v3/maintenance/status", json={}) as r:
                    st = await r.json()
                    if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                        return i, int(st["raftTerm"])
        raise LookupError("no etcd leader")


class CorralCluster(Cluster):
    def __init__(self, base: Path, preset: str) -> None:
        ports, http = free_ports(3), free_ports(3)
        super().__init__(f"corral ({preset})", [f"http://127.0.0.1:{h}" for h in http])
        ports_s = ",".join(map(str, ports))
        http_s = ",".join(map(str, http))

        def start(i: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, __file__, "node", str(i + 1), ports_s, http_s, str(base), preset],
                cwd=ROOT,
            )

        self.start_one = start
        self.procs = [start(i) for i in range(3)]

    def put_request(self, key: str) -> tuple[str, dict[str, str]]:
        return "/put", {"key": key, "value": base64.b64encode(VALUE).decode()}

    async def leader(self, session: aiohttp.ClientSession) -> tuple[int, int]:
        for i, url in enumerate(self.urls):
            if self.procs[i] is None:
                continue
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{url}/status") as r:
                    st = await r.json()
                    if st["leader"]:
                        return i, int(st["term"])
        raise LookupError("no corral leader")


# --------------------------------------------------------------------------- the harness


async def wait_until(check: Callable[[], Awaitable[object]], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    last: Exception | None = None
    while True:
        try:
            got = await check()
            if got:
                return got
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within} s: {what} (last error: {last!r})")
        await asyncio.sleep(0.05)


class Harness:
    def __init__(self, cluster: Cluster, session: aiohttp.ClientSession) -> None:
        self.cluster = cluster
        self.session = session
        self.n = 0
        self.errors: list[str] = []

    async def put(self, url: str, timeout: float = 5.0) -> None:
        self.n += 1
        path, body = self.cluster.put_request(f"/bench/{os.getpid()}/{self.n}")
        to = aiohttp.ClientTimeout(total=timeout)
        async with self.session.post(url + path, json=body, timeout=to) as r:
            answer = await r.read()
            if r.status != 200:
                raise RuntimeError(f"put answered {r.status}: {answer[:300]!r}")

    async def ready(self) -> None:
        async def ok() -> bool:
            await self.cluster.leader(self.session)
            for url in self.cluster.urls:
                await self.put(url, 1.0)
            return True

        await wait_until(ok, 30.0, f"{self.cluster.name} serving")

    async def sequential(self, count: int) -> list[float]:
        i, _ = await self.cluster.leader(self.session)
        url = self.cluster.urls[i]
        for _ in range(50):
            await self.put(url)
        times = []
        for _ in range(count):
            t = time.perf_counter()
            await self.put(url)
            times.append(time.perf_counter() - t)
        return times

    async def throughput(self, clients: int, seconds: float) -> tuple[float, float, int]:
        """(ops/s, p99 seconds, elections seen) with ``clients`` writers to the leader."""
        i, term = await self.cluster.leader(self.session)
        url = self.cluster.urls[i]
        latencies: list[float] = []
        stop = time.monotonic() + seconds

        async def writer() -> None:
            while time.monotonic() < stop:
                t = time.perf_counter()
                try:
                    await self.put(url)
                except Exception as exc:
                    self.errors.append(repr(exc))
                    continue
                latencies.append(time.perf_counter() - t)

        start = time.monotonic()
        await asyncio.gather(*(writer() for _ in range(clients)))
        elapsed = time.monotonic() - start
        _, term_after = await self.cluster.leader(self.session)
        return len(latencies) / elapsed, pct(latencies, 0.99), term_after - term

    async def leader_kill(self, trials: int) -> list[float]:
        cluster = self.cluster
        assert cluster.start_one is not None
        out = []
        for _ in range(trials):
            await self.ready()
            i, _ = await cluster.leader(self.session)
            victim = cluster.procs[i]
            assert victim is not None
            survivor = cluster.urls[(i + 1) % 3]
            killed = time.monotonic()
            victim.send_signal(signal.SIGKILL)
            victim.wait()
            cluster.procs[i] = None
            while True:
                try:
                    await self.put(survivor, 0.5)
                    break
                except Exception:
                    await asyncio.sleep(0.005)
            out.append(time.monotonic() - killed)
            cluster.procs[i] = cluster.start_one(i)
        await self.ready()
        return out


async def measure(cluster: Cluster, args: argparse.Namespace, full: bool) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        h = Harness(cluster, session)
        await h.ready()
        fig: dict[str, float] = {}
        if full:
            seq = await h.sequential(args.sequential)
            fig["seq p50 ms"] = pct(seq, 0.5) * 1000
            fig["seq p99 ms"] = pct(seq, 0.99) * 1000
            for clients in (16, 64):
                ops, p99, elections = await h.throughput(clients, args.seconds)
                fig[f"{clients} clients ops/s"] = ops
                fig[f"{clients} clients p99 ms"] = p99 * 1000
                fig[f"{clients} clients elections"] = elections
            fig["failed puts under load"] = len(h.errors)
            if h.errors:
                print(f"{cluster.name}: first failed put: {h.errors[0]}")
        if args.kills:
            kills = await h.leader_kill(args.kills)
            fig["leader kill median s"] = statistics.median(kills)
            fig["leader kill max s"] = max(kills)
        return fig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--sequential", type=int, default=2000)
    args = parser.parse_args()
    if shutil.which("etcd") is None:
        sys.exit("etcd not found: apt-get install etcd-server")
    results: dict[str, dict[str, float]] = {}
    runs: list[tuple[str, Callable[[Path], Cluster], bool]] = [
        ("etcd", EtcdCluster, True),
        ("corral", lambda b: CorralCluster(b, "default"), True),
        ("corral fast", lambda b: CorralCluster(b, "fast"), False),
    ]
    for name, make, full in runs:
        base = Path(tempfile.mkdtemp(prefix=f"raft-bench-{name.replace(' ', '-')}-"))
        cluster = make(base)
        try:
            results[name] = asyncio.run(measure(cluster, args, full))
        finally:
            cluster.stop()
            shutil.rmtree(base, ignore_errors=True)
        print(f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in results[name].items()))
    etcd, ours = results["etcd"], results["corral"]
    print(f"\n{'figure':28} {'corral':>10} {'etcd':>10} {'ratio':>7}  target")
    targets = {
        "seq p50 ms": "<= 1.5x",
        "seq p99 ms": "<= 2x",
        "16 clients ops/s": ">= 0.8x",
        "64 clients ops/s": ">= 0.8x",
        "64 clients p99 ms": "<= 2x",
        "16 clients elections": "0",
        "64 clients elections": "0",
        "failed puts under load": "0",
        "leader kill median s": "<= 1.0 s",
        "leader kill max s": "",
    }
    for key, target in targets.items():
        ratio = ours[key] / etcd[key] if etcd[key] else float("nan")
        print(f"{key:28} {ours[key]:10.3g} {etcd[key]:10.3g} {ratio:7.2f}  {target}")
    fast = results["corral fast"]
    print(
        f"{'leader kill, fast preset':28} median {fast['leader kill median s']:.3f} s, max "
        f"{fast['leader kill max s']:.3f} s  (target <= 0.5 s median, <= 1 s max)"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        import uvloop

        node_id, ports, http_ports, base, preset = sys.argv[2:7]
        uvloop.install()
        asyncio.run(
            serve_node(
                int(node_id),
                [int(p) for p in ports.split(",")],
                [int(p) for p in http_ports.split(",")],
                Path(base),
                preset,
            )
        )
    else:
        main()
