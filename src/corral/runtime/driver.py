"""The contract between the agent, a runtime driver and the per-instance shim.

The agent hands a driver a complete ``LaunchSpec`` (argv already expanded, env complete); the
driver runs it under a shim and reports back ``Running`` once the app is spawned and an
``ExitInfo`` once it has exited. Everything a shim knows lives in its instance directory, so a
restarted control plane can re-adopt it:

    <home>/instances/<instance id>/
        launch.json     LaunchSpec, mode 0600 (env may hold secret values)
        shim.json       ShimState, written atomically as soon as the app is spawned
        exit.json       ExitInfo fields + incarnation, written atomically when the app has
                        exited and every leftover process of the instance is gone
        output.log      the app's stdout+stderr; rotated to output.log.1 … output.log.N
        shim.log        the shim's own stderr (only a crashing shim writes here)

This module holds no I/O beyond reading and writing those small files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import msgspec

from corral.errors import StartError
from corral.model import ExitInfo

LAUNCH = "launch.json"
SHIM = "shim.json"
EXIT = "exit.json"
OUTPUT = "output.log"
SHIM_LOG = "shim.log"

MiB = 1024 * 1024


class LaunchSpec(msgspec.Struct, frozen=True):
    """Everything the shim needs to run one incarnation of an instance."""

    instance_id: str
    service: str
    incarnation: int
    argv: list[str]
    cwd: str
    env: dict[str, str]  # complete; may hold secret values: never log it
    user: str | None = None
    data_dir: str | None = None  # pets: the shim holds an exclusive lock on it
    memory_bytes: int | None = None
    cpu: float | None = None  # cores, e.g. 0.5
    stop_signal: int = 15
    stop_grace: float = 30.0
    log_max_bytes: int = 10 * MiB
    log_keep: int = 3  # rotated files kept beside output.log (output.log.1 … .N)
    cgroup_parent: str | None = None  # memory (v1) / unified (v2) path; None: the shim's own


class ShimState(msgspec.Struct, frozen=True):
    """What a shim writes once its app is spawned (``shim.json``)."""

    shim_pid: int
    app_pid: int
    incarnation: int
    started_at: float  # wall clock
    shim_start_ticks: int  # /proc/PID/stat field 22: tells a reused pid from the shim
    app_start_ticks: int
    cgroups: list[str]  # absolute cgroup directories of the instance (empty: none usable)
    cpu_enforced: bool
    memory_enforced: bool
    limits: str  # how the limits are enforced, in words (for an event)


class Running(msgspec.Struct, frozen=True):
    instance_id: str
    incarnation: int
    shim_pid: int
    app_pid: int
    started_at: float
    cpu_enforced: bool
    memory_enforced: bool
    limits: str = ""


class Adopted(msgspec.Struct, frozen=True):
    """One instance found by ``adopt``: either still ``running`` or with its ``exit``."""

    instance_id: str
    incarnation: int
    running: Running | None = None
    exit: ExitInfo | None = None


class StartFailed(StartError):
    """The instance's command never started; ``exit`` is its record (``start_failed=True``)."""

    def __init__(self, instance_id: str, exit: ExitInfo, hint: str = "") -> None:
        super().__init__(
            f"instance {instance_id} could not start: {exit.reason}",
            hint or "fix the service's command, user, cwd or data dir and apply again",
        )
        self.instance_id = instance_id
        self.exit = exit


class Driver(Protocol):
    """Runs instances on one node. Every method is safe to call after a control-plane restart."""

    async def start(self, launch: LaunchSpec) -> Running:
        """Start ``launch`` under a shim; raise ``StartFailed`` if the command cannot start."""
        ...

    async def wait_exit(self, instance_id: str) -> ExitInfo:
        """Return once the instance's app has exited (event-driven)."""
        ...

    async def stop(self, instance_id: str) -> ExitInfo:
        """Stop signal, grace, then SIGKILL of every process of the instance."""
        ...

    async def adopt(self) -> list[Adopted]:
        """Re-attach to live shims; report the exit of those that ended meanwhile."""
        ...

    def log_paths(self, instance_id: str) -> list[Path]:
        """The instance's log files, oldest first."""
        ...

    def forget(self, instance_id: str) -> None:
        """Remove a stopped instance's directory."""
        ...


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``path`` so that readers see the old file or the whole new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.replace(path)


def encode_exit(exit: ExitInfo, incarnation: int) -> bytes:
    fields: dict[str, Any] = msgspec.structs.asdict(exit)
    fields["incarnation"] = incarnation
    return msgspec.json.encode(fields)


def decode_exit(data: bytes) -> tuple[ExitInfo, int]:
    fields = msgspec.json.decode(data, type=dict[str, Any])
    incarnation = int(fields.pop("incarnation", 0))
    return msgspec.convert(fields, ExitInfo), incarnation


def read_exit(instance_dir: Path) -> tuple[ExitInfo, int] | None:
    try:
        return decode_exit((instance_dir / EXIT).read_bytes())
    except FileNotFoundError:
        return None


def read_shim(instance_dir: Path) -> ShimState | None:
    try:
        return msgspec.json.decode((instance_dir / SHIM).read_bytes(), type=ShimState)
    except FileNotFoundError:
        return None


def read_launch(instance_dir: Path) -> LaunchSpec:
    return msgspec.json.decode((instance_dir / LAUNCH).read_bytes(), type=LaunchSpec)


def start_ticks(pid: int) -> int | None:
    """A process's start time in clock ticks since boot, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            value = n / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"
