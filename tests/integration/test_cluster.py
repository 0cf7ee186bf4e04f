"""A 3-node control plane (`corral server --cluster`) as real processes on loopback.

The nodes share one machine's $CORRAL_HOME (instances, tokens) and keep their Raft log and
store under nodes/<id>/. Raft ports come from binding port 0; the API ports are chosen by the
nodes themselves and published in $CORRAL_HOME/api. On a failure the test prints the tail of
every node's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.client import Client
from corral.errors import CorralError
from corral.home import Home
from corral.testing import free_ports, kill_leftovers, wait_for
from tests.integration.apps import service_yaml, write_app

pytestmark = pytest.mark.timeout(120)


class Cluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.home = Home(root / "home")
        self.home.path.mkdir(parents=True)
        ports = free_ports(size + 1)  # one spare for a node that joins
        self.addresses = {i: f"127.0.0.1:{port}" for i, port in enumerate(ports, 1)}
        self.voters = list(range(1, size + 1))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "CORRAL_HOME": str(self.home.path)}

    def launch(self, node_id: int, join: bool = False) -> None:
        ids = sorted({*self.voters, node_id})
        peers = ",".join(f"{i}={self.addresses[i]}" for i in ids)
        command = [sys.executable, "-m", "corral.cli.main", "server", "--cluster"]
        command += ["--node-id", str(node_id), "--peers", peers, "--request-timeout", "2"]
        if join:
            command.append("--join")
        with open(self.home.path / f"node{node_id}.out", "ab") as out:
            self.procs[node_id] = subprocess.Popen(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def start(self) -> None:
        for node_id in self.voters:
            self.launch(node_id)
        wait_for(self.leader, 20.0, interval=0.05, what="a leader")

    def kill9(self, node_id: int) -> None:
        proc = self.procs.pop(node_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def node_url(self, node_id: int) -> str | None:
        with contextlib.suppress(FileNotFoundError):
            return (self.home.node_dir(node_id) / "api").read_text().strip() or None
        return None

    def view(self, node_id: int) -> dict[str, Any] | None:
        """Node ``node_id``'s own view of the cluster (None while it does not answer)."""
        url = self.node_url(node_id)
        if node_id not in self.procs or url is None:
            return None
        try:
            view: dict[str, Any] = Client(url, self.home.token(), timeout=2.0).request(
                "GET", "/cluster"
            )
        except CorralError:
            return None
        return view

    def leader(self) -> int | None:
        """The leader every running voter agrees on (None while they do not)."""
        running = [i for i in sorted(self.procs) if i in self.voters]
        leaders = {v["leader"] if v else None for v in map(self.view, running)}
        leader = leaders.pop() if len(leaders) == 1 else None
        return leader if leader in self.procs else None

    def client(self) -> Client:
        return Client.for_home(self.home, timeout=10.0)

    def corral(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def running(self, service: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.client().request("GET", "/instances")
        return [i for i in items if i["service"] == service and i["phase"] == "run" and i["pid"]]

    @contextlib.contextmanager
    def reporting(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            for node_id in sorted({*self.voters, 4}):
                path = self.home.node_dir(node_id) / "server.log"
                if path.exists():
                    tail = path.read_text(errors="replace").splitlines()[-30:]
                    print(f"--- node {node_id}", *tail, sep="\n")
            raise

    def close(self) -> None:
        if self.procs:
            with contextlib.suppress(Exception):
                client = self.client()
                client.request("POST", "/down")
                wait_for(lambda: not client.request("GET", "/services", {"system": 1}), 20.0)
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
    c = Cluster(tmp_path)
    try:
        with c.reporting():
            c.start()
        yield c
    finally:
        c.close()


def test_control_plane_keeps_reconciling_an_app_through_a_leader_failure(
    cluster: Cluster, tmp_path: Path
) -> None:
    with cluster.reporting():
        _leader_failure(cluster, tmp_path)


def _leader_failure(cluster: Cluster, tmp_path: Path) -> None:
    manifest = tmp_path / "corral.yaml"
    manifest.write_text("services:\n" + service_yaml("web", write_app(tmp_path)))
    applied = cluster.corral("apply", str(manifest))
    assert applied.returncode == 0, applied.stderr
    first = wait_for(lambda: cluster.running("web"), 20.0, what="web to run")[0]
    cluster.client().request("PUT", "/secrets/before", {"value": "1"})

    # SIGKILL the leader: a new one within a few seconds, and the API answers through a
    # client whose first URL is the dead node's.
    old = cluster.leader()
    assert old is not None
    dead_url = cluster.node_url(old)
    assert dead_url is not None
    cluster.kill9(old)
    new = wait_for(cluster.leader, 10.0, interval=0.05, what="a new leader")
    assert new != old  # how fast is bench/raft_vs_etcd.py's figure, not this test's
    others = [u for u in cluster.home.api_urls() if u != dead_url]
    failover = Client([dead_url, *others], cluster.home.token())
    assert "web" in {s["name"] for s in failover.request("GET", "/services")}
    status = cluster.corral("status")
    assert status.returncode == 0, status.stderr
    assert "web" in status.stdout

    # The new leader's controllers adopted the app and still heal it.
    os.kill(first["pid"], signal.SIGKILL)
    again = wait_for(
        lambda: [i for i in cluster.running("web") if i["pid"] != first["pid"]],
        20.0,
        what="web to be respawned by the new leader",
    )
    assert len(again) == 1
    services = {s["name"]: s for s in cluster.client().request("GET", "/services")}
    assert services["web"]["release"] == 1  # nothing re-applied, nothing lost
    assert "before" in cluster.client().request("GET", "/secrets")

    # Lose a majority: writes fail with "no quorum" and exit 3 …
    cluster.kill9(new)
    refused = cluster.corral("secret", "set", "during", "--value", "2")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "no quorum" in refused.stderr

    # … and resume by themselves once it is back.
    cluster.launch(new)

    def write() -> bool:
        cluster.client().request("PUT", "/secrets/after", {"value": "3"})
        return True

    wait_for(write, 20.0, interval=0.1, what="writes to resume")
    assert {"before", "after"} <= set(cluster.client().request("GET", "/secrets"))
    wait_for(lambda: cluster.running("web"), 20.0, what="web to run under the next leader")


def test_cluster_status_transfer_and_membership_work_from_any_node(cluster: Cluster) -> None:
    with cluster.reporting():
        _transfer_and_membership(cluster)


def _transfer_and_membership(cluster: Cluster) -> None:
    cluster.launch(4, join=True)  # starts while the rest runs; added below
    shown = cluster.corral("cluster", "status")
    assert shown.returncode == 0, shown.stderr
    assert "leader: node" in shown.stdout
    old = cluster.leader()
    assert old is not None

    # through a follower, which redirects the client to the leader
    follower = next(i for i in cluster.voters if i != old)
    url = cluster.node_url(follower)
    assert url is not None
    moved = Client(url, cluster.home.token()).request("POST", "/cluster/transfer-leader", {})
    assert moved["from"] == old
    assert moved["leader"] != old
    wait_for(lambda: cluster.leader() == moved["leader"], 10.0, what="everyone to agree")
    back = cluster.corral("cluster", "transfer-leader", str(old))
    assert back.returncode == 0, back.stderr
    wait_for(lambda: cluster.leader() == old, 10.0, what="leadership to come back")

    wait_for(lambda: cluster.node_url(4), 10.0, what="node 4 to serve")
    added = cluster.corral("cluster", "add", f"4={cluster.addresses[4]}")
    assert added.returncode == 0, added.stderr

    def members() -> dict[int, dict[str, Any]]:
        status = json.loads(cluster.corral("cluster", "status", "--json").stdout)
        return {m["id"]: m for m in status["members"]}

    def caught_up() -> bool:
        view = cluster.view(4)
        return view is not None and view["role"] == "follower" and 4 in view["voters"]

    wait_for(caught_up, 10.0, interval=0.1, what="node 4 to vote")
    rows = members()
    assert sorted(rows) == [1, 2, 3, 4]
    assert all(row["voter"] for row in rows.values())
    removed = cluster.corral("cluster", "remove", "4")
    assert removed.returncode == 0, removed.stderr
    assert sorted(members()) == [1, 2, 3]

    # the leader removing itself: it answers success, and its record goes with it
    leaving = cluster.leader()
    assert leaving is not None
    removed = cluster.corral("cluster", "remove", str(leaving))
    assert removed.returncode == 0, removed.stderr
    cluster.voters.remove(leaving)
    rest = sorted(cluster.voters)
    wait_for(lambda: sorted(members()) == rest, 10.0, interval=0.1, what="its record to go")


def _get(port: int, path: str = "/") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""


def test_gateway_keeps_routing_across_a_leader_kill_and_down_stops_every_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    with cluster.reporting():
        _gateway_and_down(cluster, tmp_path)


def _gateway_and_down(cluster: Cluster, tmp_path: Path) -> None:
    app = write_app(tmp_path)
    port = free_ports(1)[0]
    manifest = tmp_path / "corral.yaml"

    manifest.write_text(
        "services:\n"
        + service_yaml("web", app)
        + f"gateway:\n  listen: 127.0.0.1:{port}\n  routes:\n"
        "    - {name: web, match: {path_prefix: /}, service: web}\n"
    )
    applied = cluster.corral("apply", str(manifest))
    assert applied.returncode == 0, applied.stderr
    first = wait_for(lambda: cluster.running("web"), 20.0, what="web to run")[0]
    wait_for(lambda: _get(port)[1] == first["id"], 20.0, what="the gateway to route to web")

    # The gateway read the Store from the leader's API (first in $CORRAL_HOME/api): kill it.
    old = cluster.leader()
    assert old is not None
    assert cluster.home.api_urls()[0] == cluster.node_url(old)
    cluster.kill9(old)
    assert _get(port) == (200, first["id"])  # still routing from what it knows
    wait_for(cluster.leader, 10.0, interval=0.05, what="a new leader")

    # A scale change made through the new leader reaches the gateway's routing.
    scaled = cluster.corral("scale", "web=2")
    assert scaled.returncode == 0, scaled.stderr
    both = wait_for(
        lambda: (
            {i["id"] for i in cluster.running("web")} if len(cluster.running("web")) == 2 else None
        ),
        20.0,
        what="web scaled to 2",
    )
    wait_for(
        lambda: {_get(port)[1] for _ in range(20)} == both,
        20.0,
        what="the gateway to route to both instances",
    )

    # `corral down` stops the services, then every node, not only the one that answered.
    pids = [i["pid"] for i in cluster.running("web")]
    down = cluster.corral("down", "--timeout", "20")
    assert down.returncode == 0, down.stdout + down.stderr
    for node_id, proc in sorted(cluster.procs.items()):
        assert proc.wait(10) == 0, f"node {node_id} exited with {proc.returncode}"
    cluster.procs.clear()
    assert not cluster.home.is_locked()
    assert _get(port)[0] == 0  # the gateway is gone too
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
