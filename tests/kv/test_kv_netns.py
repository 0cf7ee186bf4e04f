"""The AP store on a real (virtual) network: one node per network namespace, real faults.

Each test builds hosts around a bridge (``tests.netns``), runs ``corral kv serve`` in each
node's namespace, and drives the store from a client host ``c`` through this module run as a
small JSON-lines driver (``python -m tests.kv.test_kv_netns``: one request per line, answered
with one line), since the test process itself sits outside every namespace. Partitions are
drawn between store nodes only, so the client reaches both sides, as clients of a partitioned
Dynamo do. After the faults heal, the issue's checkers: every acknowledged write is readable
(as a value or a sibling) on every node, hint stores drain to empty, and every pair of nodes
reports equal Merkle roots over the keys they share (``/kv-admin/status``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from corral.testing import wait_for
from tests import netns

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not netns.available()[0], reason=netns.available()[1]),
]

HTTP, PEER = 8500, 8501
ROOT = Path(__file__).resolve().parents[2]


class Store:
    """``nodes`` store nodes plus the client host ``c`` on one bridge."""

    def __init__(self, base: Path, nodes: int, options: Sequence[str] = ()) -> None:
        self.base = base
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.options = list(options)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.net = netns.Net([*self.names, "c"])
        self.driver: subprocess.Popen[str] | None = None
        try:
            for name in self.names:
                self.start(name)
            argv = [sys.executable, "-m", "tests.kv.test_kv_netns"]
            self.driver = subprocess.Popen(
                self.net.command("c", argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
        except BaseException:
            self.close()
            raise

    def http(self, name: str) -> str:
        return f"{self.net.address(name)}:{HTTP}"

    def start(self, name: str) -> None:
        peer = f"{self.net.address(name)}:{PEER}"
        argv = [
            sys.executable, "-m", "corral.cli.kv", "serve", "--name", name,
            "--listen", self.http(name), "--peer", peer,
            "--join", f"{self.net.address(self.names[0])}:{PEER}",
            "--data", str(self.base / name), "--membership", "test",
            "--ae-interval", "1", "--handoff-interval", "0.5", *self.options,
        ]  # fmt: skip
        with open(self.base / f"{name}.log", "ab") as log:
            self.procs[name] = subprocess.Popen(
                self.net.command(name, argv), stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)

    def signal(self, name: str, sig: signal.Signals) -> None:
        self.procs[name].send_signal(sig)

    def close(self) -> None:
        if self.driver is not None:
            self.driver.kill()
            self.driver.wait(10)
        for name in list(self.procs):
            self.kill(name)
        self.net.close()

    # ------------------------------------------------------------------ faults between nodes

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        for group in groups:
            for host in group:
                for other in self.names:
                    if other not in group:
                        self.net.one_way(other, host)

    # ------------------------------------------------------------------ the driver

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.driver is not None and self.driver.stdin and self.driver.stdout
        self.driver.stdin.write(json.dumps(request) + "\n")
        self.driver.stdin.flush()
        line = self.driver.stdout.readline()
        assert line, "the client driver died"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def put(self, node: str, key: str, value: str, context: str = "", within: float = 10) -> str:
        """Retries until a node acknowledges: only acknowledged writes are promised."""
        answer = self.ask(op="put", host=self.http(node), key=key, value=value,
                          context=context, within=within)  # fmt: skip
        assert answer["ok"], f"put {key}={value} through {node}: {answer['error']}"
        return str(answer["context"])

    def get(self, node: str, key: str, r: int | None = None) -> tuple[list[str], str]:
        answer = self.ask(op="get", host=self.http(node), key=key, r=r, within=10)
        assert answer["ok"], f"get {key} through {node}: {answer['error']}"
        return sorted(answer["values"]), str(answer["context"])

    def status(self, node: str) -> dict[str, Any] | None:
        answer = self.ask(op="status", host=self.http(node))
        return answer["status"] if answer["ok"] else None

    def sees(self, node: str, alive: Sequence[str]) -> bool:
        status = self.status(node)
        if status is None:
            return False
        seen = sorted(m["name"] for m in status["members"] if m["state"] == "alive")
        return seen == sorted(alive)


def counter(store: Store, name: str) -> int:
    statuses = [store.status(n) for n in store.names]
    return sum(s["counters"][name] for s in statuses if s is not None)


def healed(store: Store, acked: dict[str, str]) -> None:
    """The checkers after healing, polled until they hold."""
    names = store.names
    for name in names:
        wait_for(
            partial(store.sees, name, names), 15.0, 0.1, what=f"{name} to see every node alive"
        )

    def readable_everywhere() -> bool:
        return all(
            value in store.get(name, key)[0] for key, value in acked.items() for name in names
        )

    wait_for(
        readable_everywhere, 15.0, 0.1, what="every acknowledged write to be readable on every node"
    )

    def hints_drained() -> bool:
        statuses = [store.status(n) for n in names]
        return all(s is not None and s["hints_pending"] == 0 for s in statuses)

    wait_for(hints_drained, 15.0, 0.1, what="every hint store to drain")

    def roots_equal() -> bool:
        merkle = {}
        for n in names:
            status = store.status(n)
            if status is None:
                return False
            merkle[n] = status["merkle"]
            if sorted(merkle[n]) != sorted(set(names) - {n}):
                return False  # its ring does not hold every node yet
        return all(merkle[a][b] == merkle[b][a] for a in names for b in names if a != b)

    wait_for(roots_equal, 15.0, 0.1, what="every pair of nodes to report equal Merkle roots")


@pytest.fixture
def store5(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path, 5)
    try:
        for name in store.names:
            wait_for(
                partial(store.sees, name, store.names), 15.0, 0.1, what=f"{name} to see all 5 nodes"
            )
        yield store
    finally:
        store.close()


@pytest.fixture
def store3(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path, 3)
    try:
        for name in store.names:
            wait_for(
                partial(store.sees, name, store.names), 15.0, 0.1, what=f"{name} to see all 3 nodes"
            )
        yield store
    finally:
        store.close()


def test_both_sides_of_a_partition_take_writes_which_become_siblings_a_context_write_collapses(
    store5: Store,
) -> None:
    s = store5
    base = s.put("n1", "cart", "empty")
    acked = {"cart": "empty"}
    left, right = ["n1", "n2", "n3"], ["n4", "n5"]
    s.partition([left, right])
    wait_for(
        lambda: s.sees("n1", left), 15.0, 0.1, what="the majority to lose sight of the minority"
    )
    wait_for(
        lambda: s.sees("n4", right), 15.0, 0.1, what="the minority to lose sight of the majority"
    )
    s.put("n1", "cart", "apples", base)  # both saw "empty": the two writes are concurrent
    s.put("n4", "cart", "pears", base)
    for i in range(5):  # sloppy quorum: every key is writable on either side
        s.put(left[i % 3], f"left{i}", f"l{i}")
        s.put(right[i % 2], f"right{i}", f"r{i}")
        acked |= {f"left{i}": f"l{i}", f"right{i}": f"r{i}"}
    s.net.heal()

    def siblings_seen() -> bool:
        return s.get("n2", "cart", r=3)[0] == ["apples", "pears"]

    wait_for(siblings_seen, 15.0, 0.1, what="both sides' writes to meet as siblings")
    _, context = s.get("n2", "cart", r=3)
    s.put("n5", "cart", "apples+pears", context)
    acked["cart"] = "apples+pears"
    healed(s, acked)
    assert counter(s, "hints_written") > 0  # the minority's writes went through stand-ins
    for name in s.names:
        assert s.get(name, "cart")[0] == ["apples+pears"]  # the merge superseded both


def test_writes_succeed_through_one_way_partition_loss_kill_and_stop_then_converge(
    store3: Store,
) -> None:
    s = store3
    acked: dict[str, str] = {}

    def write(node: str, key: str, within: float = 10) -> None:
        s.put(node, key, f"v-{key}", within=within)
        acked[key] = f"v-{key}"

    s.net.one_way("n1", "n3")  # n3 stops hearing n1; n1 still hears n3
    for i in range(5):
        write(["n1", "n2", "n3"][i % 3], f"oneway{i}")
    s.net.heal()
    for name in s.names:
        s.net.loss(name, 0.1)
    start = time.monotonic()
    for i in range(10):
        write(["n1", "n2", "n3"][i % 3], f"lossy{i}", within=5)
    assert time.monotonic() - start < 20, "10 % loss made writes crawl"
    s.net.heal()
    s.kill("n3")  # SIGKILL: W=2 of n1, n2
    for i in range(5):
        write(["n1", "n2"][i % 2], f"killed{i}")
    s.start("n3")  # same data directory: it catches up through hints and anti-entropy
    wait_for(lambda: s.sees("n1", s.names), 15.0, 0.1, what="n3 to rejoin")
    s.signal("n2", signal.SIGSTOP)  # a paused process: its sockets stay open, silent
    try:
        for i in range(5):
            write(["n1", "n3"][i % 2], f"stopped{i}")
    finally:
        s.signal("n2", signal.SIGCONT)
    healed(s, acked)
    assert counter(s, "handoffs") > 0  # what n3 and n2 missed came back by hinted handoff


def test_aurora_quorum_n6_w4_r3_keeps_writing_and_reading_with_two_nodes_down(
    tmp_path: Path,
) -> None:
    """Aurora's 6 copies over 3 zones: losing a zone (2 nodes) keeps writes (W=4) and reads
    (R=3) going; the zone comes back and catches up."""
    s = Store(tmp_path, 6, ["--n", "6", "--r", "3", "--w", "4"])
    try:
        for name in s.names:
            wait_for(partial(s.sees, name, s.names), 15.0, 0.1, what=f"{name} to see all 6 nodes")
        acked = {}
        s.kill("n5")
        s.kill("n6")
        for i in range(6):
            key = f"zone-down{i}"
            s.put(s.names[i % 4], key, f"v{i}")
            acked[key] = f"v{i}"
            assert s.get(s.names[(i + 1) % 4], key)[0] == [f"v{i}"]  # R=3 overlaps W=4
        s.start("n5")
        s.start("n6")
        healed(s, acked)
    finally:
        s.close()


# ---------------------------------------------------------------------- the client driver


def _driver() -> None:
    """One JSON request per stdin line → one JSON answer per stdout line."""
    from corral.errors import CorralError
    from corral.kv.client import KvClient

    clients: dict[str, KvClient] = {}

    def client(host: str) -> KvClient:
        if host not in clients:
            clients[host] = KvClient(host, timeout=3.0)
        return clients[host]

    def run(req: dict[str, Any]) -> dict[str, Any]:
        kv = client(req["host"])
        if req["op"] == "status":
            return {"ok": True, "status": kv.status()}
        bucket, key = "t", req["key"]
        deadline = time.monotonic() + req.get("within", 10)
        while True:
            try:
                if req["op"] == "put":
                    obj = kv.put(bucket, key, req["value"].encode(), req["context"])
                else:
                    obj = kv.get(bucket, key, req.get("r"))
                return {
                    "ok": True,
                    "values": [v.decode() for v in obj.values],
                    "context": obj.context,
                }
            except CorralError as exc:
                kv.close()
                if time.monotonic() > deadline:
                    return {"ok": False, "error": f"{exc.code}: {exc.message}"}
                time.sleep(0.1)

    for line in sys.stdin:
        try:
            answer = run(json.loads(line))
        except Exception as exc:  # the test reads the error instead of a hung pipe
            answer = {"ok": False, "error": repr(exc)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    _driver()
