"""Autoscaling with real parts: a CPU-bound service under a real platform scales out when its
load rises and back in when it falls; the controller against a real SQLite store (its writes,
events, and a restart); the CPU source reading a real process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import msgspec
import pytest

from corral import model
from corral.agent.usage import CpuUsage, Reading, utilisation
from corral.control.autoscaler import Autoscaler
from corral.runtime.driver import LaunchSpec, ShimState, start_ticks
from corral.store.base import Put
from corral.store.sqlite import SQLiteStore
from corral.testing import Platform
from tests.integration.apps import PY

# Burns a share of $LOAD_DIR/demand (CPU cores in total) split between the live instances, which
# register in $LOAD_DIR/members: the stand-in for load that a balancer spreads over instances.
BURN_APP = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
root = os.environ["LOAD_DIR"]
members = os.path.join(root, "members")
os.makedirs(members, exist_ok=True)
open(os.path.join(members, str(os.getpid())), "w").close()

def alive(pid):
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError):
        return False

while True:
    try:
        demand = float(open(os.path.join(root, "demand")).read() or 0)
    except (OSError, ValueError):
        demand = 0.0
    share = demand / max(1, sum(1 for p in os.listdir(members) if alive(p)))
    start = time.process_time()
    deadline = time.monotonic() + 0.1
    while time.process_time() - start < share * 0.1 and time.monotonic() < deadline:
        pass
    time.sleep(max(0.0, deadline - time.monotonic()))
"""

MANIFEST = """
services:
  burn:
    command: [{py}, {app}]
    env: {{LOAD_DIR: {load}}}
    instances: {{min: 1, max: 2}}
    stop: {{grace: 2s, drain: 0s}}
    autoscale: {{metric: cpu, target: 30%, period: 1s, scale_down_window: 3s}}
"""


def test_a_cpu_bound_service_scales_out_under_load_and_back_in_when_it_ends(
    tmp_path: Path,
) -> None:
    app = tmp_path / "burn.py"
    app.write_text(BURN_APP)
    load = tmp_path / "load"
    load.mkdir()
    (load / "demand").write_text("0")
    with Platform.start(tmp_path / "home") as platform:
        platform.apply_text(MANIFEST.format(py=PY, app=app, load=load))
        platform.wait_for(lambda: platform.ready("burn") == 1, what="one instance in run")

        # 60 % of a core on one instance, against a 30 % target: 2 instances.
        (load / "demand").write_text("0.6")
        stepped = time.monotonic()
        platform.wait_for(lambda: platform.ready("burn") == 2, 15.0, what="a second instance")
        scaled_out = time.monotonic() - stepped
        events = [e["reason"] for e in platform.events(service="burn")]
        out = [r for r in events if r.startswith("autoscale: cpu") and r.endswith("→ 2")]
        assert out, events

        # No load: back to min once the 3 s scale-down window has passed.
        (load / "demand").write_text("0")
        idle = time.monotonic()
        platform.wait_for(
            lambda: platform.services()["burn"]["desired"] == 1 and platform.ready("burn") == 1,
            15.0,
            what="scale-in to 1",
        )
        scaled_in = time.monotonic() - idle
        events = [e["reason"] for e in platform.events(service="burn")]
        assert any(r.startswith("autoscale: cpu") and "→ 1" in r for r in events), events
        print("\n".join(r for r in events if r.startswith("autoscale")))
        assert scaled_in >= 2.0  # not at once: the window holds the last busy recommendation
        print(f"\nload step → 2nd instance in run: {scaled_out:.1f}s; idle → 1: {scaled_in:.1f}s")


# -- the controller against a real store -----------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now


class FixedSource:
    def __init__(self, value: float | None) -> None:
        self.value = value
        self.asked: list[tuple[str, str, list[str]]] = []

    async def sample(self, service: str, metric: str, instances: list[str]) -> float | None:
        self.asked.append((service, metric, instances))
        return self.value


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(tmp_path / "store.db")
    yield opened
    await opened.close()


