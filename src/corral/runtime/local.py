"""LocalDriver: runs instances on this machine, each under its own shim.

The driver only starts shims, signals them and watches them; the shim does the work (see
``corral.runtime.shim``). A shim is watched through a pidfd registered with the event loop, so
an exit is seen the moment the shim exits — after it has written ``exit.json`` — with no
polling, and the same works for shims this process did not start (after ``adopt``). A pidfd
refers to one process for good, and adoption checks the pid's start time against
``shim.json`` before trusting it, so a reused pid is never mistaken for a shim.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import signal
import sys
from pathlib import Path

import msgspec

from corral import clock
from corral.errors import Conflict, NotFound, StartError
from corral.model import ExitInfo
from corral.runtime import cgroups, logs
from corral.runtime.driver import (
    EXIT,
    LAUNCH,
    OUTPUT,
    SHIM,
    SHIM_LOG,
    Adopted,
    LaunchSpec,
    Running,
    ShimState,
    StartFailed,
    encode_exit,
    read_exit,
    read_launch,
    read_shim,
    start_ticks,
    write_atomic,
)

START_TIMEOUT = 10.0
STOP_SLACK = 5.0  # beyond stop_grace, before the driver gives up on the shim and kills it


class _Watch:
    """One shim watched through its pidfd; ``done`` resolves with the instance's exit."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        instance_dir: Path,
        launch: LaunchSpec,
        shim_pid: int,
        pidfd: int,
        child: bool,
    ) -> None:
        self.loop = loop
        self.dir = instance_dir
        self.instance_id = launch.instance_id
        self.incarnation = launch.incarnation
        self.stop_grace = launch.stop_grace
        self.shim_pid = shim_pid
        self.pidfd = pidfd
        self.child = child
        self.stop_requested = False
        self.done: asyncio.Future[ExitInfo] = loop.create_future()

    @property
    def alive(self) -> bool:
        return not self.done.done()

    def signal(self, signum: int) -> None:
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signum)
            except ProcessLookupError:
                pass

    def detach(self) -> None:
        if self.pidfd >= 0:
            self.loop.remove_reader(self.pidfd)
            os.close(self.pidfd)
            self.pidfd = -1


