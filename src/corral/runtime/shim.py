"""The per-instance shim: the app's parent, as containerd's shim is a container's.

    python -m corral.runtime.shim INSTANCE_DIR [--ready-fd N]

Theory of operation. The shim reads ``launch.json``, takes the pet's ``DATA_DIR`` lock, creates
the instance cgroup beneath the platform's, and spawns the app in its own session — joined to
the cgroup, limited and switched to its user in the child before exec, so that nothing the app
ever forks escapes the group. It is a child subreaper, so descendants orphaned by a ``setsid``
or a double fork come back to it. Then it writes ``shim.json`` and signals the ready fd, and
from then on sleeps in one ``select`` over the app's output pipe and a signal wakeup pipe:

* output is appended to ``output.log`` with size rotation (never to the control plane);
* SIGCHLD: reap every child; the app's status is the instance's exit;
* SIGTERM/SIGINT (a stop): ``stop_signal`` to the app's process group and every process of the
  instance, then SIGKILL to all of them once ``stop_grace`` has passed.

When the app is gone, whatever is left of the instance is SIGKILLed (as when a container's init
exits), OOM kills are read from the cgroup, ``exit.json`` is written atomically, the cgroup is
removed and the shim exits. The agent watches the shim's pid through a pidfd, so the shim's own
exit is the event "exit.json is ready". The shim lives in its own session with no pipe to the
control plane, so it and the app outlive a control plane that is killed.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import pwd
import resource
import selectors
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import msgspec

from corral import clock
from corral.model import ExitInfo
from corral.runtime import cgroups
from corral.runtime.driver import (
    EXIT,
    OUTPUT,
    SHIM,
    LaunchSpec,
    ShimState,
    encode_exit,
    human_bytes,
    read_launch,
    start_ticks,
    write_atomic,
)
from corral.runtime.logs import RotatingWriter

PR_SET_CHILD_SUBREAPER = 36
LEFTOVER_KILL_TIMEOUT = 2.0
OUTPUT_DRAIN_TIMEOUT = 0.5


class _StartFailure(Exception):
    """The app cannot be started; the message is the user-facing reason."""


def set_child_subreaper() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def process_table() -> dict[int, tuple[int, str]]:
    """Every process on the machine: pid -> (parent pid, state letter)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        table[int(entry.name)] = (int(fields[1]), fields[0].decode())
    return table


