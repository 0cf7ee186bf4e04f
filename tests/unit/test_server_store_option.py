"""`corral server` options: where --store goes with --api, and that a cluster node refuses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from corral import server as server_module
from corral.cli.main import cli
from corral.errors import UserError


def test_server_with_api_address_keeps_its_state_in_the_given_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[dict[str, Any]] = []

    def main(home: Any, host: str, port: int, **kwargs: Any) -> None:
        started.append({"host": host, "port": port, **kwargs})

    monkeypatch.setattr(server_module, "main", main)
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    monkeypatch.delenv("CORRAL_STORE", raising=False)
    url = "etcd://127.0.0.1:2379/corral"
    result = CliRunner().invoke(cli, ["server", "--api", "127.0.0.1:8400", "--store", url])
    assert result.exit_code == 0, result.output
    assert [(s["host"], s["port"], s["store_url"]) for s in started] == [("127.0.0.1", 8400, url)]


def test_a_cluster_node_refuses_an_external_store_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    monkeypatch.setenv("CORRAL_STORE", "etcd://127.0.0.1:2379")
    args = ["server", "--cluster", "--node-id", "1", "--peers", "1=127.0.0.1:7001"]
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, UserError)
    assert "--store" in result.exception.message
    assert "unset CORRAL_STORE" in result.exception.hint
    assert not (tmp_path / "nodes").exists()  # refused before any node started
