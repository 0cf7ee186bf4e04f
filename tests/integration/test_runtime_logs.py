"""Instance logs: size-rotated files, tail across them, follow across rotations; ports."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from corral.runtime.driver import LaunchSpec
from corral.runtime.local import LocalDriver
from corral.runtime.logs import RotatingWriter, follow, tail
from corral.runtime.ports import allocate_port, port_in_use


async def eventually(condition: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(0.01)


async def test_output_is_rotated_into_a_bounded_number_of_bounded_files(tmp_path: Path) -> None:
    script = 'i=0; while [ $i -lt 3000 ]; do echo "line $i"; i=$((i+1)); done'
    driver = LocalDriver(tmp_path / "home")
    try:
        await driver.start(
            LaunchSpec(
                instance_id="chatty-0",
                service="chatty",
                incarnation=1,
                argv=["sh", "-c", script],
                cwd=str(tmp_path),
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                log_max_bytes=4096,
                log_keep=2,
            )
        )
        assert (await driver.wait_exit("chatty-0")).code == 0
        paths = driver.log_paths("chatty-0")
    finally:
        driver.close()
    assert [p.name for p in paths] == ["output.log.2", "output.log.1", "output.log"]
    assert all(p.stat().st_size <= 4096 for p in paths)
    # What is kept is the newest output, whole lines, in order, with nothing missing.
    kept = "".join(p.read_text() for p in paths).splitlines()
    first = int(kept[0].split()[1])
    assert kept == [f"line {i}" for i in range(first, 3000)]
    assert await tail(paths, 3) == ["line 2997", "line 2998", "line 2999"]
    assert await tail(paths, len(kept) + 10) == kept


async def test_follow_yields_new_lines_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    writer = RotatingWriter(path, max_bytes=100, keep=1)
    seen: list[str] = []

    async def collect() -> None:
        async for line in follow(path, from_start=True, poll_interval=0.01):
            seen.append(line)

    task = asyncio.create_task(collect())
    expected: list[str] = []
    try:
        for batch in range(6):
            lines = [f"batch {batch} line {i}" for i in range(3)]  # ~60 bytes: rotates often
            writer.write("".join(f"{line}\n" for line in lines).encode())
            expected += lines
            count = len(expected)
            await eventually(lambda: len(seen) >= count)  # noqa: B023 - awaited in this iteration
    finally:
        task.cancel()
        writer.close()
    assert seen == expected
    assert path.with_name("output.log.1").exists()


async def test_free_port_is_reported_in_use_while_something_listens_on_it() -> None:
    port = allocate_port()
    assert not port_in_use(port)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert port_in_use(port)
    assert not port_in_use(port)
