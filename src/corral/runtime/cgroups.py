"""Instance cgroups: create beneath the platform's own cgroup, limit, list, count OOM kills.

An instance gets one group named ``corral-<instance id>-<hash of its instance dir>`` (the hash
keeps platforms on one machine apart) beneath the cgroup the platform runs in:

* cgroup v1 (this machine's memory and cpu controllers): a group in the memory hierarchy under
  the memory path of ``/proc/self/cgroup`` (or the given parent) — it limits memory
  (``memory.limit_in_bytes``) and lists every process of the instance, ``setsid`` or not — and,
  when a CPU limit is asked for, a group in the cpu hierarchy (``cpu.cfs_quota_us`` over
  ``cpu.cfs_period_us``).
* cgroup v2: one group under the unified path, ``memory.max`` and ``cpu.max`` when those
  controllers are delegated to it; otherwise the group still lists the processes and the caller
  falls back to ``RLIMIT_AS`` for memory.

OOM kills are read from ``memory.oom_control`` (v1) or ``memory.events`` (v2), field
``oom_kill``. A group left behind by a shim that died is emptied (SIGKILL) and recreated.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from corral.runtime.driver import human_bytes

CFS_PERIOD_US = 100_000


class CgroupUnavailable(Exception):
    """No usable cgroup for an instance; ``str()`` says why (for the limits note)."""


@dataclass
class Cgroup:
    version: int
    dirs: list[Path]  # the tracking group (memory v1 / unified v2) first
    memory_enforced: bool = False
    cpu_enforced: bool = False
    notes: list[str] = field(default_factory=list)

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> list[int]:
        return pids_in(self.dirs)

    def oom_kills(self) -> int:
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = (self.dirs[0] / name).read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self, reap: Callable[[], object] | None = None) -> None:
        remove_dirs(self.dirs, reap=reap)


def join(procs_files: list[str]) -> None:
    """Move the calling process into the groups (run in the child before exec)."""
    pid = str(os.getpid()).encode()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def group_name(instance_id: str, instance_dir: Path) -> str:
    digest = hashlib.sha1(str(instance_dir.resolve()).encode()).hexdigest()[:8]
    return f"corral-{instance_id}-{digest}"


def own_cgroups() -> tuple[dict[str, str], str | None]:
    """This process's v1 paths by controller, and its unified (v2) path."""
    v1: dict[str, str] = {}
    unified: str | None = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:
            unified = path
            continue
        for controller in controllers.split(","):
            v1[controller] = path
    return v1, unified


def mounts() -> tuple[dict[str, Path], Path | None]:
    """Where each v1 controller's hierarchy is mounted, and where cgroup2 is."""
    v1: dict[str, Path] = {}
    unified: Path | None = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        mount_point = Path(left.split()[4])
        fstype, _source, options = [*right.split(), "", "", ""][:3]
        if fstype == "cgroup2" and unified is None:
            unified = mount_point
        elif fstype == "cgroup":
            for option in options.split(","):
                v1.setdefault(option, mount_point)
    return v1, unified


def create(
    name: str, memory_bytes: int | None, cpu: float | None, parent: str | None = None
) -> Cgroup:
    """Create (fresh) the instance's group(s) with its limits, or raise CgroupUnavailable."""
    v1_paths, unified_path = own_cgroups()
    v1_mounts, unified_mount = mounts()
    if "memory" in v1_mounts and "memory" in v1_paths:
        return _create_v1(name, memory_bytes, cpu, parent, v1_paths, v1_mounts)
    if unified_mount is not None and unified_path is not None:
        return _create_v2(name, memory_bytes, cpu, parent or unified_path, unified_mount)
    raise CgroupUnavailable("no cgroup memory controller or cgroup2 mount found")


