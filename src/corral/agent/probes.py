"""Probe executors (adapter): run one http, tcp or exec check against an instance.

Each returns ``(ok, detail)``; ``detail`` is what a user sees in events ("HTTP 503",
"connection refused", "exit 1"). Timeouts are the probe's own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any


async def http_probe(port: int, path: str, timeout: float) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "User-Agent: corral-probe\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return False, f"timed out after {timeout:g}s"
    except OSError as exc:
        return False, (exc.strerror or str(exc)).lower()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, "not an HTTP response"
    code = int(parts[1])
    return 200 <= code < 400, f"HTTP {code}"


async def tcp_probe(port: int, timeout: float) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    except TimeoutError:
        return False, f"timed out after {timeout:g}s"
    except OSError as exc:
        return False, (exc.strerror or str(exc)).lower()
    return True, "connected"


async def exec_probe(
    argv: list[str], env: Mapping[str, str], cwd: str | None, timeout: float
) -> tuple[bool, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return False, f"cannot run {argv[0]}: {(exc.strerror or str(exc)).lower()}"
    try:
        async with asyncio.timeout(timeout):
            code = await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False, f"timed out after {timeout:g}s"
    return code == 0, f"exit {code}"


async def run_probe(
    probe: Mapping[str, Any],
    ports: Mapping[str, int],
    env: Mapping[str, str],
    cwd: str | None,
) -> tuple[bool, str]:
    """Run a probe as stored in a release spec (``{http: /p, port: name}``, ``{tcp: port}``,
    ``{exec: [...]}``)."""
    timeout = float(probe.get("timeout", 1.0))
    if probe.get("exec"):
        argv = probe["exec"]
        return await exec_probe(list(argv), env, cwd, timeout)
    port_ref = probe.get("port") if probe.get("http") else probe.get("tcp")
    port = resolve_port(port_ref, ports)
    if port is None:
        return False, f"no port {port_ref!r}"
    if probe.get("http"):
        return await http_probe(port, str(probe["http"]), timeout)
    return await tcp_probe(port, timeout)


def resolve_port(ref: object, ports: Mapping[str, int]) -> int | None:
    if ref is None or ref is True:
        return next(iter(ports.values()), None)
    if isinstance(ref, int):
        return ref
    if isinstance(ref, str) and ref.isdigit():
        return int(ref)
    if isinstance(ref, str):
        return ports.get(ref)
    return None
