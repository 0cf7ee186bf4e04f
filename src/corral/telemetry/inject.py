"""Zero-touch tracing, the adapter: find the OpenTelemetry site, ask an instance's Python
whether it can load it, and hand the agent the environment to start the instance with.

Decisions are in ``telemetry.autoinstrument`` (pure); this module does the file reads and runs
the check. One check per interpreter (and PATH, and the service's own PYTHONPATH) per agent: a
shop of four Python services pays for one. A check that timed out is not remembered (a loaded
machine must not turn tracing off for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.telemetry import autoinstrument
from corral.telemetry.autoinstrument import Check, SitePaths

__all__ = ["SITE_ENV", "SWITCH_ENV", "AutoInstrument", "Injection", "default_site_dir", "find_site"]

SITE_ENV = "CORRAL_OTEL_SITE"
"""Overrides where the OpenTelemetry packages are (default: ``<sys.prefix>/corral-otel-site``,
which ``scripts/bootstrap.sh`` builds)."""

SWITCH_ENV = "CORRAL_AUTO_INSTRUMENT"
"""``off`` in the control plane's environment turns auto-instrumentation off platform-wide
(per service: ``telemetry: {auto_instrument: false}``)."""

BOOTSTRAP_DIR = Path(__file__).resolve().parent / "otel_site"
CHECK_TIMEOUT = 20.0


def default_site_dir() -> Path:
    return Path(sys.prefix) / "corral-otel-site"


def find_site(environ: Mapping[str, str] | None = None) -> SitePaths | None:
    """The bootstrap and packages directories, or None when the packages are not installed."""
    environ = os.environ if environ is None else environ
    packages = Path(environ.get(SITE_ENV) or default_site_dir())
    if not (packages / "opentelemetry" / "sdk").is_dir():
        return None
    return SitePaths(bootstrap=str(BOOTSTRAP_DIR), packages=str(packages))


@dataclass(frozen=True)
class Injection:
    env: dict[str, str]  # the environment to start the instance with
    note: str | None  # why it is not instrumented, for an event; None when it is (or opted out)


class AutoInstrument:
    """One per agent: remembers each interpreter's answer."""

    def __init__(self, site: SitePaths | None = None, *, find: bool = True) -> None:
        self.site = site if site is not None or not find else find_site()
        self._checks: dict[tuple[str, ...], asyncio.Task[Check]] = {}

    async def prepare(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        release_spec: Mapping[str, Any],
        cwd: str,
    ) -> Injection:
        """``env`` with auto-instrumentation injected, when the service runs Python and its
        interpreter can load the site; otherwise ``env`` unchanged and, where the user would
        want to know, why."""
        unchanged = Injection(dict(env), None)
        if not autoinstrument.opted_in(release_spec) or "OTEL_EXPORTER_OTLP_ENDPOINT" not in env:
            return unchanged
        if os.environ.get(SWITCH_ENV, "").lower() in ("off", "0", "false", "no"):
            return unchanged
        interpreter = self._interpreter(argv, env, cwd)
        if interpreter is None:
            return unchanged
        if self.site is None:
            where = os.environ.get(SITE_ENV) or default_site_dir()
            return Injection(
                dict(env),
                f"auto-instrumentation off: the OpenTelemetry site is not installed at {where} "
                "(run scripts/bootstrap.sh, or set CORRAL_OTEL_SITE)",
            )
        injected = autoinstrument.instrumented_env(env, self.site, release_spec)
        check = await self._check(interpreter, injected, cwd)
        if not check.ok:
            return Injection(
                dict(env),
                f"auto-instrumentation off: {' '.join(interpreter)} cannot load the "
                f"OpenTelemetry site: {check.detail}",
            )
        return Injection(injected, None)

    def _interpreter(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str
    ) -> list[str] | None:
        program = autoinstrument.script_candidate(argv)
        shebang = _first_line(_resolve(program, env, cwd)) if program else None
        return autoinstrument.python_interpreter(argv, shebang)

    async def _check(self, interpreter: Sequence[str], env: Mapping[str, str], cwd: str) -> Check:
        key = (*interpreter, env.get("PATH", ""), env.get("PYTHONPATH", ""))
        task = self._checks.get(key)
        if task is None or (task.done() and not task.cancelled() and _timed_out(task)):
            task = asyncio.ensure_future(_run_check(interpreter, env, cwd))
            self._checks[key] = task
        return await asyncio.shield(task)


def _timed_out(task: asyncio.Task[Check]) -> bool:
    return task.exception() is not None or not task.result().final


async def _run_check(interpreter: Sequence[str], env: Mapping[str, str], cwd: str) -> Check:
    argv = autoinstrument.check_argv(interpreter)
    check_env = {**env, autoinstrument.CHECK_ENV: "1"}
    workdir = cwd if Path(cwd).is_dir() else None  # noqa: ASYNC240 -- one stat, like the driver's
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=check_env,
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as error:
        return Check(False, f"cannot run {argv[0]}: {error.strerror or error}")
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            out, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return autoinstrument.parse_check("", None)
    return autoinstrument.parse_check(out.decode(errors="replace"), proc.returncode)


def _resolve(program: str, env: Mapping[str, str], cwd: str) -> str | None:
    if "/" in program:
        return str(Path(cwd) / program)  # an absolute program stays itself
    return shutil.which(program, path=env.get("PATH"))


def _first_line(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    return head.split(b"\n", 1)[0].decode(errors="replace")
