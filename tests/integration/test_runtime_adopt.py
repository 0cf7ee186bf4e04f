"""A control plane may die; the apps keep running and a new one re-adopts them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from corral.runtime.driver import LAUNCH, SHIM, LaunchSpec, ShimState, start_ticks
from corral.runtime.local import LocalDriver

# Starts the given launches under a LocalDriver, prints each Running as JSON, then waits to die.
SPAWNER = """
import asyncio, sys, msgspec
from pathlib import Path
from corral.runtime.driver import LaunchSpec
from corral.runtime.local import LocalDriver

async def main() -> None:
    driver = LocalDriver(Path(sys.argv[1]))
    for raw in sys.argv[2:]:
        running = await driver.start(msgspec.json.decode(raw, type=LaunchSpec))
        print(msgspec.json.encode(running).decode(), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


def spec(instance_id: str, script: str, cwd: Path) -> LaunchSpec:
    return LaunchSpec(
        instance_id=instance_id,
        service=instance_id.rsplit("-", 1)[0],
        incarnation=3,
        argv=["sh", "-c", script],
        cwd=str(cwd),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stop_grace=1.0,
    )


async def test_instances_outlive_their_control_plane_and_are_readopted_with_exits(
    tmp_path: Path,
) -> None:
    home, flag = tmp_path / "home", tmp_path / "quit-now"
    keeper = spec("keeper-0", "while :; do echo tick; sleep 0.05; done", tmp_path)
    quitter = spec("quitter-0", f"while [ ! -e {flag} ]; do sleep 0.02; done; exit 7", tmp_path)
    spawner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SPAWNER,
        str(home),
        *(msgspec.json.encode(s).decode() for s in (keeper, quitter)),
        stdout=asyncio.subprocess.PIPE,
    )
    assert spawner.stdout is not None
    before = [json.loads(await spawner.stdout.readline()) for _ in range(2)]
    shim_ticks = [start_ticks(r["shim_pid"]) for r in before]

    spawner.kill()  # the control plane dies with SIGKILL
    await spawner.wait()

    # Shims and apps live on, and the keeper's log keeps growing.
    assert [start_ticks(r["shim_pid"]) for r in before] == shim_ticks
    assert all(start_ticks(r["app_pid"]) is not None for r in before)
    log = home / "instances" / "keeper-0" / "output.log"
    size = log.stat().st_size
    await eventually(lambda: log.stat().st_size > size)

    # One instance exits while nobody watches.
    flag.touch()
    await eventually(lambda: (home / "instances" / "quitter-0" / "exit.json").exists())

    driver = LocalDriver(home)
    try:
        adopted = {a.instance_id: a for a in await driver.adopt()}
        assert set(adopted) == {"keeper-0", "quitter-0"}
        running = adopted["keeper-0"].running
        assert running is not None and running.app_pid == before[0]["app_pid"]
        assert adopted["keeper-0"].incarnation == 3
        exit = adopted["quitter-0"].exit
        assert exit is not None and (exit.code, exit.reason) == (7, "exited 7")

        # Supervision resumes: the adopted instance's exit is seen, event-driven.
        os.kill(running.app_pid, signal.SIGKILL)
        exit = await asyncio.wait_for(driver.wait_exit("keeper-0"), 1.0)
        assert exit.signal == 9
    finally:
        for found in await driver.adopt():
            if found.running is not None:
                await driver.stop(found.instance_id)
        driver.close()


async def test_a_reused_pid_is_not_mistaken_for_a_live_shim(tmp_path: Path) -> None:
    home = tmp_path / "home"
    directory = home / "instances" / "ghost-0"
    directory.mkdir(parents=True)
    launch = spec("ghost-0", "true", tmp_path)
    (directory / LAUNCH).write_bytes(msgspec.json.encode(launch))
    me, my_ticks = os.getpid(), start_ticks(os.getpid()) or 0
    state = ShimState(
        shim_pid=me,  # a live process, but not the shim: it started at another time
        app_pid=me,
        incarnation=launch.incarnation,
        started_at=0.0,
        shim_start_ticks=my_ticks + 1,
        app_start_ticks=my_ticks + 1,
        cgroups=[],
        cpu_enforced=False,
        memory_enforced=False,
        limits="",
    )
    (directory / SHIM).write_bytes(msgspec.json.encode(state))
    driver = LocalDriver(home)
    try:
        [found] = await driver.adopt()
        assert found.running is None and found.exit is not None
        assert found.exit.reason.startswith("lost: the shim")
        assert (await driver.wait_exit("ghost-0")).reason == found.exit.reason
    finally:
        driver.close()
