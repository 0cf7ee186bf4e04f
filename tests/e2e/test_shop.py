"""The example app (`examples/shop`) as a newcomer meets it: up, order, kill, heal, down."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.testing import kill_leftovers, wait_for
from tests.e2e.test_cli import corral

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    yield home
    corral(home, "down", "--timeout", "20")
    kill_leftovers(home)


def _ps(home: Path) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(corral(home, "ps", "--json").stdout)
    return result


def _http(port: int, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def shop_copy(tmp_path: Path) -> tuple[Path, int]:
    """The example with its gateway on a free port (tests run side by side)."""
    copy = tmp_path / "shop"
    shutil.copytree(SHOP, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    manifest = copy / "corral.yaml"
    manifest.write_text(manifest.read_text().replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
    return copy, port


def test_shop_comes_up_takes_orders_and_heals_with_its_data(home: Path, tmp_path: Path) -> None:
    shop, gateway_port = shop_copy(tmp_path)
    started = time.monotonic()
    up = corral(home, "up", str(shop), "-d", "--timeout", "30")
    assert up.returncode == 0, up.stdout + up.stderr
    assert time.monotonic() - started < 30
    assert f"http://127.0.0.1:{gateway_port}/" in up.stdout
    assert _http(gateway_port, "/api/stock")["apple"] == 50  # through the gateway

    web = next(i for i in _ps(home) if i["service"] == "web")
    assert _http(web["port"], "/api/stock")["apple"] == 50
    order = _http(web["port"], "/api/orders", {"item": "apple", "qty": 2})
    assert order["left"] == 48

    # Kill the pet: it comes back in place with its SQLite stock intact.
    inventory = next(i for i in _ps(home) if i["service"] == "inventory")
    os.kill(inventory["pid"], signal.SIGKILL)
    # Kill one orders instance: a replacement takes a new port; web finds it.
    victim = next(i for i in _ps(home) if i["service"] == "orders")
    os.kill(victim["pid"], signal.SIGKILL)

    def healed() -> bool:
        instances = _ps(home)
        return (
            sum(i["phase"] == "run" for i in instances) == 6
            and victim["id"] not in {i["id"] for i in instances}
            and any(
                i["id"] == "inventory-0" and i["pid"] != inventory["pid"] and i["phase"] == "run"
                for i in instances
            )
        )

    wait_for(healed, timeout=20, what="the shop to heal")
    assert _http(web["port"], "/api/stock")["apple"] == 48
    order = wait_for(
        lambda: _http(web["port"], "/api/orders", {"item": "apple", "qty": 1}), timeout=10
    )
    assert order["left"] == 47
