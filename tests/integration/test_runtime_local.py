"""The local runtime with real processes: exits, stops, leftovers, start failures, pet locks."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from corral.runtime.driver import LaunchSpec, StartFailed, read_shim, start_ticks
from corral.runtime.local import LocalDriver

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
NO_CGROUP = "/corral-test-no-such-parent/x"  # a parent that does not exist: no usable cgroup


def spec(instance_id: str, argv: list[str], cwd: Path, **kw: object) -> LaunchSpec:
    fields: dict[str, object] = {"stop_grace": 2.0} | kw
    return LaunchSpec(
        instance_id=instance_id,
        service=instance_id.rsplit("-", 1)[0],
        incarnation=1,
        argv=argv,
        cwd=str(cwd),
        env=ENV,
        **fields,  # type: ignore[arg-type]  # test shorthand over LaunchSpec's typed fields
    )


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


def alive(pid: int, ticks: int | None) -> bool:
    return ticks is not None and start_ticks(pid) == ticks


async def read_pid_file(path: Path) -> tuple[int, int | None]:
    text: list[str] = []

    def written() -> bool:
        text.append(path.read_text().strip() if path.exists() else "")
        return text[-1] != ""

    await eventually(written)
    pid = int(text[-1])
    return pid, start_ticks(pid)


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[LocalDriver]:
    local = LocalDriver(tmp_path / "home")
    yield local
    for found in await local.adopt():
        if found.running is not None:
            await local.stop(found.instance_id)
    local.close()


async def test_exit_code_and_output_are_recorded(driver: LocalDriver, tmp_path: Path) -> None:
    running = await driver.start(spec("job-0", ["sh", "-c", "echo hello; exit 3"], tmp_path))
    assert running.app_pid != running.shim_pid
    exit = await driver.wait_exit("job-0")
    assert (exit.code, exit.signal, exit.reason) == (3, None, "exited 3")
    assert not exit.requested and not exit.start_failed
    assert [p.read_text() for p in driver.log_paths("job-0")] == ["hello\n"]


async def test_killed_app_is_reported_with_its_signal_within_a_second(
    driver: LocalDriver, tmp_path: Path
) -> None:
    running = await driver.start(spec("web-0", ["sleep", "100"], tmp_path))
    killed_at = time.monotonic()
    os.kill(running.app_pid, signal.SIGKILL)
    exit = await asyncio.wait_for(driver.wait_exit("web-0"), 1.0)
    assert time.monotonic() - killed_at <= 1.0
    assert (exit.signal, exit.reason, exit.requested) == (9, "killed by SIGKILL", False)


async def test_stop_sends_term_and_the_app_exits_with_it(
    driver: LocalDriver, tmp_path: Path
) -> None:
    await driver.start(spec("web-0", ["sleep", "100"], tmp_path))
    started = time.monotonic()
    exit = await driver.stop("web-0")
    assert (exit.signal, exit.reason, exit.requested) == (15, "killed by SIGTERM", True)
    assert time.monotonic() - started < 1.0


async def test_app_ignoring_term_is_killed_after_the_grace(
    driver: LocalDriver, tmp_path: Path
) -> None:
    script = 'trap "" TERM; echo ready; while :; do sleep 0.05; done'
    await driver.start(spec("stubborn-0", ["sh", "-c", script], tmp_path, stop_grace=0.3))
    log = driver.instance_dir("stubborn-0") / "output.log"
    await eventually(lambda: "ready" in log.read_text())
    started = time.monotonic()
    exit = await driver.stop("stubborn-0")
    assert time.monotonic() - started >= 0.3
    assert exit.signal == 9 and exit.requested
    assert exit.reason == "killed by SIGKILL after the 0.3 s stop grace"


async def test_setsid_descendant_does_not_survive_a_stop(
    driver: LocalDriver, tmp_path: Path
) -> None:
    pid_file = tmp_path / "escaped.pid"
    script = f"(setsid sleep 1000 & echo $! > {pid_file}); sleep 1000"
    await driver.start(spec("leaky-0", ["sh", "-c", script], tmp_path))
    pid, ticks = await read_pid_file(pid_file)
    assert alive(pid, ticks)
    await driver.stop("leaky-0")
    assert not alive(pid, ticks)


@pytest.mark.parametrize("cgroup_parent", [None, NO_CGROUP], ids=["cgroup", "no-cgroup"])
async def test_setsid_descendant_does_not_survive_its_app_exiting(
    driver: LocalDriver, tmp_path: Path, cgroup_parent: str | None
) -> None:
    pid_file, go = tmp_path / "escaped.pid", tmp_path / "go"
    script = (
        f"(setsid sleep 1000 & echo $! > {pid_file}); "
        f"while [ ! -e {go} ]; do sleep 0.02; done; exit 4"
    )
    await driver.start(spec("leaky-0", ["sh", "-c", script], tmp_path, cgroup_parent=cgroup_parent))
    pid, ticks = await read_pid_file(pid_file)
    assert alive(pid, ticks)
    go.touch()
    exit = await driver.wait_exit("leaky-0")
    assert exit.code == 4
    assert not alive(pid, ticks)


async def test_command_not_found_is_a_start_failure_with_its_reason(
    driver: LocalDriver, tmp_path: Path
) -> None:
    with pytest.raises(StartFailed) as failed:
        await driver.start(spec("bad-0", ["no-such-command-xyz", "--flag"], tmp_path))
    assert failed.value.exit.start_failed
    assert failed.value.exit.reason == "command not found: no-such-command-xyz"
    assert "command not found: no-such-command-xyz" in str(failed.value)


async def test_file_without_exec_permission_is_a_start_failure(
    driver: LocalDriver, tmp_path: Path
) -> None:
    (tmp_path / "x").write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(StartFailed) as failed:
        await driver.start(spec("bad-0", ["./x"], tmp_path))
    assert failed.value.exit.reason == "permission denied: ./x"


async def test_unknown_user_is_a_start_failure(driver: LocalDriver, tmp_path: Path) -> None:
    with pytest.raises(StartFailed) as failed:
        await driver.start(spec("bad-0", ["true"], tmp_path, user="nobodyx"))
    assert failed.value.exit.reason == "user nobodyx does not exist"


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")
async def test_app_runs_as_its_user_and_owns_its_data_dir(
    driver: LocalDriver, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data" / "db-0"
    argv = ["sh", "-c", "id -u; id -g"]
    await driver.start(spec("db-0", argv, tmp_path, user="nobody", data_dir=str(data_dir)))
    exit = await driver.wait_exit("db-0")
    assert exit.code == 0
    uid, gid = driver.log_paths("db-0")[-1].read_text().split()
    assert (int(uid), data_dir.stat().st_uid) == (65534, 65534)
    assert int(gid) == data_dir.stat().st_gid


async def test_second_shim_for_a_pet_data_dir_refuses_while_the_first_runs(
    driver: LocalDriver, tmp_path: Path
) -> None:
    data_dir = str(tmp_path / "data" / "db-0")
    first = await driver.start(spec("db-0", ["sleep", "100"], tmp_path, data_dir=data_dir))
    with pytest.raises(StartFailed) as failed:
        await driver.start(spec("db-imposter", ["sleep", "100"], tmp_path, data_dir=data_dir))
    assert failed.value.exit.reason == (
        f"DATA_DIR is locked by another process (pid {first.shim_pid})"
    )
    await driver.stop("db-0")
    # Once the first is gone the identity is free again: a restart in place works.
    again = await driver.start(spec("db-0", ["sleep", "100"], tmp_path, data_dir=data_dir))
    assert again.app_pid != first.app_pid


async def test_instance_cannot_be_started_twice_or_forgotten_while_running(
    driver: LocalDriver, tmp_path: Path
) -> None:
    from corral.errors import Conflict

    await driver.start(spec("web-0", ["sleep", "100"], tmp_path))
    with pytest.raises(Conflict):
        await driver.start(spec("web-0", ["sleep", "100"], tmp_path))
    with pytest.raises(Conflict):
        driver.forget("web-0")
    await driver.stop("web-0")
    driver.forget("web-0")
    assert not driver.instance_dir("web-0").exists()


async def test_without_cgroups_memory_falls_back_to_rlimit_and_cpu_is_not_enforced(
    driver: LocalDriver, tmp_path: Path
) -> None:
    import sys

    hog = [sys.executable, "-c", "x = b'a' * (256 << 20)"]
    running = await driver.start(
        spec("hog-0", hog, tmp_path, memory_bytes=64 << 20, cpu=0.5, cgroup_parent=NO_CGROUP)
    )
    assert running.memory_enforced and not running.cpu_enforced
    assert "RLIMIT_AS 64 MiB" in running.limits and "cpu: not enforced" in running.limits
    exit = await driver.wait_exit("hog-0")
    assert exit.code == 1 and not exit.oom  # MemoryError: the allocation was refused
    assert "MemoryError" in driver.log_paths("hog-0")[-1].read_text()
    state = read_shim(driver.instance_dir("hog-0"))
    assert state is not None and state.cgroups == []
