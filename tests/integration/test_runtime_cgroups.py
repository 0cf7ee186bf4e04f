"""Resource limits through real cgroups: memory hard limit (OOM kill) and CPU quota."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.runtime import cgroups
from corral.runtime.driver import LaunchSpec, read_shim
from corral.runtime.local import LocalDriver


def _cgroups_writable() -> str:
    """Empty if this process can create a memory-limited child cgroup; else why not."""
    try:
        group = cgroups.create(f"corral-probe-{os.getpid()}", 64 << 20, None)
    except (cgroups.CgroupUnavailable, OSError) as e:
        return str(e)
    group.remove()
    return "" if group.memory_enforced else "memory controller not delegated"


_WHY_NOT = _cgroups_writable()
pytestmark = pytest.mark.skipif(bool(_WHY_NOT), reason=f"cgroups not writable: {_WHY_NOT}")


def spec(instance_id: str, argv: list[str], cwd: Path, **kw: object) -> LaunchSpec:
    return LaunchSpec(
        instance_id=instance_id,
        service=instance_id.rsplit("-", 1)[0],
        incarnation=1,
        argv=argv,
        cwd=str(cwd),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stop_grace=2.0,
        **kw,  # type: ignore[arg-type]  # test shorthand over LaunchSpec's typed fields
    )


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[LocalDriver]:
    local = LocalDriver(tmp_path / "home")
    yield local
    for found in await local.adopt():
        if found.running is not None:
            await local.stop(found.instance_id)
    local.close()


async def test_app_allocating_past_its_memory_limit_is_oom_killed_and_reported(
    driver: LocalDriver, tmp_path: Path
) -> None:
    hog = [sys.executable, "-c", "x = b'a' * (256 << 20)"]
    running = await driver.start(spec("hog-0", hog, tmp_path, memory_bytes=64 << 20))
    assert running.memory_enforced
    exit = await driver.wait_exit("hog-0")
    assert exit.oom and exit.signal == 9
    assert exit.reason == "OOM-killed (memory limit 64 MiB)"


async def test_limits_are_written_to_a_cgroup_beneath_the_platforms_and_removed_after(
    driver: LocalDriver, tmp_path: Path
) -> None:
    running = await driver.start(
        spec("web-0", ["sleep", "100"], tmp_path, memory_bytes=128 << 20, cpu=0.5)
    )
    assert running.cpu_enforced and running.memory_enforced
    state = read_shim(driver.instance_dir("web-0"))
    assert state is not None
    memory_dir, cpu_dir = (Path(p) for p in state.cgroups)
    own_memory = cgroups.own_cgroups()[0]["memory"]
    assert str(memory_dir.parent).endswith(own_memory.rstrip("/"))
    assert int((memory_dir / "memory.limit_in_bytes").read_text()) == 128 << 20
    assert int((cpu_dir / "cpu.cfs_quota_us").read_text()) == 50_000
    assert running.app_pid in cgroups.pids_in([memory_dir])
    await driver.stop("web-0")
    assert not memory_dir.exists() and not cpu_dir.exists()