async def put_service(
    store: SQLiteStore,
    desired: int,
    metric: Literal["cpu", "rps", "latency_p95"] = "cpu",
) -> None:
    record = model.ServiceRecord(
        name="web",
        release=1,
        desired=desired,
        min=1,
        max=10,
        autoscale=model.AutoscalePolicy(metric=metric, target=0.7, period=15.0),
    )
    await store.txn([], [Put(model.SERVICES + "web", model.encode(record))])
    for n in range(desired):
        spec = model.InstanceSpec(id=f"web-{n}", service="web", release=1, node="n", created_at=0)
        status = model.InstanceStatus(id=f"web-{n}", phase="run", alive=True, incarnation=1)
        await store.txn(
            [],
            [
                Put(model.instance_key(spec.id, "spec"), model.encode(spec)),
                Put(model.instance_key(spec.id, "status"), model.encode(status)),
            ],
        )


async def desired_and_reasons(store: SQLiteStore) -> tuple[int, list[str]]:
    kv = await store.get(model.SERVICES + "web")
    assert kv is not None
    listing = await store.range(model.EVENTS)
    reasons = [model.decode(e.value, model.Event).reason for e in listing.kvs]
    return model.decode(kv.value, model.ServiceRecord).desired, reasons


async def test_the_controller_writes_the_new_count_with_an_event_that_carries_the_inputs(
    store: SQLiteStore,
) -> None:
    await put_service(store, 3)
    source = FixedSource(0.91)
    clock = FakeClock()
    autoscaler = Autoscaler(store, {"cpu": source}, clock=clock)
    assert await autoscaler.run_once() == {}  # a new service is first looked at after a period
    clock.now += 15.0
    decisions = await autoscaler.run_once()
    assert decisions["web"].desired == 4
    assert source.asked == [("web", "cpu", ["web-0", "web-1", "web-2"])]
    desired, reasons = await desired_and_reasons(store)
    assert desired == 4
    assert reasons == ["autoscale: cpu 91 % vs 70 % target over 3 instances → 4"]
    clock.now += 5.0
    assert await autoscaler.run_once() == {}  # not due before its period


async def test_a_metric_without_a_source_changes_nothing_and_says_so_once(
    store: SQLiteStore,
) -> None:
    await put_service(store, 2, metric="rps")
    clock = FakeClock()
    autoscaler = Autoscaler(store, {"cpu": FixedSource(0.9)}, clock=clock)
    for _ in range(4):
        await autoscaler.run_once(force=True)
        clock.now += 15.0
    desired, reasons = await desired_and_reasons(store)
    assert desired == 2
    assert reasons == ["autoscale: metric rps has no source yet: no change"]


async def test_missing_samples_change_nothing_and_are_reported_when_they_start(
    store: SQLiteStore,
) -> None:
    await put_service(store, 2)
    source = FixedSource(None)
    clock = FakeClock()
    autoscaler = Autoscaler(store, {"cpu": source}, clock=clock)
    for value in (None, None, 0.7, None):
        source.value = value
        await autoscaler.run_once(force=True)
        clock.now += 15.0
    desired, reasons = await desired_and_reasons(store)
    assert desired == 2
    missing = "autoscale: no cpu samples over 2 instances: no change"
    assert reasons == [missing, missing]  # once per stretch of missing samples


async def test_a_record_changed_meanwhile_is_not_overwritten(store: SQLiteStore) -> None:
    await put_service(store, 3)

    class Racing(FixedSource):
        async def sample(self, service: str, metric: str, instances: list[str]) -> float | None:
            kv = await store.get(model.SERVICES + "web")
            assert kv is not None
            record = model.decode(kv.value, model.ServiceRecord)
            record.desired = 5  # `corral scale web=5` lands while the metric is read
            await store.txn([], [Put(model.SERVICES + "web", model.encode(record))])
            return 0.91

    autoscaler = Autoscaler(store, {"cpu": Racing(0.91)}, clock=FakeClock())
    await autoscaler.run_once(force=True)
    desired, reasons = await desired_and_reasons(store)
    assert (desired, reasons) == (5, [])


