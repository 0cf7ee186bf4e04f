"""Standalone mode's admin actions: cache purge and breaker reset on the supervisor's admin
listener (with its token) reach every worker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.gateway.conftest import Upstreams
from tests.gateway.test_serve import free_port

pytestmark = pytest.mark.timeout(40)

TOKEN = "t0ken-for-the-admin-listener"


async def cache_states(port: int, tries: int = 16) -> list[str]:
    """X-Cache of ``tries`` requests, each on a fresh connection (so both workers answer)."""
    states = []
    for _ in range(tries):
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/echo") as response,
        ):
            assert response.status == 200
            states.append(response.headers.get("X-Cache", "MISS"))
    return states


@pytest.fixture
def served(tmp_path: Path, upstreams: Upstreams) -> Iterator[tuple[int, int]]:
    """A standalone gateway with 2 workers, a cached route and an admin token: (port, admin)."""
    port, admin = free_port(), free_port()
    file = tmp_path / "gw.yaml"
    file.write_text(
        json.dumps(
            {
                "listen": f"127.0.0.1:{port}",
                "workers": 2,
                "admin": {"listen": f"127.0.0.1:{admin}", "token": TOKEN},
                "routes": [
                    {
                        "name": "main",
                        "upstreams": [upstreams.address("a")],
                        "cache": {"ttl": 60},
                        "breaker": {"min_calls": 5},
                    }
                ],
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.gateway.serve", "--config", str(file)],
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port, admin
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_cache_purge_and_breaker_reset_reach_every_worker_with_the_admin_token(
    served: tuple[int, int],
) -> None:
    port, admin = served
    base = f"http://127.0.0.1:{admin}/api/v1/gateway"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + 20
    while True:  # warm: both workers up and holding the entry
        try:
            if set(await cache_states(port)) == {"HIT"}:
                break
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, "the gateway did not start caching"
        await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/cache/purge", json={}) as response:
            assert response.status == 401
            assert "token" in (await response.json())["message"]
        async with session.post(
            f"{base}/cache/purge", json={"route": "nope"}, headers=auth
        ) as response:
            assert response.status == 404
        async with session.post(
            f"{base}/cache/purge", json={"route": "main"}, headers=auth
        ) as response:
            assert response.status == 200
            answer = await response.json()
        assert answer["workers"] == answer["applied_by"] == 2
        # Each worker lost its entry: exactly one miss per worker, then hits again.
        states = await cache_states(port)
        assert states.count("MISS") == 2, states
        async with session.post(f"{base}/routes/main/breaker/reset", headers=auth) as response:
            assert response.status == 200
            answer = await response.json()
        assert answer["action"] == "reset_breaker"
        assert answer["applied_by"] == 2
