"""Zero-touch tracing: which instances get OpenTelemetry auto-instrumentation, and how.

Theory of operation. The platform starts every instance, so it can do for Python services what
``opentelemetry-instrument`` does by hand: put a directory holding a ``sitecustomize.py``
bootstrap in front of ``PYTHONPATH``, and every Python interpreter the instance starts imports
it before the app's first line. Two directories go in front, and nothing else: the bootstrap
(``corral/telemetry/otel_site/``, versioned with the platform) and the OpenTelemetry packages
(built once by ``scripts/bootstrap.sh`` with ``pip install --target``). The platform's own
virtualenv is never on the app's path.

This module holds the decisions only; ``telemetry.inject`` does the I/O around them.

Invariants:
- An instance is instrumented only when (a) it is not a platform service, (b) the manifest did
  not opt out (``telemetry: {auto_instrument: false}``), (c) the collector is known (the agent
  gave it ``OTEL_EXPORTER_OTLP_ENDPOINT``), (d) its command runs Python — a ``python``,
  ``python3`` or ``pythonX.Y`` executable, or a script whose shebang names one — and (e) that
  very interpreter, started with the injected environment, said it loaded the bootstrap and
  every package (``check_argv``/``parse_check``). Otherwise the environment is left exactly as
  it was, so an app that cannot be instrumented still runs as if Corral had not tried.
- The service's own ``PYTHONPATH`` is kept, after the two injected entries.
- A setting the service set itself (``OTEL_PYTHON_EXCLUDED_URLS``) wins over the platform's.
- Health probes are not traced: the probe paths become the excluded URLs, so readiness checks
  every 500 ms do not bury the requests users make.

Anchor: the ``sitecustomize`` mechanism of opentelemetry-python-contrib's
``opentelemetry-instrument``; its ``OTEL_PYTHON_EXCLUDED_URLS`` convention (regexes searched in
the URL).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CHECK_ENV",
    "MARKER",
    "Check",
    "SitePaths",
    "check_argv",
    "excluded_urls",
    "instrumented_env",
    "is_python_executable",
    "opted_in",
    "parse_check",
    "parse_shebang",
    "python_interpreter",
    "script_candidate",
]

MARKER = "corral-otel:"
"""Every line the bootstrap prints for the platform starts with this."""

CHECK_ENV = "CORRAL_OTEL_CHECK"
"""Set to 1, the bootstrap only imports what it needs and prints one ``MARKER`` line."""

_PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)?)?$")


@dataclass(frozen=True)
class SitePaths:
    """The two directories injected in front of ``PYTHONPATH``."""

    bootstrap: str  # holds sitecustomize.py
    packages: str  # holds the OpenTelemetry packages (pip install --target)


@dataclass(frozen=True)
class Check:
    """What an interpreter said when started with the injected environment."""

    ok: bool
    detail: str  # "Python 3.11.7" when ok; otherwise why not, for the event
    final: bool = True  # False: no answer in time; ask again next start


def is_python_executable(program: str) -> bool:
    """``python``, ``python3``, ``python3.11``, or a path ending in one of them."""
    return bool(_PYTHON_NAME.match(program.rsplit("/", 1)[-1]))


def parse_shebang(first_line: str) -> list[str] | None:
    """The interpreter argv of a ``#!`` line, or None when the line is not a shebang."""
    if not first_line.startswith("#!"):
        return None
    words = first_line[2:].strip().split()
    return words or None


def _python_in(words: Sequence[str]) -> bool:
    if not words:
        return False
    if words[0].rsplit("/", 1)[-1] == "env":
        rest = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        return bool(rest) and is_python_executable(rest[0])
    return is_python_executable(words[0])


def script_candidate(argv: Sequence[str]) -> str | None:
    """The program whose shebang decides, when ``argv[0]`` is not a Python executable itself
    (a script like ``./app.py`` or a console script like ``gunicorn``); None for an empty
    command or a Python executable."""
    if not argv or is_python_executable(argv[0]):
        return None
    return argv[0]


