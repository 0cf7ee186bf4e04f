"""CPU use of this node's instances: the ``cpu`` metric source of the autoscaler.

An instance's CPU utilisation is the CPU time it used over an interval, divided by the
interval and by its CPU limit in cores (one core when it has no limit): 0.5 is half its limit.
CPU time comes, in this order of preference, from:

* its cgroup: ``cpuacct.usage`` (v1, nanoseconds) or ``cpu.stat`` ``usage_usec`` (v2) in one of
  the directories the shim recorded in ``shim.json`` — every process of the instance, and those
  that already exited, are counted;
* otherwise its processes: the pids its (memory) cgroup lists, or the app's process tree, with
  psutil's ``cpu_times`` (user + system, plus what their reaped children used). A process that
  exits between two samples loses its last interval, which under-reads rather than over-reads.

``sample`` averages over the interval since the previous sample of each instance (the
autoscaler's period); an instance seen for the first time is read twice ``first_interval``
apart, so a new instance has a figure on its first evaluation.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

import msgspec
import psutil

from corral import clock as clocks
from corral.runtime import cgroups
from corral.runtime.driver import read_launch, read_shim

FIRST_INTERVAL = 0.5


@dataclass(frozen=True)
class Reading:
    """CPU seconds used by one instance incarnation, at a time."""

    identity: tuple[int, int]  # (app pid, its start ticks): a restart starts a new series
    at: float  # monotonic
    wall: float
    cores: float  # the CPU limit, or 1.0 without one
    total: float | None  # cgroup counter, seconds; None: per-process figures below
    processes: dict[tuple[int, float], float]  # (pid, create time) → CPU seconds


def utilisation(previous: Reading, current: Reading) -> float | None:
    """CPU used between two readings as a fraction of the instance's limit, or None if they
    are not of the same incarnation, or too close together to say."""
    elapsed = current.at - previous.at
    if current.identity != previous.identity or elapsed <= 0.01:
        return None
    if current.total is not None and previous.total is not None:
        used = current.total - previous.total
    else:
        used = 0.0
        for key, seconds in current.processes.items():
            before = previous.processes.get(key)
            if before is not None:
                used += seconds - before
            elif key[1] >= previous.wall - 0.01:
                used += seconds  # started within the interval
    return max(0.0, used) / elapsed / current.cores


class CpuUsage:
    """The ``MetricSource`` of metric ``cpu`` for the instances under ``instances_dir``."""

    def __init__(
        self,
        instances_dir: Path,
        *,
        clock: clocks.Clock = clocks.SYSTEM,
        first_interval: float = FIRST_INTERVAL,
    ) -> None:
        self.instances_dir = instances_dir
        self.clock = clock
        self.first_interval = first_interval
        self._last: dict[str, Reading] = {}
        self._members: dict[str, list[str]] = {}  # service → instance ids last sampled

    async def sample(self, service: str, metric: str, instances: list[str]) -> float | None:
        if metric != "cpu":
            return None
        for gone in set(self._members.get(service, [])) - set(instances):
            self._last.pop(gone, None)
        self._members[service] = list(instances)
        if any(i not in self._last for i in instances):
            for instance_id in instances:
                if instance_id not in self._last and (reading := self.read(instance_id)):
                    self._last[instance_id] = reading
            await asyncio.sleep(self.first_interval)
        figures: list[float] = []
        for instance_id in instances:
            reading = self.read(instance_id)
            previous = self._last.pop(instance_id, None)
            if reading is None:
                continue
            self._last[instance_id] = reading
            if previous is not None and (value := utilisation(previous, reading)) is not None:
                figures.append(value)
        if not figures:
            return None
        return sum(figures) / len(figures)

    def read(self, instance_id: str) -> Reading | None:
        """The instance's CPU seconds now, or None if it is not running here."""
        directory = self.instances_dir / instance_id
        try:
            shim = read_shim(directory)
            cores = read_launch(directory).cpu or 1.0
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None
        if shim is None:
            return None
        dirs = [Path(d) for d in shim.cgroups]
        identity = (shim.app_pid, shim.app_start_ticks)
        at, wall = self.clock.monotonic(), self.clock.wall()
        total = _cgroup_seconds(dirs)
        if total is not None:
            return Reading(identity, at, wall, cores, total, {})
        pids = cgroups.pids_in(dirs) if dirs else _tree(shim.app_pid)
        return Reading(identity, at, wall, cores, None, _process_seconds(pids))


def _cgroup_seconds(dirs: list[Path]) -> float | None:
    for directory in dirs:
        try:
            return int((directory / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            pass
        try:
            text = (directory / "cpu.stat").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value) / 1e6
    return None


def _tree(pid: int) -> list[int]:
    try:
        root = psutil.Process(pid)
        return [pid, *(child.pid for child in root.children(recursive=True))]
    except psutil.Error:
        return []


def _process_seconds(pids: list[int]) -> dict[tuple[int, float], float]:
    seconds: dict[tuple[int, float], float] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                created = process.create_time()
            used = times.user + times.system + times.children_user + times.children_system
            seconds[(pid, created)] = used
    return seconds