async def test_a_restarted_controller_does_not_scale_in_before_a_full_window(
    store: SQLiteStore,
) -> None:
    await put_service(store, 4)
    clock = FakeClock()
    source = FixedSource(0.05)
    for _restart in range(3):  # three control planes in a row, each living 100 s
        autoscaler = Autoscaler(store, {"cpu": source}, clock=clock)
        for _ in range(7):
            await autoscaler.run_once(force=True)
            clock.now += 15.0
        assert (await desired_and_reasons(store))[0] == 4
    autoscaler = Autoscaler(store, {"cpu": source}, clock=clock)
    await autoscaler.run_once(force=True)
    clock.now += 300.0
    await autoscaler.run_once(force=True)
    desired, reasons = await desired_and_reasons(store)
    assert desired == 3
    assert reasons[-1] == (
        "autoscale: cpu 5 % vs 70 % target over 4 instances → 1; "
        "limited to 3 (at most −1 per 60s): 4 → 3"
    )


# -- the CPU source ----------------------------------------------------------------------------


def fake_instance(directory: Path, pid: int, cgroups: list[str], cpu: float | None) -> None:
    directory.mkdir(parents=True)
    shim = ShimState(
        shim_pid=pid,
        app_pid=pid,
        incarnation=1,
        started_at=0.0,
        shim_start_ticks=start_ticks(pid) or 0,
        app_start_ticks=start_ticks(pid) or 0,
        cgroups=cgroups,
        cpu_enforced=False,
        memory_enforced=False,
        limits="",
    )
    (directory / "shim.json").write_bytes(msgspec.json.encode(shim))
    launch = LaunchSpec(
        instance_id=directory.name,
        service="burn",
        incarnation=1,
        argv=["x"],
        cwd="/",
        env={},
        cpu=cpu,
    )
    (directory / "launch.json").write_bytes(msgspec.json.encode(launch))


async def test_the_cpu_source_reads_a_busy_process_as_a_fraction_of_its_limit(
    tmp_path: Path,
) -> None:
    busy = await asyncio.create_subprocess_exec(PY, "-c", "while True: pass")
    idle = await asyncio.create_subprocess_exec(PY, "-c", "import time; time.sleep(60)")
    try:
        fake_instance(tmp_path / "busy-1", busy.pid, [], cpu=None)
        fake_instance(tmp_path / "busy-2", busy.pid, [], cpu=2.0)
        fake_instance(tmp_path / "idle-1", idle.pid, [], cpu=None)
        usage = CpuUsage(tmp_path, first_interval=0.3)
        before = [usage.read(i) for i in ("busy-1", "busy-2")]
        busy_share = await usage.sample("burn", "cpu", ["busy-1"])
        quiet = await usage.sample("idle", "cpu", ["idle-1"])
        after = [usage.read(i) for i in ("busy-1", "busy-2")]
        assert quiet is not None and quiet < 0.1
        # A core, less what the rest of a loaded machine takes: clearly above the idle one.
        assert busy_share is not None and busy_share > max(0.05, 3 * quiet)
        one_core, two_cores = (
            utilisation(a, b) for a, b in zip(before, after, strict=True) if a and b
        )
        assert one_core is not None and two_cores is not None
        # The same CPU time over a limit of 2 reads as half (the two are read a moment apart,
        # so a loaded machine moves them a little; a missing normalisation would be 2× off).
        assert two_cores == pytest.approx(one_core / 2, rel=0.2)
        assert await usage.sample("burn", "rps", ["busy-1"]) is None
        assert await usage.sample("burn", "cpu", ["missing-1"]) is None
    finally:
        for process in (busy, idle):
            process.kill()
            await process.wait()


def test_a_cgroup_counter_is_preferred_and_a_restart_starts_a_new_series(tmp_path: Path) -> None:
    group = tmp_path / "group"
    group.mkdir()
    (group / "cpuacct.usage").write_text(str(2 * 10**9))
    fake_instance(tmp_path / "web-1", 1, [str(group)], cpu=0.5)
    clock = FakeClock()
    usage = CpuUsage(tmp_path, clock=clock)
    first = usage.read("web-1")
    clock.now += 2.0
    (group / "cpuacct.usage").write_text(str(int(2.5 * 10**9)))
    second = usage.read("web-1")
    assert first is not None and second is not None
    assert utilisation(first, second) == pytest.approx(0.5)  # 0.5 s over 2 s of a 0.5 limit
    restarted = Reading((2, 0), second.at + 1, second.wall + 1, 0.5, 3.0, {})
    assert utilisation(second, restarted) is None