def descendants(root: int, table: dict[int, tuple[int, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _state) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return sorted(found)


class Shim:
    def __init__(self, instance_dir: Path, ready_fd: int | None) -> None:
        self.dir = instance_dir
        self.ready_fd = ready_fd
        self.pid = os.getpid()
        self.launch: LaunchSpec | None = None
        self.cgroup: cgroups.Cgroup | None = None
        self.lock_fd: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.app_pid = 0
        self.app_status: int | None = None
        self.exit_at = 0.0
        self.out_fd: int | None = None
        self.log: RotatingWriter | None = None
        self.requested = False
        self.escalated = False
        self.kill_at: float | None = None
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.rlimit_as: int | None = None
        self.limits = ""

    # -- entry -------------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        set_child_subreaper()
        try:
            self.launch = read_launch(self.dir)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as e:
            return self._start_failed(0, f"launch.json is unreadable: {e}")
        try:
            uid_gid = self._prepare()
            self._spawn(uid_gid)
        except _StartFailure as e:
            return self._start_failed(self.launch.incarnation, str(e))
        try:
            self._announce()
            self._supervise()
            self._finish()
        except Exception as e:
            # Never leave an app without a parent that records its exit.
            traceback.print_exc()
            self._signal_all(signal.SIGKILL)
            self._kill_leftovers()
            self._write_exit(ExitInfo(at=clock.wall(), reason=f"shim error: {e!r}"))
            self._cleanup()
            return 1
        return 0

    # -- start-up ----------------------------------------------------------------------------

    def _install_signals(self) -> None:
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            # A Python handler (not SIG_IGN) so the app gets default dispositions after exec.
            signal.signal(sig, lambda signum, frame: None)

    def _prepare(self) -> tuple[int, int, list[int]] | None:
        launch = self._launch()
        if not launch.argv:
            raise _StartFailure("command is empty")
        uid_gid = self._resolve_user(launch.user)
        if launch.data_dir:
            self._lock_data_dir(Path(launch.data_dir), uid_gid)
        notes: list[str] = []
        try:
            self.cgroup = cgroups.create(
                cgroups.group_name(launch.instance_id, self.dir),
                launch.memory_bytes,
                launch.cpu,
                launch.cgroup_parent,
            )
            notes = list(self.cgroup.notes)
        except (cgroups.CgroupUnavailable, OSError) as e:
            notes.append(f"no usable cgroup ({e})")
        if launch.memory_bytes is not None and not (self.cgroup and self.cgroup.memory_enforced):
            self.rlimit_as = launch.memory_bytes
            notes.append(f"memory: RLIMIT_AS {human_bytes(launch.memory_bytes)}")
        cpu_unenforced = launch.cpu is not None and not (self.cgroup and self.cgroup.cpu_enforced)
        if cpu_unenforced and not any(n.startswith("cpu:") for n in notes):
            notes.append("cpu: not enforced (no usable cgroup)")
        self.limits = "; ".join(notes)
        self.log = RotatingWriter(self.dir / OUTPUT, launch.log_max_bytes, launch.log_keep)
        return uid_gid

    def _launch(self) -> LaunchSpec:
        assert self.launch is not None
        return self.launch

    def _resolve_user(self, user: str | None) -> tuple[int, int, list[int]] | None:
        if not user:
            return None
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise _StartFailure(f"user {user} does not exist") from None
        if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
            raise _StartFailure(f"cannot run as user {user}: the platform is not running as root")
        return entry.pw_uid, entry.pw_gid, os.getgrouplist(entry.pw_name, entry.pw_gid)

    def _lock_data_dir(self, data_dir: Path, uid_gid: tuple[int, int, list[int]] | None) -> None:
        # The lock file sits beside DATA_DIR, not in it, so the app cannot delete it.
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = data_dir.parent / f".{data_dir.name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise _StartFailure(f"DATA_DIR is locked by another process (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.pid}\n".encode(), 0)
        self.lock_fd = fd
        data_dir.mkdir(exist_ok=True)
        if uid_gid is not None:
            os.chown(data_dir, uid_gid[0], uid_gid[1])

    def _spawn(self, uid_gid: tuple[int, int, list[int]] | None) -> None:
        launch = self._launch()
        procs_files = self.cgroup.procs_files() if self.cgroup else []
        rlimit_as = self.rlimit_as
        err_r, err_w = os.pipe()

        def child_setup() -> None:  # runs in the child, between fork and exec, as root
            try:
                if procs_files:
                    cgroups.join(procs_files)
                if rlimit_as is not None:
                    resource.setrlimit(resource.RLIMIT_AS, (rlimit_as, rlimit_as))
                if uid_gid is not None:
                    os.setgroups(uid_gid[2])
                    os.setgid(uid_gid[1])
                    os.setuid(uid_gid[0])
            except Exception as e:
                os.write(err_w, str(e).encode()[:500])
                raise

        try:
            self.proc = subprocess.Popen(
                launch.argv,
                cwd=launch.cwd or None,
                env=launch.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=child_setup,  # safe: the shim is single-threaded
                close_fds=True,
            )
        except FileNotFoundError as e:
            if launch.cwd and e.filename == launch.cwd:
                raise _StartFailure(f"working directory not found: {launch.cwd}") from None
            raise _StartFailure(f"command not found: {launch.argv[0]}") from None
        except PermissionError as e:
            if launch.cwd and e.filename == launch.cwd:
                raise _StartFailure(f"permission denied: {launch.cwd}") from None
            raise _StartFailure(f"permission denied: {launch.argv[0]}") from None
        except subprocess.SubprocessError:
            os.set_blocking(err_r, False)
            try:
                detail = os.read(err_r, 1000).decode(errors="replace")
            except BlockingIOError:
                detail = "unknown error"
            raise _StartFailure(f"could not set up the process: {detail}") from None
        except OSError as e:
            raise _StartFailure(f"cannot start {launch.argv[0]}: {e.strerror}") from None
        finally:
            os.close(err_r)
            os.close(err_w)
        self.app_pid = self.proc.pid
        assert self.proc.stdout is not None
        self.out_fd = self.proc.stdout.fileno()
        os.set_blocking(self.out_fd, False)

    def _announce(self) -> None:
        launch = self._launch()
        state = ShimState(
            shim_pid=self.pid,
            app_pid=self.app_pid,
            incarnation=launch.incarnation,
            started_at=clock.wall(),
            shim_start_ticks=start_ticks(self.pid) or 0,
            app_start_ticks=start_ticks(self.app_pid) or 0,
            cgroups=[str(d) for d in self.cgroup.dirs] if self.cgroup else [],
            cpu_enforced=bool(self.cgroup and self.cgroup.cpu_enforced),
            memory_enforced=launch.memory_bytes is not None,
            limits=self.limits,
        )
        write_atomic(self.dir / SHIM, msgspec.json.encode(state))
        self._signal_ready()

    def _signal_ready(self) -> None:
        if self.ready_fd is not None:
            try:
                os.write(self.ready_fd, b"1")
            except OSError:
                pass  # the driver went away; it will adopt us through shim.json
            os.close(self.ready_fd)
            self.ready_fd = None

    # -- supervision -------------------------------------------------------------------------

    def _supervise(self) -> None:
        self.selector.register(self.wake_r, selectors.EVENT_READ, "signals")
        if self.out_fd is not None:
            self.selector.register(self.out_fd, selectors.EVENT_READ, "output")
        self._reap()  # the app may have exited before the handlers' first wakeup
        while self.app_status is None:
            timeout = None
            if self.kill_at is not None:
                timeout = max(0.0, self.kill_at - clock.monotonic())
            for key, _ in self.selector.select(timeout):
                if key.data == "signals":
                    self._on_signals()
                else:
                    self._pump_output()
            self._reap()
            if (
                self.app_status is None
                and self.kill_at is not None
                and clock.monotonic() >= self.kill_at
            ):
                self.escalated = True
                self.kill_at = None
                self._signal_all(signal.SIGKILL)

    def _on_signals(self) -> None:
        try:
            data = os.read(self.wake_r, 4096)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT) and not self.requested:
                launch = self._launch()
                self.requested = True
                self.kill_at = clock.monotonic() + launch.stop_grace
                self._signal_all(launch.stop_signal)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.app_pid and self.app_status is None:
                self.app_status = status
                self.exit_at = clock.wall()
                if self.proc is not None:
                    self.proc.returncode = os.waitstatus_to_exitcode(status)

    def _pump_output(self) -> bool:
        """Copy what the app wrote to the log; False once the pipe is at EOF."""
        if self.out_fd is None:
            return False
        try:
            data = os.read(self.out_fd, 65536)
        except BlockingIOError:
            return True
        if data:
            if self.log is not None:
                self.log.write(data)
            return True
        self.selector.unregister(self.out_fd)
        assert self.proc is not None and self.proc.stdout is not None
        self.proc.stdout.close()
        self.out_fd = None
        return False

    def _instance_pids(self) -> tuple[list[int], list[int]]:
        """(live processes of the instance, its zombies still under the shim)."""
        table = process_table()
        pids = set(descendants(self.pid, table))
        if self.cgroup is not None:
            pids.update(self.cgroup.pids())
        pids.discard(self.pid)
        dead = {p for p in pids if p not in table or table[p][1] in ("Z", "X")}
        return sorted(pids - dead), sorted(p for p in dead if p in table)

    def _signal_all(self, sig: int) -> None:
        if self.app_pid and self.app_status is None:
            try:
                os.killpg(self.app_pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in self._instance_pids()[0]:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _kill_leftovers(self) -> None:
        deadline = clock.monotonic() + LEFTOVER_KILL_TIMEOUT
        while True:
            self._reap()
            pids, zombies = self._instance_pids()
            # Zombies too: they are reparented to us (the subreaper) as their parents die, and
            # are reaped here, so nothing of the instance outlives the shim, not even an entry.
            if (not pids and not zombies) or clock.monotonic() > deadline:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            # Wait for a SIGCHLD (or a moment: grandchildren die without telling us).
            self._wait_readable(self.wake_r, 0.01)
            try:
                os.read(self.wake_r, 4096)
            except BlockingIOError:
                pass

    def _wait_readable(self, fd: int, timeout: float) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            sel.select(timeout)

    def _drain_output(self) -> None:
        deadline = clock.monotonic() + OUTPUT_DRAIN_TIMEOUT
        while self.out_fd is not None and clock.monotonic() < deadline:
            self._wait_readable(self.out_fd, max(0.0, deadline - clock.monotonic()))
            if not self._pump_output():
                return

    # -- exit --------------------------------------------------------------------------------

    def _finish(self) -> None:
        self._kill_leftovers()
        self._drain_output()
        assert self.app_status is not None
        self._write_exit(self._exit_info(self.app_status))
        self._cleanup()

    def _exit_info(self, status: int) -> ExitInfo:
        launch = self._launch()
        code = os.waitstatus_to_exitcode(status)
        if code >= 0:
            return ExitInfo(
                at=self.exit_at, reason=f"exited {code}", code=code, requested=self.requested
            )
        signum = -code
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        oom = (
            signum == signal.SIGKILL
            and not self.escalated
            and self.cgroup is not None
            and self.cgroup.oom_kills() > 0
        )
        if oom and launch.memory_bytes is not None:
            reason = f"OOM-killed (memory limit {human_bytes(launch.memory_bytes)})"
        elif oom:
            reason = "OOM-killed"
        elif self.escalated:
            reason = f"killed by SIGKILL after the {launch.stop_grace:g} s stop grace"
        else:
            reason = f"killed by {name}"
        return ExitInfo(
            at=self.exit_at, reason=reason, signal=signum, oom=oom, requested=self.requested
        )

    def _write_exit(self, exit: ExitInfo) -> None:
        incarnation = self.launch.incarnation if self.launch else 0
        write_atomic(self.dir / EXIT, encode_exit(exit, incarnation))

    def _start_failed(self, incarnation: int, reason: str) -> int:
        exit = ExitInfo(at=clock.wall(), reason=reason, start_failed=True)
        write_atomic(self.dir / EXIT, encode_exit(exit, incarnation))
        self._cleanup()
        return 2

    def _cleanup(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove(reap=self._reap)
            self.cgroup = None
        if self.log is not None:
            self.log.close()
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None
        self._signal_ready()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m corral.runtime.shim INSTANCE_DIR [--ready-fd N]", file=sys.stderr)
        return 2
    instance_dir = Path(args[0]).resolve()
    ready_fd = int(args[2]) if len(args) >= 3 and args[1] == "--ready-fd" else None
    os.chdir("/")  # do not pin the control plane's working directory
    return Shim(instance_dir, ready_fd).run()


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Our exit is the driver's "exit.json is ready" event: skip interpreter teardown.
    os._exit(code)