class LocalDriver:
    """``Driver`` for this machine; instance directories live in ``home/instances/<id>/``."""

    def __init__(
        self, home: Path, *, python: str | None = None, start_timeout: float = START_TIMEOUT
    ) -> None:
        self.home = home
        self.instances = home / "instances"
        self.python = python or sys.executable
        self.start_timeout = start_timeout
        self._watches: dict[str, _Watch] = {}

    def instance_dir(self, instance_id: str) -> Path:
        return self.instances / instance_id

    # -- Driver ------------------------------------------------------------------------------

    async def start(self, launch: LaunchSpec) -> Running:
        instance_id = launch.instance_id
        current = self._watches.get(instance_id)
        if current is not None and current.alive and _exited(current):
            # The app is gone and its shim is finishing (cgroup, lock): let it, then restart.
            await asyncio.wait_for(asyncio.shield(current.done), self.start_timeout)
        if current is not None and current.alive:
            raise Conflict(
                f"instance {instance_id} is already running (shim pid {current.shim_pid})",
                "stop it before starting it again",
            )
        loop = asyncio.get_running_loop()
        directory = self.instance_dir(instance_id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name in (SHIM, EXIT):
            (directory / name).unlink(missing_ok=True)
        write_atomic(directory / LAUNCH, msgspec.json.encode(launch), mode=0o600)

        ready_r, ready_w = os.pipe()
        try:
            pid = self._spawn_shim(directory, ready_w)
        except BaseException:
            os.close(ready_r)
            raise
        watch = self._watch(loop, directory, launch, pid, os.pidfd_open(pid), child=True)
        ready: asyncio.Future[None] = loop.create_future()

        def on_ready() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(ready_r, on_ready)
        try:
            await asyncio.wait_for(ready, self.start_timeout)
        except TimeoutError:
            watch.signal(signal.SIGKILL)
            raise StartError(
                f"instance {instance_id}: its shim did not report within {self.start_timeout:g} s",
                f"see {directory / SHIM_LOG}",
            ) from None
        finally:
            loop.remove_reader(ready_r)
            os.close(ready_r)
        state = read_shim(directory)
        if state is None or state.incarnation != launch.incarnation:
            exit = await asyncio.wait_for(asyncio.shield(watch.done), self.start_timeout)
            raise StartFailed(instance_id, exit)
        return _running(instance_id, state)

    async def wait_exit(self, instance_id: str) -> ExitInfo:
        watch = self._watches.get(instance_id)
        if watch is not None:
            return await asyncio.shield(watch.done)
        record = read_exit(self.instance_dir(instance_id))
        if record is not None:
            return record[0]
        raise NotFound(
            f"instance {instance_id} is not watched by this node's runtime",
            "start it, or call adopt() after a restart to re-attach to running shims",
        )

    async def stop(self, instance_id: str) -> ExitInfo:
        watch = self._watches.get(instance_id)
        if watch is None or not watch.alive:
            return await self.wait_exit(instance_id)
        watch.stop_requested = True
        watch.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(watch.done), watch.stop_grace + STOP_SLACK)
        except TimeoutError:
            # The shim is stuck: kill it; the exit handler then kills what it left behind.
            watch.signal(signal.SIGKILL)
            return await asyncio.shield(watch.done)

    async def adopt(self) -> list[Adopted]:
        loop = asyncio.get_running_loop()
        found: list[Adopted] = []
        if not self.instances.is_dir():
            return found
        for directory in sorted(self.instances.iterdir()):
            instance_id = directory.name
            try:
                launch = read_launch(directory)
            except (OSError, msgspec.DecodeError, msgspec.ValidationError):
                continue  # not an instance directory (or one whose start never got going)
            state = read_shim(directory)
            record = read_exit(directory)
            watch = self._watches.get(instance_id)
            if watch is None or not watch.alive:
                watch = self._attach(loop, directory, launch, state)
            if record is not None and record[1] == launch.incarnation:
                # Exited (its shim may still be removing the cgroup; the watch sees it go).
                found.append(Adopted(instance_id, launch.incarnation, exit=record[0]))
                continue
            if watch is not None and watch.alive:
                if state is not None:  # else it is being started right now
                    running = _running(instance_id, state)
                    found.append(Adopted(instance_id, launch.incarnation, running=running))
                continue
            record = read_exit(directory)  # again: the shim may have finished just now
            if record is not None and record[1] == launch.incarnation:
                exit = record[0]
            else:
                exit = await asyncio.to_thread(_bury, directory, launch, state, False)
            found.append(Adopted(instance_id, launch.incarnation, exit=exit))
        return found

    def log_paths(self, instance_id: str) -> list[Path]:
        return logs.rotation_set(self.instance_dir(instance_id) / OUTPUT)

    def forget(self, instance_id: str) -> None:
        watch = self._watches.get(instance_id)
        if watch is not None and watch.alive:
            raise Conflict(
                f"instance {instance_id} is still running (shim pid {watch.shim_pid})",
                "stop it before removing its directory",
            )
        if watch is not None:
            watch.detach()
            del self._watches[instance_id]
        shutil.rmtree(self.instance_dir(instance_id), ignore_errors=True)

    def close(self) -> None:
        """Stop watching (shims and apps keep running; a later driver can adopt them)."""
        for watch in self._watches.values():
            watch.detach()
            if not watch.done.done():
                watch.done.cancel()
        self._watches.clear()

    # -- internals ---------------------------------------------------------------------------

    def _spawn_shim(self, directory: Path, ready_w: int) -> int:
        # Above 2, so that the file actions below cannot clobber it; inheritable for the shim.
        try:
            ready_fd = fcntl.fcntl(ready_w, fcntl.F_DUPFD, 3)
        finally:
            os.close(ready_w)
        try:
            return os.posix_spawn(
                self.python,
                [
                    self.python,
                    "-m",
                    "corral.runtime.shim",
                    str(directory.resolve()),
                    "--ready-fd",
                    str(ready_fd),
                ],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (
                        os.POSIX_SPAWN_OPEN,
                        1,
                        str(directory / SHIM_LOG),
                        os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                        0o600,
                    ),
                    (os.POSIX_SPAWN_DUP2, 1, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(ready_fd)

    def _watch(
        self,
        loop: asyncio.AbstractEventLoop,
        directory: Path,
        launch: LaunchSpec,
        shim_pid: int,
        pidfd: int,
        child: bool,
    ) -> _Watch:
        watch = _Watch(loop, directory, launch, shim_pid, pidfd, child)
        old = self._watches.get(launch.instance_id)
        if old is not None:
            old.detach()
        self._watches[launch.instance_id] = watch
        loop.add_reader(pidfd, self._on_shim_exit, watch)
        return watch

    def _attach(
        self,
        loop: asyncio.AbstractEventLoop,
        directory: Path,
        launch: LaunchSpec,
        state: ShimState | None,
    ) -> _Watch | None:
        if state is None or state.incarnation != launch.incarnation:
            return None
        try:
            pidfd = os.pidfd_open(state.shim_pid)
        except ProcessLookupError:
            return None
        # Checked after opening: if the start time matches now, the pidfd is the shim's.
        if start_ticks(state.shim_pid) != state.shim_start_ticks:
            os.close(pidfd)
            return None
        return self._watch(loop, directory, launch, state.shim_pid, pidfd, child=False)

    def _on_shim_exit(self, watch: _Watch) -> None:
        watch.detach()
        if watch.child:
            try:
                os.waitpid(watch.shim_pid, os.WNOHANG)
            except ChildProcessError:
                pass
        record = read_exit(watch.dir)
        if record is not None and record[1] == watch.incarnation:
            if not watch.done.done():
                watch.done.set_result(record[0])
            return
        watch.loop.create_task(self._bury_later(watch))

    async def _bury_later(self, watch: _Watch) -> None:
        try:
            launch = read_launch(watch.dir)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            launch = None
        state = read_shim(watch.dir)
        exit = await asyncio.to_thread(_bury, watch.dir, launch, state, watch.stop_requested)
        if not watch.done.done():
            watch.done.set_result(exit)


def _exited(watch: _Watch) -> bool:
    record = read_exit(watch.dir)
    return record is not None and record[1] == watch.incarnation


def _running(instance_id: str, state: ShimState) -> Running:
    return Running(
        instance_id=instance_id,
        incarnation=state.incarnation,
        shim_pid=state.shim_pid,
        app_pid=state.app_pid,
        started_at=state.started_at,
        cpu_enforced=state.cpu_enforced,
        memory_enforced=state.memory_enforced,
        limits=state.limits,
    )


def _bury(
    directory: Path, launch: LaunchSpec | None, state: ShimState | None, requested: bool
) -> ExitInfo:
    """A shim died without recording an exit: kill what it left and record that."""
    if state is not None:
        if start_ticks(state.app_pid) == state.app_start_ticks:
            try:
                os.killpg(state.app_pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        cgroups.remove_dirs([Path(p) for p in state.cgroups])
        reason = (
            f"lost: the shim (pid {state.shim_pid}) died without recording the exit; "
            "the instance's processes were killed"
        )
    else:
        reason = f"lost: the shim died before starting the app (see {directory / SHIM_LOG})"
    exit = ExitInfo(at=clock.wall(), reason=reason, requested=requested)
    if launch is not None:
        write_atomic(directory / EXIT, encode_exit(exit, launch.incarnation))
    return exit
