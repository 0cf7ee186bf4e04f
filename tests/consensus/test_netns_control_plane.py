"""The control plane keeps reconciling through a leader failure, on a real (virtual) network:
three ``corral server --cluster`` nodes, one per network namespace (API and Raft on the
namespace's address), and the test itself acting as a client host in a fourth namespace. The
leader is partitioned away with iptables; the new leader's controllers must adopt the app
and respawn its killed instance; after healing, the old leader catches up and nothing
written before or during the partition is lost.

The nodes share one ``$CORRAL_HOME``: that is what the cluster design requires on one machine
(see ``corral.cluster_server``) — the instances, their records and the tokens belong to the
machine, so whichever node leads runs the machine's agent and re-adopts what the previous
leader's agent started. Only the network is split, not the filesystem or the pids.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.client import Client
from corral.errors import CorralError
from corral.home import Home
from corral.testing import kill_leftovers, wait_for
from tests import netns

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not netns.available()[0], reason=netns.available()[1]),
]

NODES = ["n1", "n2", "n3"]
CLIENT = "client"
API_PORT = 8400  # each namespace has its own ports: the same number everywhere
RAFT_PORT = 7001
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def network_namespace(name: str) -> Iterator[None]:
    """Run this thread (and what it starts) in network namespace ``name``, then come back.
    Python 3.11 has no ``os.setns``: libc's, through ctypes."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
        try:
            yield
        finally:
            libc.setns(home, CLONE_NEWNET)
    finally:
        os.close(target)
        os.close(home)


class Cluster:
    def __init__(self, net: netns.Net, home: Home) -> None:
        self.net = net
        self.home = home
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.peers = ",".join(f"{i}={net.address(n)}:{RAFT_PORT}" for i, n in enumerate(NODES, 1))
        self.env = {**os.environ, "CORRAL_HOME": str(home.path)}

    def url(self, name: str) -> str:
        return f"http://{self.net.address(name)}:{API_PORT}"

    def start(self) -> None:
        for i, name in enumerate(NODES, 1):
            api = f"{self.net.address(name)}:{API_PORT}"
            argv = [sys.executable, "-m", "corral.cli.main", "server", "--cluster",
                    "--node-id", str(i), "--peers", self.peers, "--api", api,
                    "--request-timeout", "2"]  # fmt: skip
            with open(self.home.path / f"{name}.out", "ab") as out:
                self.procs[name] = subprocess.Popen(
                    self.net.command(name, argv),
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                )

    def client(self, *names: str) -> Client:
        return Client([self.url(n) for n in names or NODES], self.home.token(), timeout=5.0)

    def view(self, name: str) -> dict[str, Any] | None:
        try:
            view: dict[str, Any] = Client(self.url(name), self.home.token(), 2.0).request(
                "GET", "/cluster"
            )
        except CorralError:
            return None
        return view

    def leader(self, among: list[str]) -> str | None:
        """The node every one of ``among`` names as leader (None while they disagree)."""
        leaders = {v["leader"] if v else None for v in map(self.view, among)}
        lead = leaders.pop() if len(leaders) == 1 else None
        return NODES[lead - 1] if lead else None

    def running(self, names: list[str]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.client(*names).request("GET", "/instances")
        return [i for i in items if i["service"] == "web" and i["phase"] == "run" and i["pid"]]

    def report(self) -> None:
        for name in NODES:
            path = self.home.node_dir(NODES.index(name) + 1) / "server.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-25:]
                print(f"--- {name}", *tail, sep="\n")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            client = self.client()
            client.request("POST", "/down")
            wait_for(lambda: not client.request("GET", "/services", {"system": 1}), 10.0)
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        kill_leftovers(self.home.path)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    net = netns.Net([*NODES, CLIENT])
    home = Home(tmp_path / "home")
    home.create()
    c = Cluster(net, home)
    try:
        with network_namespace(net.namespace(CLIENT)):
            c.start()
            try:
                yield c
            except BaseException:
                c.report()
                raise
            finally:
                c.close()
    finally:
        net.close()


def test_new_leader_respawns_the_app_while_the_old_one_is_partitioned_away(
    cluster: Cluster, tmp_path: Path
) -> None:
    net = cluster.net
    wait_for(lambda: cluster.leader(NODES), 15.0, interval=0.05, what="a leader")
    manifest = tmp_path / "corral.yaml"
    manifest.write_text(
        "services:\n  web:\n"
        f"    command: [{sys.executable}, -c, 'import time; time.sleep(3600)']\n"
        "    restart: {backoff: {initial: 100ms, max: 1s}}\n"
        "    stop: {grace: 1s}\n"
    )
    applied = subprocess.run(
        [sys.executable, "-m", "corral.cli.main", "apply", str(manifest)],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    first = wait_for(lambda: cluster.running(NODES), 15.0, what="web to run")[0]
    cluster.client().request("PUT", "/secrets/before", {"value": "1"})

    # Cut the leader off from everyone (the client host included).
    old = cluster.leader(NODES)
    assert old is not None
    rest = [n for n in NODES if n != old]
    net.partition([[old], [*rest, CLIENT]])
    new = wait_for(
        lambda: next((lead for lead in [cluster.leader(rest)] if lead != old), None),
        10.0,
        interval=0.05,
        what="a new leader among the majority",
    )

    # The new leader's controllers adopted the app: they respawn its killed instance.
    os.kill(first["pid"], signal.SIGKILL)
    again = wait_for(
        lambda: [i for i in cluster.running(rest) if i["pid"] != first["pid"]],
        15.0,
        what="web to be respawned by the new leader",
    )
    assert len(again) == 1
    cluster.client(*rest).request("PUT", "/secrets/during", {"value": "2"})

    # Heal: the old leader follows the new one and has every write, its own copy included.
    net.heal()
    commit = cluster.view(new)
    assert commit is not None

    def caught_up() -> bool:
        view = cluster.view(old)
        return (
            view is not None
            and view["leader"] == NODES.index(new) + 1
            and view["applied"] >= commit["commit"]
        )

    wait_for(caught_up, 10.0, interval=0.05, what=f"{old} to rejoin and catch up")
    assert {"before", "during"} <= set(cluster.client(old).request("GET", "/secrets"))
    services = {s["name"]: s for s in cluster.client(old).request("GET", "/services")}
    assert services["web"]["release"] == 1  # nothing re-applied, nothing lost
    assert [i["id"] for i in cluster.running(NODES)] == [again[0]["id"]]
