"""Capacity: how close each service and host runs to its limits (the seed's "health check").

Theory of operation. A service's headroom is what its busiest instance has left against the
service's limits: ``1 − used / limit`` for CPU (cores, over the last sampling interval) and
memory (bytes in use: the cgroup's charge, or RSS). The busiest instance counts, not the
average, because the instance that hits its memory limit is the one killed. A service without
a limit has no headroom figure for it (``None``): it can only be compared with its host. A
host's headroom is what is left of its CPU, memory and disk (`hostmetrics`' latest sample).
Anything whose usage is at or above ``near`` (80 %) of its limit is *near its limit*.

Pure: figures in, rows out, sorted by name; no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

NEAR = 0.8


class Usage(msgspec.Struct, frozen=True):
    """One instance's use, as sampled (None: could not be read)."""

    instance: str
    service: str
    cpu_cores: float | None = None
    memory_bytes: float | None = None


class Limits(msgspec.Struct, frozen=True):
    cpu_cores: float | None = None
    memory_bytes: float | None = None


class ServiceCapacity(msgspec.Struct):
    service: str
    instances: int
    cpu_limit: float | None
    cpu_used: float | None  # cores, the busiest instance
    cpu_ratio: float | None  # of the limit
    memory_limit: float | None
    memory_used: float | None  # bytes, the busiest instance
    memory_ratio: float | None
    headroom: float | None  # the smaller of 1 − cpu_ratio and 1 − memory_ratio
    near_limit: list[str]  # "cpu", "memory"


class HostCapacity(msgspec.Struct):
    host: str
    cpu_ratio: float
    memory_ratio: float
    disk_ratio: float
    headroom: float
    near_limit: list[str]  # "cpu", "memory", "disk"


def _ratio(used: float | None, limit: float | None) -> float | None:
    if used is None or not limit:
        return None
    return round(used / limit, 4)


def services(
    usage: Iterable[Usage], limits: Mapping[str, Limits], near: float = NEAR
) -> list[ServiceCapacity]:
    by_service: dict[str, list[Usage]] = {}
    for u in usage:
        by_service.setdefault(u.service, []).append(u)
    out = []
    for name in sorted(set(by_service) | set(limits)):
        rows = by_service.get(name, [])
        limit = limits.get(name, Limits())
        cpu = max((u.cpu_cores for u in rows if u.cpu_cores is not None), default=None)
        mem = max((u.memory_bytes for u in rows if u.memory_bytes is not None), default=None)
        cpu_ratio, mem_ratio = _ratio(cpu, limit.cpu_cores), _ratio(mem, limit.memory_bytes)
        ratios = [r for r in (cpu_ratio, mem_ratio) if r is not None]
        flags = [
            w for w, r in (("cpu", cpu_ratio), ("memory", mem_ratio)) if r is not None and r >= near
        ]
        out.append(
            ServiceCapacity(
                service=name,
                instances=len(rows),
                cpu_limit=limit.cpu_cores,
                cpu_used=None if cpu is None else round(cpu, 4),
                cpu_ratio=cpu_ratio,
                memory_limit=limit.memory_bytes,
                memory_used=mem,
                memory_ratio=mem_ratio,
                headroom=round(1.0 - max(ratios), 4) if ratios else None,
                near_limit=flags,
            )
        )
    return out


def host(
    name: str,
    cpu_ratio: float,
    mem: tuple[float, float],
    disk: tuple[float, float],
    near: float = NEAR,
) -> HostCapacity:
    """`mem` and `disk` are (used, total) bytes."""
    mem_ratio = mem[0] / mem[1] if mem[1] else 0.0
    disk_ratio = disk[0] / disk[1] if disk[1] else 0.0
    ratios = {"cpu": cpu_ratio, "memory": mem_ratio, "disk": disk_ratio}
    return HostCapacity(
        host=name,
        cpu_ratio=round(cpu_ratio, 4),
        memory_ratio=round(mem_ratio, 4),
        disk_ratio=round(disk_ratio, 4),
        headroom=round(1.0 - max(ratios.values()), 4),
        near_limit=[k for k, r in ratios.items() if r >= near],
    )
