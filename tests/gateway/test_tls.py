"""TLS termination in standalone mode: the certificate is replaced on disk and new connections
get the new one within a poll, with no restart and no dropped connection (issue 3, "TLS
termination with certificate and key files, reloaded without a restart")."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.testing import until
from tests.gateway.conftest import Upstreams

pytestmark = [
    pytest.mark.timeout(40),
    pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def trusting(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False  # the trust anchor is the point here, not the name
    return context


async def fetch(port: int, context: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return await reader.read()
    finally:
        writer.close()


async def serves_with(port: int, cert: Path) -> bool:
    try:
        return (await fetch(port, trusting(cert))).startswith(b"HTTP/1.1 200")
    except (ssl.SSLError, OSError):
        return False


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {name: self_signed(tmp_path, name) for name in ("first", "second")}


@pytest.fixture
def served(
    tmp_path: Path, upstreams: Upstreams, certs: dict[str, tuple[Path, Path]]
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path, Path]]:
    port = free_port()
    live_cert, live_key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(certs["first"][0], live_cert)
    shutil.copy(certs["first"][1], live_key)
    file = tmp_path / "gw.yaml"
    file.write_text(
        json.dumps(
            {
                "listen": f"127.0.0.1:{port}",
                "workers": 2,
                "tls": {"cert": str(live_cert), "key": str(live_key)},
                "routes": [{"name": "main", "upstreams": [upstreams.address("a")]}],
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.gateway.serve", "--config", str(file)],
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc, port, live_cert, live_key
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def replace_atomically(source: Path, target: Path) -> None:
    staged = target.with_suffix(".new")
    shutil.copy(source, staged)
    os.replace(staged, target)


async def test_a_replaced_certificate_is_served_to_new_connections_without_a_restart(
    served: tuple[subprocess.Popen[bytes], int, Path, Path],
    certs: dict[str, tuple[Path, Path]],
) -> None:
    proc, port, live_cert, live_key = served
    first, second = certs["first"][0], certs["second"][0]
    await until(
        lambda: serves_with(port, first), timeout=10, what="HTTPS with the first certificate"
    )
    assert not await serves_with(port, second)

    # A connection opened before the swap keeps working on its old session.
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusting(first))
    replace_atomically(certs["second"][1], live_key)
    replace_atomically(second, live_cert)

    # Every worker polls every 0.25 s; a fresh connection may land on either, so ask each
    # several times before calling it done.
    async def both_workers_serve_second() -> bool:
        results = [await serves_with(port, second) for _ in range(6)]
        return all(results)

    await until(
        both_workers_serve_second, timeout=10, what="every worker serving the second certificate"
    )
    assert not await serves_with(port, first)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()
    assert proc.poll() is None  # the same process all along: reloaded, not restarted
