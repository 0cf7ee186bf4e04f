"""Out-of-process plugins: a supervised child process spoken to over a Unix socket.

The protocol (docs/plugins.md): the gateway starts the command with ``CORRAL_PLUGIN_SOCKET``
set to a path; the plugin listens there; the gateway connects and sends frames — a 4-byte
big-endian length, then that many bytes of UTF-8 JSON — one per request:
``{"id", "phase": "on_request", "route", "method", "host", "path", "query", "client",
"request_id", "headers": [[name, value], ...]}``. The plugin answers each id, in any order,
with ``{"id", "action": "continue", "set_headers"?: {...}, "remove_headers"?: [...]}`` or
``{"id", "action": "respond", "status", "headers"?: {...}, "body"?: "..."}``.

A reply later than ``timeout`` is dropped: the request continues without the plugin (or gets
503 with ``fail_closed``). ``MAX_OVERRUNS`` timeouts in a row and the process is killed and
restarted with exponential backoff; while it is down, calls time out at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from corral.gateway.plugins import InProcess, PluginChain, RemoteCall, load_plugin
from corral.gateway.policy_config import PluginSpec

__all__ = [
    "MAX_FRAME",
    "MAX_OVERRUNS",
    "PluginProcess",
    "build_chains",
    "decode_frames",
    "encode_frame",
]

log = logging.getLogger("corral.gateway.plugins")

MAX_FRAME = 1 << 20
MAX_OVERRUNS = 3  # timeouts in a row before the process is killed and restarted
CONNECT_WITHIN = 10.0  # seconds for a started process to listen on its socket
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0
_LENGTH = struct.Struct(">I")

Reply = Callable[[dict[str, Any] | None], None]


def encode_frame(message: dict[str, Any]) -> bytes:
    data = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data


def decode_frames(buf: bytearray) -> list[dict[str, Any]]:
    """Take every whole frame off the front of ``buf``."""
    out = []
    while len(buf) >= 4:
        (size,) = _LENGTH.unpack_from(buf)
        if size > MAX_FRAME:
            raise ValueError(f"frame of {size} bytes is over the {MAX_FRAME} limit")
        if len(buf) < 4 + size:
            break
        out.append(json.loads(bytes(buf[4 : 4 + size])))
        del buf[: 4 + size]
    return out


class PluginProcess(RemoteCall):
    """One plugin process, shared by every route whose plugin names the same command."""

    def __init__(self, spec: PluginSpec, loop: asyncio.AbstractEventLoop) -> None:
        assert spec.process is not None
        self.label = spec.process
        self.timeout = spec.timeout
        self.fail_closed = spec.fail_closed
        self.key = (spec.process, spec.socket)
        self.argv = shlex.split(spec.process)
        self.loop = loop
        self._dir: str | None = None
        if spec.socket is not None:
            self.path = spec.socket
        else:
            self._dir = tempfile.mkdtemp(prefix="corral-plugin-")
            self.path = os.path.join(self._dir, "plugin.sock")
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.waiting: dict[int, tuple[Reply, asyncio.TimerHandle]] = {}
        self.next_id = 0
        self.overruns = 0
        self.restarts = 0  # kills for overrunning, for the backoff and the report
        self.starts = 0
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        if self._task is None:
            self._task = self.loop.create_task(self._supervise())

    @property
    def connected(self) -> bool:
        return self.writer is not None

    # --- the request path -------------------------------------------------------------------

    def call(self, message: dict[str, Any], reply: Reply) -> None:
        writer = self.writer
        if writer is None:
            self.loop.call_soon(reply, None)  # never re-enter the caller synchronously
            return
        self.next_id += 1
        ident = self.next_id
        message["id"] = ident
        timer = self.loop.call_later(self.timeout, self._timed_out, ident)
        self.waiting[ident] = (reply, timer)
        writer.write(encode_frame(message))

    def _timed_out(self, ident: int) -> None:
        waiting = self.waiting.pop(ident, None)
        if waiting is None:
            return
        self.overruns += 1
        if self.overruns >= MAX_OVERRUNS and self.proc is not None:
            log.warning(
                "gateway plugin process %r overran its %g ms timeout %d times in a row: "
                "killing it (it is restarted with backoff)",
                self.label,
                self.timeout * 1000,
                self.overruns,
            )
            self.restarts += 1
            self.overruns = 0
            self._kill()
        waiting[0](None)

    def _replied(self, message: dict[str, Any]) -> None:
        ident = message.get("id")
        waiting = self.waiting.pop(ident, None) if isinstance(ident, int) else None
        if waiting is None:
            return  # late (already timed out) or unknown: dropped
        self.overruns = 0
        reply, timer = waiting
        timer.cancel()
        reply(message)

    # --- supervision ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._closed:
            started = self.loop.time()
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("gateway plugin process %r failed: %r", self.label, error)
            self._down()
            if self.loop.time() - started > 30.0:
                backoff = BACKOFF_FIRST  # it had been healthy: start the backoff over
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _run_once(self) -> None:
        self._unlink()
        env = dict(os.environ, CORRAL_PLUGIN_SOCKET=self.path)
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own group: killing it takes its children along
        )
        self.starts += 1
        deadline = self.loop.time() + CONNECT_WITHIN
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
                break
            except OSError:
                if self.proc.returncode is not None or self.loop.time() > deadline:
                    raise
                await asyncio.sleep(0.01)
        self.writer = writer
        log.info("gateway plugin process %r is up (pid %d)", self.label, self.proc.pid)
        buf = bytearray()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            buf += data
            for message in decode_frames(buf):
                self._replied(message)

    def _unlink(self) -> None:
        # A stale socket file from a killed process would make the new one's listen fail.
        Path(self.path).unlink(missing_ok=True)

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if self.writer is not None:
            self.writer.close()

    def _down(self) -> None:
        self._kill()
        self.writer = None
        waiting, self.waiting = self.waiting, {}
        for reply, timer in waiting.values():
            timer.cancel()
            reply(None)

    async def close(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._down()
        proc = self.proc
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


def build_chains(
    routes: list[tuple[str, list[PluginSpec]]],
    processes: dict[tuple[str, str | None], PluginProcess],
    loop: asyncio.AbstractEventLoop,
    count: Callable[[str, str], None],
) -> tuple[dict[str, PluginChain], dict[tuple[str, str | None], PluginProcess]]:
    """Each route's chain, and the processes they use: a process whose command is unchanged
    keeps running across a reload; the caller closes the ones no longer returned."""
    chains: dict[str, PluginChain] = {}
    used: dict[tuple[str, str | None], PluginProcess] = {}
    for route, specs in routes:
        entries: list[InProcess | RemoteCall] = []
        for spec in specs:
            if spec.process is None:
                entries.append(load_plugin(spec))
                continue
            key = (spec.process, spec.socket)
            process = used.get(key) or processes.get(key)
            if process is None:
                process = PluginProcess(spec, loop)
                process.start()
            process.timeout, process.fail_closed = spec.timeout, spec.fail_closed
            used[key] = process
            entries.append(process)
        chains[route] = PluginChain(route, entries, count)
    return chains, used
