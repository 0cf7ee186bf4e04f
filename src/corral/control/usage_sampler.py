"""Sampling what this node's instances use, for the capacity view (`telemetry.capacity`).

CPU comes from `agent.usage.CpuUsage` readings (cgroup counters, else the processes' CPU
times): cores used = CPU seconds between two readings / seconds between them. A first request
reads twice ``first_interval`` apart; later ones reuse the previous reading when it is recent,
so the figure covers the time since the last look. Memory is the instance cgroup's charge
(``memory.usage_in_bytes`` v1, ``memory.current`` v2), else the RSS of its process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
import psutil

from corral import clock
from corral.agent.usage import CpuUsage, Reading, utilisation
from corral.runtime.driver import read_shim
from corral.telemetry.capacity import Usage

STALE_S = 60.0


class UsageSampler:
    def __init__(self, instances_dir: Path, first_interval: float = 0.3) -> None:
        self.instances_dir = instances_dir
        self.cpu = CpuUsage(instances_dir)
        self.first_interval = first_interval
        self._last: dict[str, Reading] = {}

    async def sample(self, instances: list[tuple[str, str]]) -> list[Usage]:
        """(instance id, service) pairs → their use now."""
        now = clock.monotonic()
        fresh = {i for i, r in self._last.items() if now - r.at < STALE_S}
        if any(i not in fresh for i, _ in instances):
            for instance_id, _ in instances:
                if instance_id not in fresh and (reading := self.cpu.read(instance_id)):
                    self._last[instance_id] = reading
            await asyncio.sleep(self.first_interval)
        out = []
        for instance_id, service in instances:
            reading = self.cpu.read(instance_id)
            previous = self._last.pop(instance_id, None)
            cores = None
            if reading is not None:
                self._last[instance_id] = reading
                if previous is not None and (used := utilisation(previous, reading)) is not None:
                    cores = used * reading.cores
            out.append(Usage(instance_id, service, cores, self.memory(instance_id)))
        wanted = {i for i, _ in instances}
        for gone in [i for i in self._last if i not in wanted]:
            del self._last[gone]
        return out

    def memory(self, instance_id: str) -> float | None:
        try:
            shim = read_shim(self.instances_dir / instance_id)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None
        if shim is None:
            return None
        for directory in shim.cgroups:
            for name in ("memory.usage_in_bytes", "memory.current"):
                with contextlib.suppress(OSError, ValueError):
                    return float(int((Path(directory) / name).read_text()))
        try:
            root = psutil.Process(shim.app_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return float(total)
