"""Choosing C or A, executable: one 3 | 2 partition of 5 hosts, applied to a CP store (Corral's
Raft store) and to an AP store (Corral's Dynamo-style kv, N=3, R=W=2) at the same time.

    sudo .venv/bin/python examples/cap/run.py

Five hosts are network namespaces around a bridge (``tests/netns.py``); each runs one Raft node
and one kv node. The script writes a cart to both stores, cuts the network into {n1, n2, n3} and
{n4, n5}, writes on both sides, heals, and prints what each store did. It exits 0 when both
behaved as CAP says they must (see README.md), 1 otherwise. Everything it creates — processes,
namespaces, the temporary directory — is removed on the way out.

The script itself stays in the machine's own namespace; each request is made from a thread that
has entered one host's namespace (``setns``), as a client on that side of the partition would.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the namespace helper lives with the tests: reuse, not a copy

from tests import netns  # noqa: E402  (importable only after the sys.path line above)

from corral.errors import CorralError  # noqa: E402
from corral.kv.client import KvClient, KvObject  # noqa: E402

HOSTS = ["n1", "n2", "n3", "n4", "n5"]
MAJORITY, MINORITY = ["n1", "n2", "n3"], ["n4", "n5"]
RAFT_NODE = ROOT / "tests" / "consensus" / "netns_node.py"  # Raft on :7000, its API on :8000
KV_HTTP, KV_PEER = 8100, 7100
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


_T0 = time.monotonic()


def say(text: str = "") -> None:
    body = text.lstrip("\n")
    stamp = f"[{time.monotonic() - _T0:4.1f} s] " if body[:1].isdigit() else ""
    print(text[: len(text) - len(body)] + stamp + body, flush=True)


class Expectations:
    """What CAP says must happen; the exit status is whether it all did."""

    def __init__(self) -> None:
        self.missed: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        say(f"   {'✓' if ok else '✗'} {what}")
        if not ok:
            self.missed.append(what)


def poll(check: Callable[[], T | None], within: float) -> T | None:
    """``check()`` until it returns something, or None after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            value = check()
        except (OSError, CorralError):
            value = None
        if value is not None or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


