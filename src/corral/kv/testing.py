"""A local AP-store cluster of real processes on loopback, for tests and benchmarks.

    with LocalCluster(tmp_path, nodes=3) as cluster:
        cluster.wait_ready()
        client = cluster.client(0)
        cluster.kill(2); cluster.restart(2)

Each node is ``python -m corral.cli.kv serve`` (the ``corral kv serve`` command) with its own
data directory, an HTTP port and a peer port free for both TCP and UDP. ``close`` kills every
node it started (SIGCONT first, in case one is stopped) and waits for each.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from corral.errors import PlatformUnavailable
from corral.kv.client import KvClient
from corral.testing import free_ports, wait_for


def free_port() -> int:
    """A port free for TCP and UDP both (a node's peer port serves replication and gossip);
    ``corral.testing.free_ports`` checks TCP only, which suits HTTP ports."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both TCP and UDP on 127.0.0.1")


class LocalCluster:
    def __init__(
        self,
        base: Path,
        nodes: int = 3,
        options: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.base = Path(base)
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.http = [f"127.0.0.1:{port}" for port in free_ports(nodes)]
        self.peer = [f"127.0.0.1:{free_port()}" for _ in self.names]
        self.options = list(options)
        self.env = env
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * nodes
        for i in range(nodes):
            self.start(i)

    def command(self, i: int) -> list[str]:
        return [
            sys.executable, "-m", "corral.cli.kv", "serve",
            "--name", self.names[i], "--listen", self.http[i], "--peer", self.peer[i],
            "--join", self.peer[0], "--data", str(self.base / self.names[i]),
            "--membership", "test", *self.options,
        ]  # fmt: skip

    def start(self, i: int) -> None:
        log = open(self.base / f"{self.names[i]}.log", "ab")
        env = {**os.environ, **(self.env or {})}
        try:
            self.procs[i] = subprocess.Popen(
                self.command(i), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        finally:
            log.close()

    def restart(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            raise RuntimeError(f"node {self.names[i]} is still running")
        self.start(i)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            proc.kill()
            proc.wait(10)

    def signal(self, i: int, sig: signal.Signals) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def client(self, i: int, timeout: float = 10.0) -> KvClient:
        return KvClient(self.http[i], timeout)

    def status(self, i: int) -> dict[str, Any]:
        """The node's ``/kv-admin/status``; ``PlatformUnavailable`` while it is down or
        starting, which ``corral.testing.wait_for`` polls through."""
        url = f"http://{self.http[i]}/kv-admin/status"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                result: dict[str, Any] = json.loads(r.read())
                return result
        except OSError as exc:
            raise PlatformUnavailable(
                f"kv node {self.names[i]}: no status at {url}: {exc}",
                f"see its log, {self.base / self.names[i]}.log",
            ) from None

    def sees_all_alive(self, i: int) -> bool:
        members = self.status(i)["members"]
        alive = sorted(m["name"] for m in members if m["state"] == "alive")
        return alive == self.names

    def wait_ready(self, nodes: Sequence[int] | None = None, timeout: float = 15.0) -> None:
        for i in range(len(self.names)) if nodes is None else nodes:
            wait_for(
                partial(self.sees_all_alive, i),
                timeout,
                0.05,  # each poll is an HTTP request to a node that is starting
                what=f"{self.names[i]} to see every node alive",
            )

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        for proc in self.procs:
            if proc is not None:
                proc.wait(10)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
