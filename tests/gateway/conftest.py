"""Gateway test parts: real upstream processes, and an in-process gateway on a real socket."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from random import Random
from typing import Any

import pytest

from corral.gateway.config import validate_gateway_data
from corral.gateway.proxy import Gateway
from corral.gateway.router import compile_routes

UPSTREAM = Path(__file__).with_name("upstream.py")
CACHE_UPSTREAM = Path(__file__).with_name("cache_upstream.py")


class Upstreams:
    def __init__(self, names: list[str]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.ports: dict[str, int] = {}
        for name in names:
            proc = subprocess.Popen(
                [sys.executable, str(UPSTREAM), name], stdout=subprocess.PIPE, text=True
            )
            self.procs.append(proc)
        for name, proc in zip(names, self.procs, strict=True):
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("PORT "), f"upstream {name} did not start: {line!r}"
            self.ports[name] = int(line.split()[1])

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    ups = Upstreams(["a", "b"])
    try:
        yield ups
    finally:
        ups.close()


class Running:
    def __init__(self, gw: Gateway, port: int) -> None:
        self.gw = gw
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


async def start_gateway(data: dict[str, Any], mode: str = "standalone") -> Running:
    config = validate_gateway_data(data, mode=mode)
    gw = Gateway(compile_routes(config, 1), config.limits, rng=Random(5))
    server = await gw.listen("127.0.0.1", 0)
    assert isinstance(server, asyncio.base_events.Server)
    return Running(gw, server.sockets[0].getsockname()[1])


@pytest.fixture
async def gateway_factory() -> AsyncIterator[Any]:
    started: list[Running] = []

    async def make(data: dict[str, Any], mode: str = "standalone") -> Running:
        running = await start_gateway(data, mode)
        started.append(running)
        return running

    yield make
    for running in started:
        await running.gw.close(drain=0.1)


@pytest.fixture
def cache_upstream() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(CACHE_UPSTREAM)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("PORT "), line
        yield f"127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