class Hosts:
    """The five hosts: their namespaces, processes, and a client thread inside each."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.net = netns.Net(HOSTS)
        self.procs: list[subprocess.Popen[bytes]] = []
        libc = ctypes.CDLL(None, use_errno=True)
        self.threads = {
            host: ThreadPoolExecutor(1, initializer=_enter, initargs=(libc, self.ns(host)))
            for host in HOSTS
        }

    def ns(self, host: str) -> str:
        return self.net.namespace(host)

    def on(self, host: str, work: Callable[[], T]) -> T:
        """Run ``work`` from inside ``host``'s network namespace."""
        return self.threads[host].submit(work).result()

    def spawn(self, host: str, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.base / f"{name}.log", "ab")
        try:
            proc = subprocess.Popen(
                self.net.command(host, argv), stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            proc.wait(10)
        for pool in self.threads.values():
            pool.shutdown(wait=False, cancel_futures=True)
        self.net.close()


def _enter(libc: Any, namespace: str) -> None:
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {namespace}")
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- the CP store (Raft)


class Raft:
    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts
        peers = ",".join(f"{i}={hosts.net.address(h)}" for i, h in enumerate(HOSTS, 1))
        for i, host in enumerate(HOSTS, 1):
            argv = [sys.executable, str(RAFT_NODE), str(i), peers, str(self.data(host)), "default"]
            hosts.spawn(host, argv, f"raft-{host}")

    def data(self, host: str) -> Path:
        return self.hosts.base / "raft" / host

    def leader(self) -> str | None:
        best: tuple[int, str] | None = None
        for host in HOSTS:
            try:
                role = json.loads((self.data(host) / "role.json").read_text())
            except (OSError, ValueError):
                continue
            if role["leader"] and (best is None or role["term"] > best[0]):
                best = (role["term"], host)
        return best[1] if best else None

    def op(self, host: str, body: dict[str, Any]) -> tuple[bool, Any]:
        """(accepted, result or the store's error message), asked through ``host``'s node."""
        url = f"http://{self.hosts.net.address(host)}:8000/op"

        def call() -> tuple[bool, Any]:
            request = urllib.request.Request(url, json.dumps(body).encode(), method="POST")
            request.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(request, timeout=6) as response:
                    return True, json.loads(response.read())["result"]
            except urllib.error.HTTPError as exc:
                return False, json.loads(exc.read()).get("message", "")

        return self.hosts.on(host, call)

    def put(self, host: str, value: str) -> tuple[bool, Any]:
        return self.op(host, {"kind": "put", "key": "cart", "value": value})

    def get(self, host: str) -> tuple[bool, Any]:
        return self.op(host, {"kind": "get", "key": "cart"})


# ---------------------------------------------------------------------- the AP store (kv)


class Kv:
    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts
        seeds = ",".join(f"{hosts.net.address(h)}:{KV_PEER}" for h in HOSTS)
        for host in HOSTS:
            address = hosts.net.address(host)
            argv = [
                sys.executable, "-m", "corral.cli.kv", "serve", "--name", host,
                "--listen", f"{address}:{KV_HTTP}", "--peer", f"{address}:{KV_PEER}",
                "--join", seeds, "--data", str(hosts.base / "kv" / host),
                "--n", "3", "--r", "2", "--w", "2", "--membership", "test",
                "--handoff-interval", "0.5", "--ae-interval", "1",
            ]  # fmt: skip
            hosts.spawn(host, argv, f"kv-{host}")

    def call(self, host: str, work: Callable[[KvClient], T]) -> T:
        def run() -> T:
            with KvClient(f"{self.hosts.net.address(host)}:{KV_HTTP}", timeout=5) as client:
                return work(client)

        return self.hosts.on(host, run)

    def alive_seen_by(self, host: str) -> list[str]:
        members = self.call(host, lambda c: c.status())["members"]
        return sorted(m["name"] for m in members if m["state"] == "alive")

    def get(self, host: str) -> KvObject:
        return self.call(host, lambda c: c.get("carts", "alice"))

    def put(self, host: str, value: str, context: str) -> KvObject:
        return self.call(host, lambda c: c.put("carts", "alice", value.encode(), context))


def accepted(answer: tuple[bool, Any]) -> tuple[bool, Any] | None:
    return answer if answer[0] else None


def show(obj: KvObject) -> str:
    return " | ".join(sorted(v.decode() for v in obj.values)) or "(absent)"


# ---------------------------------------------------------------------- the story


def story(hosts: Hosts, raft: Raft, kv: Kv, expect: Expectations) -> None:
    say("1. Five hosts, each running a Raft node and a kv node; waiting for both clusters …")
    leader = poll(raft.leader, 40)
    expect.check(leader is not None, f"Raft elected a leader ({leader})")
    everyone = poll(lambda: all(kv.alive_seen_by(h) == HOSTS for h in HOSTS) or None, 20)
    expect.check(everyone is not None, "every kv node sees all five alive (SWIM)")
    if expect.missed:
        return

    say("\n2. Before the partition: the cart holds 'milk' in both stores.")
    put = poll(lambda: accepted(raft.put("n1", "milk")), 10)
    expect.check(put is not None, "Raft accepted the write")
    first = kv.put("n1", "milk", "")
    expect.check(show(first) == "milk", "kv accepted the write (W=2 of N=3)")
    context = first.context

    say(f"\n3. Partition: {{{', '.join(MAJORITY)}}} | {{{', '.join(MINORITY)}}} (iptables DROP).")
    hosts.net.partition([MAJORITY, MINORITY])
    cut = poll(
        lambda: (
            (
                all(set(kv.alive_seen_by(h)) <= set(MAJORITY) for h in MAJORITY)
                and all(set(kv.alive_seen_by(h)) <= set(MINORITY) for h in MINORITY)
            )
            or None
        ),
        15,
    )
    expect.check(cut is not None, "each side's kv nodes stopped seeing the other side (SWIM)")

    say("\n4. CP — Raft, writes on each side:")
    minority = raft.put("n4", "milk, bread")
    say(f"   n4 (minority): {'accepted' if minority[0] else 'refused: ' + str(minority[1])}")
    expect.check(
        not minority[0] and "no quorum" in str(minority[1]),
        "the minority refuses the write with 'no quorum' (2 of 5 is not a majority)",
    )
    # Retried until a leader on the majority side has it (one is elected if the old leader
    # was cut off); putting the same value twice leaves the same state.
    majority = poll(lambda: accepted(raft.put("n1", "milk, eggs")), 15)
    expect.check(
        majority is not None and raft.leader() in MAJORITY,
        f"the majority accepts it (its leader: {raft.leader()})",
    )

    say("\n5. AP — kv, writes on each side, both from the context read before the partition:")
    eggs = kv.put("n1", "milk, eggs", context)
    say(f"   n1 (majority side) wrote: {show(eggs)}")
    bread = kv.put("n4", "milk, bread", context)
    say(f"   n4 (minority side) wrote: {show(bread)}")
    expect.check(
        show(eggs) == "milk, eggs" and show(bread) == "milk, bread",
        "both sides accept the write (sloppy quorum: fallback nodes on each side hold hints)",
    )

    say("\n6. Heal the network.")
    hosts.net.heal()
    healed = poll(lambda: all(kv.alive_seen_by(h) == HOSTS for h in HOSTS) or None, 20)
    expect.check(healed is not None, "every kv node sees all five alive again")

    say("\n7. CP after healing: the minority catches up with the majority's history.")

    # A refusal that says "outcome is unknown" is honest: n4 had forwarded the write to the old
    # leader just before the cut, and TCP keeps retransmitting it, so it may still land after
    # the heal (as etcd's "request timed out, possibly due to connection lost"). What Raft
    # guarantees either way is one history: n4 reads what the majority reads.
    unknown = "outcome is unknown" in str(minority[1])
    allowed = {"milk, eggs", "milk, bread"} if unknown else {"milk, eggs"}

    def caught_up() -> tuple[bool, Any] | None:
        got = raft.get("n4")
        agreed = got[0] and got == raft.get("n1") and got[1] in allowed
        return got if agreed else None

    caught = poll(caught_up, 15)
    say(f"   n4 reads: {caught[1] if caught else raft.get('n4')}")
    if caught is not None and caught[1] == "milk, bread":
        say("   (n4's write was in flight when the cut came: it landed after the heal, once)")
    expect.check(
        caught is not None,
        "n4 reads what the majority reads; a refused write never happened "
        "(one refused with an unknown outcome may land later, exactly once)",
    )

    say("\n8. AP after healing: hinted handoff and anti-entropy bring both versions together.")

    def siblings() -> KvObject | None:
        got = kv.get("n2")
        return got if len(got.values) == 2 else None

    both = poll(siblings, 20)
    say(f"   n2 reads {len(both.values) if both else '?'} siblings: {show(both) if both else '-'}")
    expect.check(
        both is not None and show(both) == "milk, bread | milk, eggs",
        "the concurrent writes are both kept, as siblings — neither was lost",
    )
    if both is None:
        return
    merged = kv.put("n5", "milk, bread, eggs", both.context)
    say(f"   n5 writes the merge with the siblings' context: {show(merged)}")
    resolved = poll(lambda: all(show(kv.get(h)) == "milk, bread, eggs" for h in HOSTS) or None, 10)
    expect.check(resolved is not None, "one value everywhere: the write with context resolved them")


@contextmanager
def cluster(base: Path) -> Iterator[tuple[Hosts, Raft, Kv]]:
    hosts = Hosts(base)
    try:
        yield hosts, Raft(hosts), Kv(hosts)
    finally:
        hosts.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the node logs' directory")
    args = parser.parse_args()
    usable, why = netns.available()
    if not usable:
        say(f"cannot run: {why}")
        return 2
    base = Path(tempfile.mkdtemp(prefix="corral-cap-"))
    expect = Expectations()
    started = time.monotonic()
    try:
        with cluster(base) as (hosts, raft, kv):
            story(hosts, raft, kv, expect)
    finally:
        if args.keep or expect.missed:
            say(f"\nnode logs: {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    took = time.monotonic() - started
    if expect.missed:
        say(f"\nFAILED ({took:.1f} s): " + "; ".join(expect.missed))
        return 1
    say(f"\nAs CAP predicts ({took:.1f} s): Raft chose consistency, kv chose availability.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
