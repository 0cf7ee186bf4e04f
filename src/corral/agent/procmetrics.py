"""Per-instance process metrics, sampled by the agent: CPU, RSS, open fds, threads, restarts.

Every figure covers the whole instance — every process of it, ``setsid`` children included —
read, in this order of preference, from:

* its cgroup (the directories its shim recorded in ``shim.json``): CPU seconds from
  ``cpuacct.usage`` (v1) or ``cpu.stat`` ``usage_usec`` (v2), which also count processes that
  already exited; resident memory from ``memory.stat`` (``total_rss`` + ``total_rss_huge`` in
  v1, ``anon`` in v2: the anonymous memory, not the page cache the kernel may reclaim); the
  member pids from ``cgroup.procs``;
* otherwise /proc, through psutil, over the app's process tree: user + system CPU time (plus
  what reaped children used) and RSS summed over the processes.

Open file descriptors and threads always come from /proc (``/proc/PID/fd``, ``num_threads``)
summed over the member pids; cgroups do not count them. Restarts come from the instance's
status, kept by the agent. ``samples`` labels every figure with service, instance, release
and node, the labels every Corral metric shares.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

import msgspec
import psutil

from corral.runtime import cgroups
from corral.runtime.driver import read_shim
from corral.telemetry.tsdb import MetricSample

__all__ = ["HELP", "Identity", "ProcessReading", "read_instance", "samples"]

HELP = {
    "corral_instance_cpu_seconds_total": "CPU time used by every process of the instance",
    "corral_instance_memory_rss_bytes": "Resident anonymous memory of the instance",
    "corral_instance_open_fds": "Open file descriptors over the instance's processes",
    "corral_instance_threads": "Threads over the instance's processes",
    "corral_instance_processes": "Processes of the instance",
    "corral_instance_restarts_total": "Restarts of the instance's slot",
}


class Identity(NamedTuple):
    service: str
    instance: str
    release: int
    node: str
    restarts: int


class ProcessReading(NamedTuple):
    cpu_seconds: float
    rss_bytes: int
    open_fds: int
    threads: int
    processes: int
    cpu_source: str  # "cgroup" or "proc"
    memory_source: str  # likewise


def read_instance(instance_dir: Path) -> ProcessReading | None:
    """The instance's figures now, or None when no shim runs it here."""
    try:
        shim = read_shim(instance_dir)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    if shim is None:
        return None
    dirs = [Path(d) for d in shim.cgroups]
    pids = cgroups.pids_in(dirs) if dirs else _tree(shim.app_pid)
    cpu = _cgroup_cpu(dirs)
    rss = _cgroup_rss(dirs)
    proc_cpu = 0.0
    proc_rss = fds = threads = alive = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            with process.oneshot():
                threads += process.num_threads()
                if cpu is None:
                    t = process.cpu_times()
                    proc_cpu += t.user + t.system + t.children_user + t.children_system
                if rss is None:
                    proc_rss += process.memory_info().rss
            fds += _fd_count(pid)
            alive += 1
    if not alive and not dirs:
        return None  # the app is gone and no cgroup remembers it
    return ProcessReading(
        cpu if cpu is not None else proc_cpu,
        rss if rss is not None else proc_rss,
        fds,
        threads,
        alive,
        "proc" if cpu is None else "cgroup",
        "proc" if rss is None else "cgroup",
    )


def samples(identity: Identity, reading: ProcessReading) -> list[MetricSample]:
    labels = {
        "service": identity.service,
        "instance": identity.instance,
        "release": str(identity.release),
        "node": identity.node,
    }
    return [
        MetricSample("corral_instance_cpu_seconds_total", labels, reading.cpu_seconds),
        MetricSample("corral_instance_memory_rss_bytes", labels, reading.rss_bytes),
        MetricSample("corral_instance_open_fds", labels, reading.open_fds),
        MetricSample("corral_instance_threads", labels, reading.threads),
        MetricSample("corral_instance_processes", labels, reading.processes),
        MetricSample("corral_instance_restarts_total", labels, identity.restarts),
    ]


def _cgroup_cpu(dirs: list[Path]) -> float | None:
    for directory in dirs:
        with contextlib.suppress(OSError, ValueError):
            return int((directory / "cpuacct.usage").read_text()) / 1e9
        with contextlib.suppress(OSError, ValueError):
            stat = _keyed((directory / "cpu.stat").read_text())
            if "usage_usec" in stat:
                return stat["usage_usec"] / 1e6
    return None


def _cgroup_rss(dirs: list[Path]) -> int | None:
    for directory in dirs:
        try:
            stat = _keyed((directory / "memory.stat").read_text())
        except (OSError, ValueError):
            continue
        if "anon" in stat:  # v2
            return stat["anon"]
        if "total_rss" in stat:  # v1, this group and its descendants
            return stat["total_rss"] + stat.get("total_rss_huge", 0)
    return None


def _keyed(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        out[key] = int(value)
    return out


def _fd_count(pid: int) -> int:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return 0  # another user's process, or gone


def _tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return []
