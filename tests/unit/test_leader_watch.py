"""The leader watch keeps handling leadership whatever the controllers do when stopped."""

from __future__ import annotations

import asyncio
from pathlib import Path

from corral.control.leader_watch import Controllers, LeaderWatch
from corral.control.leadership import Leadership
from corral.home import Home
from corral.store.sqlite import SQLiteStore
from corral.testing import until


class StubbornControllers(Controllers):
    """Controllers whose stop fails (e.g. a controller raising while it closes)."""

    def __init__(self, store: SQLiteStore, home: Home) -> None:
        super().__init__(store, home)
        self.starts = 0
        self.closes = 0

    async def start(self) -> None:
        self.starts += 1

    async def close(self) -> None:
        self.closes += 1
        raise RuntimeError("a controller failed to stop")


async def test_controllers_start_again_on_the_next_leadership_after_a_failed_stop(
    tmp_path: Path,
) -> None:
    store = await SQLiteStore.open(tmp_path / "store.db")
    controllers = StubbornControllers(store, Home(tmp_path / "home"))
    leading = True
    watch = LeaderWatch(lambda: leading, controllers, Leadership(settle=0.0), poll=0.01)
    watch.start()
    try:
        await until(lambda: controllers.starts == 1, timeout=5.0, what="the first start")
        leading = False
        await until(lambda: controllers.closes >= 1, timeout=5.0, what="the stop")
        leading = True
        await until(
            lambda: controllers.starts == 2, timeout=5.0, what="a start after the failed stop"
        )
    finally:
        assert watch._task is not None
        watch._task.cancel()
        await asyncio.gather(watch._task, return_exceptions=True)
        await store.close()