def python_interpreter(argv: Sequence[str], shebang: str | None = None) -> list[str] | None:
    """The argv prefix that starts the service's Python interpreter, or None if the command
    does not run Python. ``shebang`` is the first line of ``script_candidate(argv)``'s file,
    read by the caller (None when there is none)."""
    if not argv:
        return None
    if is_python_executable(argv[0]):
        return [argv[0], *_interpreter_options(argv[1:])]
    words = parse_shebang(shebang or "")
    if words is None or not _python_in(words):
        return None
    if words[0].rsplit("/", 1)[-1] == "env" and len(words) > 1 and words[1] == "-S":
        # `#!/usr/bin/env -S python3 -u`: env splits the rest itself.
        return [words[0], *shlex.split(" ".join(words[2:]))]
    return words


_OPTIONS_WITH_VALUE = ("-X", "-W", "--check-hash-based-pycs")


def _interpreter_options(args: Sequence[str]) -> list[str]:
    """The interpreter's own options (``-I``, ``-S``, ``-X dev``…) before the script: they
    decide whether it reads PYTHONPATH and site, so the check must run with them too."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-m", "-c", "-", "--") or not arg.startswith("-"):
            break
        out.append(arg)
        if arg in _OPTIONS_WITH_VALUE and i + 1 < len(args):
            out.append(args[i + 1])
            i += 1
        i += 1
    return out


def check_argv(interpreter: Sequence[str]) -> list[str]:
    """The command that asks ``interpreter`` whether it can load the bootstrap."""
    return [*interpreter, "-c", "pass"]


def parse_check(output: str, returncode: int | None) -> Check:
    """Read the ``MARKER`` line of a check run (``returncode`` None: it timed out)."""
    for line in output.splitlines():
        if not line.startswith(MARKER):
            continue
        status, _, detail = line[len(MARKER) :].strip().partition(" ")
        if status == "ok":
            return Check(True, detail.strip())
        return Check(False, detail.strip() or "the bootstrap failed without saying why")
    if returncode is None:
        return Check(False, "the interpreter did not answer the check in time", final=False)
    return Check(
        False,
        "the interpreter did not load the bootstrap (it ignores PYTHONPATH, runs without "
        f"site, or is not CPython 3); exit status {returncode}",
    )


def opted_in(release_spec: Mapping[str, Any]) -> bool:
    """False only when the manifest says ``telemetry: {auto_instrument: false}``."""
    telemetry = release_spec.get("telemetry") or {}
    return bool(telemetry.get("auto_instrument", True))


def excluded_urls(release_spec: Mapping[str, Any]) -> str:
    """The service's HTTP probe paths as ``OTEL_PYTHON_EXCLUDED_URLS`` regexes (comma-separated;
    each searched in the full URL, query string excluded)."""
    paths: list[str] = []
    for probe in (release_spec.get("health") or {}).values():
        path = probe.get("http") if isinstance(probe, dict) else None
        if isinstance(path, str) and path.startswith("/"):
            pattern = re.escape(path.split("?", 1)[0]) + "$"
            if pattern not in paths:
                paths.append(pattern)
    return ",".join(paths)


def instrumented_env(
    env: Mapping[str, str], site: SitePaths, release_spec: Mapping[str, Any]
) -> dict[str, str]:
    """``env`` with the bootstrap and packages in front of the service's own PYTHONPATH."""
    out = dict(env)
    entries = [site.bootstrap, site.packages]
    own = env.get("PYTHONPATH", "")
    out["PYTHONPATH"] = ":".join(entries + ([own] if own else []))
    excluded = excluded_urls(release_spec)
    if excluded and "OTEL_PYTHON_EXCLUDED_URLS" not in env:
        out["OTEL_PYTHON_EXCLUDED_URLS"] = excluded
    return out
