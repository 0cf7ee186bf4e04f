"""Helpers for testing with a real Corral platform (used by Corral's own tests; usable by
anyone who wants to test an app under Corral).

    with Platform.start(tmp_path) as platform:
        platform.apply_text("services: {web: {command: python3 -m http.server $PORT}}")
        platform.wait_for(lambda: platform.ready("web") == 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from corral.client import Client
from corral.errors import CorralError
from corral.home import Home
from corral.telemetry.inject import SWITCH_ENV

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | Literal[False] | None],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = condition()
        except CorralError as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what or condition}; last: {last!r}"
            )
        time.sleep(interval)


async def until(
    condition: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
) -> Any:
    """``wait_for`` inside an event loop: poll ``condition`` (its result awaited when it is
    awaitable) without blocking the loop; return the first truthy value, fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what or condition}; last: {value!r}"
            )
        await asyncio.sleep(interval)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (bound together, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Platform:
    """A control plane running as a real subprocess on its own CORRAL_HOME."""

    def __init__(
        self, home: Path, proc: subprocess.Popen[bytes], auto_instrument: bool = False
    ) -> None:
        self.home = Home(home)
        self.proc = proc
        self.auto_instrument = auto_instrument
        self.client = Client.for_home(self.home)

    @classmethod
    def launch(cls, home: Path, timeout: float = 20.0, auto_instrument: bool = False) -> Platform:
        """Start a control plane. Auto-instrumentation is off unless asked for: it adds a few
        hundred milliseconds to every Python start, which tests with tight probes do not want."""
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CORRAL_HOME": str(home)}
        if not auto_instrument:
            env[SWITCH_ENV] = "off"
        log = open(home / "server.out", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral.cli.main", "server"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        h = Home(home)

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"server exited {proc.returncode}: {(home / 'server.out').read_text()}"
                )
            url = h.api_url()
            return url is not None and Client(url, h.token()).healthy()

        wait_for(up, timeout, what="the control plane to serve")
        return cls(home, proc, auto_instrument)

    @classmethod
    @contextlib.contextmanager
    def start(cls, home: Path, auto_instrument: bool = False) -> Iterator[Platform]:
        platform = cls.launch(home, auto_instrument=auto_instrument)
        try:
            yield platform
        finally:
            platform.destroy()

    def kill9(self) -> None:
        """SIGKILL the control plane (its instances keep running under their shims)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> Platform:
        return Platform.launch(self.home.path, auto_instrument=self.auto_instrument)

    def apply_text(self, text: str, base_dir: Path | None = None) -> dict[str, Any]:
        data = yaml.safe_load(text)
        body = {"manifest": data, "base_dir": str(base_dir or self.home.path), "source": "test"}
        result: dict[str, Any] = self.client.request("POST", "/apply", body)
        return result

    def services(self) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in self.client.request("GET", "/services")}

    def instances(self, service: str | None = None, system: bool = False) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.client.request(
            "GET", "/instances", query={"system": int(system)}
        )
        return [i for i in items if service is None or i["service"] == service]

    def running(self, service: str) -> list[dict[str, Any]]:
        return [i for i in self.instances(service) if i["phase"] == "run" and i["pid"]]

    def ready(self, service: str) -> int:
        return len(self.running(service))

    def events(self, **query: Any) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.client.request(
            "GET", "/events", query={"limit": 0, **query}
        )
        return result

    def wait_for(
        self,
        condition: Callable[[], T | Literal[False] | None],
        timeout: float = 15.0,
        what: str = "",
    ) -> T:
        return wait_for(condition, timeout, what=what)

    def destroy(self) -> None:
        """Stop every service, then the control plane; kill whatever is left."""
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.client.request("POST", "/down")
                wait_for(lambda: not self.client.request("GET", "/services"), 30.0)
            with contextlib.suppress(Exception):
                self.client.request("POST", "/shutdown")
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        kill_leftovers(self.home.path)


def kill_leftovers(home: Path) -> None:
    """SIGKILL any shim or app still running from ``home`` (a test must leave nothing)."""
    instances = home / "instances"
    if not instances.exists():
        return
    import json

    for shim_file in instances.glob("*/shim.json"):
        try:
            state = json.loads(shim_file.read_text())
        except (OSError, ValueError):
            continue
        for key in ("app_pid", "shim_pid"):
            pid = state.get(key)
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL) if key == "app_pid" else os.kill(
                        pid, signal.SIGKILL
                    )