def _fresh(path: Path) -> None:
    if path.exists():
        # Left by a shim that died: its processes belong to an old incarnation of this instance.
        remove_dirs([path])
    try:
        path.mkdir()
    except OSError as e:
        raise CgroupUnavailable(f"cannot create cgroup {path}: {e.strerror}") from e


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _create_v1(
    name: str,
    memory_bytes: int | None,
    cpu: float | None,
    parent: str | None,
    paths: dict[str, str],
    mounted: dict[str, Path],
) -> Cgroup:
    memory_dir = mounted["memory"] / (parent or paths["memory"]).lstrip("/") / name
    _fresh(memory_dir)
    group = Cgroup(version=1, dirs=[memory_dir])
    try:
        if memory_bytes is not None:
            _write(memory_dir / "memory.limit_in_bytes", str(memory_bytes))
            group.memory_enforced = True
            group.notes.append(f"memory: cgroup v1 limit {human_bytes(memory_bytes)}")
    except OSError as e:
        remove_dirs(group.dirs)
        raise CgroupUnavailable(f"cannot set memory limit in {memory_dir}: {e.strerror}") from e
    if cpu is not None:
        if "cpu" not in mounted or "cpu" not in paths:
            group.notes.append("cpu: not enforced (no cgroup cpu controller)")
            return group
        cpu_dir = mounted["cpu"] / paths["cpu"].lstrip("/") / name
        try:
            _fresh(cpu_dir)
            group.dirs.append(cpu_dir)
            _write(cpu_dir / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(cpu_dir / "cpu.cfs_quota_us", str(max(1000, int(cpu * CFS_PERIOD_US))))
            group.cpu_enforced = True
            group.notes.append(f"cpu: cgroup v1 quota {cpu:g} CPU")
        except (OSError, CgroupUnavailable) as e:
            group.notes.append(f"cpu: not enforced ({e})")
    return group


def _create_v2(
    name: str, memory_bytes: int | None, cpu: float | None, parent: str, mount: Path
) -> Cgroup:
    parent_dir = mount / parent.lstrip("/")
    wanted = [c for c, asked in (("memory", memory_bytes), ("cpu", cpu)) if asked is not None]
    for controller in wanted:
        try:
            _write(parent_dir / "cgroup.subtree_control", f"+{controller}")
        except OSError:
            pass  # not delegated, or the parent has processes ("no internal processes" rule)
    group_dir = parent_dir / name
    _fresh(group_dir)
    group = Cgroup(version=2, dirs=[group_dir])
    available = (group_dir / "cgroup.controllers").read_text().split()
    if memory_bytes is not None and "memory" in available:
        try:
            _write(group_dir / "memory.max", str(memory_bytes))
            group.memory_enforced = True
            group.notes.append(f"memory: cgroup v2 limit {human_bytes(memory_bytes)}")
        except OSError:
            pass
    if cpu is not None:
        if "cpu" in available:
            quota = max(1000, int(cpu * CFS_PERIOD_US))
            try:
                _write(group_dir / "cpu.max", f"{quota} {CFS_PERIOD_US}")
                group.cpu_enforced = True
                group.notes.append(f"cpu: cgroup v2 quota {cpu:g} CPU")
            except OSError:
                pass
        if not group.cpu_enforced:
            group.notes.append("cpu: not enforced (cgroup v2 cpu controller not delegated)")
    return group


def pids_in(dirs: list[Path]) -> list[int]:
    pids: set[int] = set()
    for directory in dirs:
        try:
            text = (directory / "cgroup.procs").read_text()
        except OSError:
            continue
        pids.update(int(p) for p in text.split())
    return sorted(pids)


def remove_dirs(
    dirs: list[Path], timeout: float = 2.0, reap: Callable[[], object] | None = None
) -> None:
    """SIGKILL whatever is left in the groups, then remove them. A killed process leaves its
    group once reaped: ``reap`` reaps the caller's children while we wait for that."""
    deadline = time.monotonic() + timeout
    for directory in dirs:
        while directory.exists():
            for pid in pids_in([directory]):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                directory.rmdir()
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    break
                if reap is not None:
                    reap()
                time.sleep(0.005)
