"""The alerter runs once per platform: beside the API on a single node, on the Raft leader only
in a cluster (among the leader's controllers), so a firing is not sent once per node."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.api.server import Api
from corral.control import leader_watch
from corral.control.leader_watch import Controllers
from corral.home import Home
from corral.store.sqlite import SQLiteStore


class _Idle:
    """Stands in for a controller this test is not about."""

    passes = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class _Replicated:
    """What the API sees of a RaftStore: it has a leader."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self.is_leader = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def _noop(*args: Any) -> None:
    pass


async def test_single_node_api_runs_the_alerter_and_a_cluster_api_does_not(
    tmp_path: Path,
) -> None:
    store = await SQLiteStore.open(tmp_path / "store.db")
    home = Home(tmp_path / "home")
    try:
        single = Api(store, home, {})
        clustered = Api(_Replicated(store), home, {})  # duck-typed: __getattr__ forwards
        assert single.runs_alerter and not clustered.runs_alerter
        await clustered._start_alerter(clustered.app())
        assert clustered.alerter._task is None
    finally:
        await store.close()


async def test_the_leaders_controllers_start_and_stop_the_alerter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("Agent", "Reconciler", "Autoscaler"):
        monkeypatch.setattr(leader_watch, name, _Idle)
    monkeypatch.setattr(leader_watch, "ensure_collector", _noop)
    store = await SQLiteStore.open(tmp_path / "store.db")
    controllers = Controllers(store, Home(tmp_path / "home"))
    try:
        await controllers.start()
        alerter = controllers.alerter
        assert alerter is not None and alerter._task is not None and not alerter._task.done()
        await controllers.close()  # leadership lost
        assert controllers.alerter is None and alerter._task.done()
    finally:
        await controllers.close()
        await store.close()
