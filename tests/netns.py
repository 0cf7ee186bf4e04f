"""Several hosts on one machine for real-process tests: network namespaces around a bridge.

Each test builds its own small network: a *hub* namespace holding a Linux bridge, and one
namespace per host joined to the bridge by a veth pair (``eth0`` in the host, ``p<i>`` in the
hub), with the address ``10.77.0.<i>``. Nothing touches the machine's own namespace: the veth
pairs are created directly inside the namespaces, so parallel tests (each with its own hub)
may even reuse the same addresses. Faults are iptables rules inside the hosts' namespaces:

- ``partition([["n1"], ["n2", "n3"]])`` — symmetric: each host drops packets from hosts
  outside its group;
- ``one_way("n1", "n2")`` — n2 stops hearing n1 (n1 still hears n2);
- ``loss("n1", 0.1)`` — n1 drops 10 % of what it receives, at random;
- ``heal()`` — every rule flushed.

``close()`` deletes the namespaces (and with them every interface and rule). Tests run as
root (CI does); ``available()`` tells whether this machine can do it at all.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Sequence

_counter = itertools.count(1)


def available() -> tuple[bool, str]:
    """Whether namespaces and iptables can be used here, and if not, why."""
    if os.geteuid() != 0:
        return False, "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return False, f"{tool} not installed (scripts/bootstrap.sh --test installs it)"
    return True, ""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Net:
    def __init__(self, hosts: Sequence[str]) -> None:
        self.prefix = f"crl{os.getpid()}x{next(_counter)}"
        self.hub = f"{self.prefix}-hub"
        self.hosts = list(hosts)
        self.created: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def namespace(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        return f"10.77.0.{self.hosts.index(host) + 1}"

    def _build(self) -> None:
        _run("ip", "netns", "add", self.hub)
        self.created.append(self.hub)
        self.exec_quiet(self.hub, "ip", "link", "add", "br0", "type", "bridge")
        self.exec_quiet(self.hub, "ip", "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts, 1):
            ns = self.namespace(host)
            _run("ip", "netns", "add", ns)
            self.created.append(ns)
            _run(
                "ip", "link", "add", "eth0", "netns", ns, "type", "veth",
                "peer", "name", f"p{i}", "netns", self.hub,
            )  # fmt: skip
            self.exec_quiet(self.hub, "ip", "link", "set", f"p{i}", "master", "br0")
            self.exec_quiet(self.hub, "ip", "link", "set", f"p{i}", "up")
            self.exec_quiet(ns, "ip", "addr", "add", f"{self.address(host)}/24", "dev", "eth0")
            self.exec_quiet(ns, "ip", "link", "set", "eth0", "up")
            self.exec_quiet(ns, "ip", "link", "set", "lo", "up")

    def exec_quiet(self, namespace: str, *argv: str) -> None:
        _run("ip", "netns", "exec", namespace, *argv)

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace (prefix it with ``faketime …`` to skew)."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    # ------------------------------------------------------------------ faults

    def _drop(self, host: str, *match: str) -> None:
        self.exec_quiet(self.namespace(host), "iptables", "-A", "INPUT", *match, "-j", "DROP")

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        for group in groups:
            for host in group:
                for other in self.hosts:
                    if other not in group:
                        self._drop(host, "-s", self.address(other))

    def one_way(self, source: str, target: str) -> None:
        """``target`` no longer receives anything from ``source``."""
        self._drop(target, "-s", self.address(source))

    def loss(self, host: str, probability: float) -> None:
        self._drop(host, "-m", "statistic", "--mode", "random", "--probability", f"{probability}")

    def heal(self) -> None:
        for host in self.hosts:
            self.exec_quiet(self.namespace(host), "iptables", "-F", "INPUT")

    def close(self) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created.clear()
