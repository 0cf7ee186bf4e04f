"""Real processes on a real (virtual) network: a 3-node Raft store, one host per network
namespace, driven by a history-recording client while a nemesis partitions, pauses, kills and
drops packets — then the history is checked for linearizability (Wing–Gong/Lowe, per key),
as Jepsen checks etcd. One node runs under libfaketime with its clock offset and running 20 %
fast, which must cost liveness at most, never safety (lease reads are off by default).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.sim.linearizability import History, check
from corral.testing import wait_for
from tests import netns

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not netns.available()[0], reason=netns.available()[1]),
]

HERE = Path(__file__).parent
NODES = ["n1", "n2", "n3"]
TRAFFIC_SECONDS = 18.0


class Cluster:
    def __init__(self, net: netns.Net, base: Path) -> None:
        self.net = net
        self.base = base
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.peers = ",".join(f"{i}={net.address(n)}" for i, n in enumerate(NODES, 1))

    def start(self, name: str) -> None:
        node_id = NODES.index(name) + 1
        argv = [sys.executable, str(HERE / "netns_node.py"), str(node_id), self.peers,
                str(self.base / name), "default"]  # fmt: skip
        if name == "n3" and shutil.which("faketime") is not None:
            argv = ["faketime", "-f", "+90s x1.2", *argv]  # clock offset and drift
        # A process group of its own: `faketime` runs the node as its child, and a signal
        # meant for the node (SIGSTOP, SIGKILL) must reach it, not only the wrapper.
        proc = subprocess.Popen(
            self.net.command(name, argv), stdout=subprocess.PIPE, start_new_session=True
        )
        self.procs[name] = proc
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"READY", f"{name} did not start"

    def signal(self, name: str, sig: signal.Signals) -> None:
        os.killpg(self.procs[name].pid, sig)

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def leader(self) -> str | None:
        best: tuple[int, str] | None = None
        for name in self.procs:
            try:
                role = json.loads((self.base / name / "role.json").read_text())
            except (OSError, ValueError):
                continue
            if role["leader"] and (best is None or role["term"] > best[0]):
                best = (role["term"], name)
        return best[1] if best else None

    def close(self) -> None:
        for name in list(self.procs):
            self.signal(name, signal.SIGCONT)  # a stopped process cannot die of SIGKILL cleanly
            self.kill(name)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    net = netns.Net([*NODES, "client"])
    nodes = Cluster(net, tmp_path)
    try:
        for name in NODES:
            nodes.start(name)
        yield nodes
    finally:
        nodes.close()
        net.close()


def load_history(path: Path) -> tuple[History, list[dict[str, Any]]]:
    rows = json.loads(path.read_text())
    history = History()
    for row in sorted(rows, key=lambda r: float(r["invoke"])):
        op = history.invoke(
            int(row["client"]),
            row["kind"],
            str(row["key"]),
            float(row["invoke"]),
            row.get("value"),
            row.get("expected"),
        )
        if row["status"] == "ok":
            history.ok(op, float(row["complete"]), row.get("result"))
        elif row["status"] == "fail":
            history.fail(op, float(row["complete"]))
        else:
            history.info(op)
    return history, rows


def test_a_partitioned_paused_killed_and_lossy_cluster_stays_linearizable(
    cluster: Cluster, tmp_path: Path
) -> None:
    net = cluster.net
    first = wait_for(cluster.leader, 10, interval=0.05, what="a first leader")
    out = tmp_path / "history.json"
    hosts = ",".join(net.address(n) for n in NODES)
    argv = [sys.executable, str(HERE / "netns_client.py"), hosts, str(TRAFFIC_SECONDS), "4"]
    client = subprocess.Popen(net.command("client", [*argv, str(out)]))
    started = time.monotonic()

    def at(offset: float) -> None:
        while time.monotonic() < started + offset:
            assert client.poll() is None, "the client ended early"
            time.sleep(0.02)

    try:
        # 1. The leader is cut off from both followers (symmetric), then healed.
        at(1.5)
        old = str(cluster.leader() or first)
        net.partition([[old], [n for n in NODES if n != old]])
        wait_for(
            lambda: cluster.leader() not in (None, old),
            8,
            interval=0.05,
            what="a leader on the majority side",
        )
        at(4.5)
        net.heal()
        # 2. The leader is paused (SIGSTOP), so its lease and heartbeats stall, then resumed.
        at(5.5)
        paused = str(wait_for(cluster.leader, 8, interval=0.05, what="a leader to pause"))
        cluster.signal(paused, signal.SIGSTOP)
        at(7.5)
        cluster.signal(paused, signal.SIGCONT)
        # 3. One-way: the followers stop hearing the leader, while it still hears them.
        at(8.5)
        deaf = str(wait_for(cluster.leader, 8, interval=0.05, what="a leader to isolate one way"))
        for other in NODES:
            if other != deaf:
                net.one_way(deaf, other)
        at(10.5)
        net.heal()
        # 4. A node is killed with SIGKILL and restarted from its data directory.
        at(11.0)
        victim = str(wait_for(cluster.leader, 8, interval=0.05, what="a leader to kill"))
        cluster.kill(victim)
        at(12.0)
        cluster.start(victim)
        # 5. Random loss of 20 % of what one follower receives, to the end.
        lossy = next(n for n in NODES if n != cluster.leader())
        net.loss(lossy, 0.2)
        at(14.0)
        net.heal()
        assert client.wait(timeout=TRAFFIC_SECONDS + 10) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()

    history, rows = load_history(out)
    result = check(history)
    assert result.ok, result.message
    writes = [r for r in rows if r["kind"] != "get" and r["status"] == "ok"]
    assert len(writes) >= 50, f"only {len(writes)} acknowledged writes"
    # Raft §5.2 with pre-vote and check-quorum: after the last heal, commits resume — within
    # 2 election timeouts (DEFAULT: up to 1 s each) in the simulator; here, on a machine that
    # may be loaded, within twice that.
    healed = started + 14.0
    resumed = min(
        (float(r["complete"]) for r in writes if float(r["invoke"]) >= healed), default=math.inf
    )
    assert resumed - healed < 4.0, "no write committed within 4 s of healing"
