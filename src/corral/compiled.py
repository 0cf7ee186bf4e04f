"""Compiled builds of the hot-path modules, used only while they match their sources.

Theory of operation. The gateway's per-request Python — the data plane (``proxy``) and the pure
cores it calls on every request — costs most of a proxied request's CPU when interpreted.
``scripts/build_compiled.py`` compiles exactly those modules with mypyc (the compiler that ships
with mypy, which the code is already checked with under ``--strict``), plus the small C header
scan ``gateway/_headscan.c`` (the modules fall back to a regex without it), into an overlay
directory beside the virtualenv's packages, ``<sys.prefix>/corral-compiled``, and records a
manifest: the SHA-256 of every compiled source, the Python version and the mypy version.

A package with compiled modules calls ``use_compiled(__name__, __path__)`` from its
``__init__``. When the manifest matches the sources as they are now, the overlay's package
directory goes first on the package's ``__path__``, so ``import corral.gateway.proxy`` loads
the extension; otherwise nothing changes and the sources run interpreted. So an edited file is
never shadowed by a stale build, and a machine without a C compiler runs the same code, slower.
``CORRAL_COMPILED=off`` forces the interpreted modules (for comparing the two, or debugging).

The invariant that makes this safe: the compiled modules are the same source files, type-checked
by mypy --strict, and the whole test suite runs against whichever build the bootstrap produced.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

__all__ = ["COMPILED", "EXTENSIONS", "OVERLAY", "current_manifest", "use_compiled"]

# Package → the modules of it that are compiled: the gateway's request path (bench/gateway.py)
# and the collector's ingest path (bench/telemetry.py), where users pay the interpreter per
# request or per span.
COMPILED: dict[str, tuple[str, ...]] = {
    "corral.gateway": (
        "proxy",
        "lb",
        "router",
        "metrics",
        "framing",
        "outlier",
        "retry",
        "policies",
        "ratelimit",
        "shed",
        "breaker",
    ),
    "corral.telemetry": ("normalize", "rollup"),
}
# Package → C extensions of it (``<name>.c`` beside the sources), built into the same overlay.
EXTENSIONS: dict[str, tuple[str, ...]] = {"corral.gateway": ("_headscan",)}
OVERLAY = Path(sys.prefix) / "corral-compiled"
MANIFEST = "manifest.json"


def _source_root() -> Path:
    return Path(__file__).resolve().parent.parent  # the directory holding ``corral``


def current_manifest(compiler_version: str) -> dict[str, object]:
    """What a build of the sources as they are now, by this Python and compiler, records."""
    root = _source_root()
    sources: dict[str, str] = {}
    for package, modules in sorted(COMPILED.items()):
        folder = root.joinpath(*package.split("."))
        for module in modules:
            data = (folder / f"{module}.py").read_bytes()
            sources[f"{package}.{module}"] = hashlib.sha256(data).hexdigest()
        for extension in EXTENSIONS.get(package, ()):
            data = (folder / f"{extension}.c").read_bytes()
            sources[f"{package}.{extension}"] = hashlib.sha256(data).hexdigest()
    return {"python": sys.version, "compiler": compiler_version, "sources": sources}


def _recorded() -> dict[str, object] | None:
    try:
        data = json.loads((OVERLAY / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def use_compiled(package: str, path: list[str]) -> bool:
    """Put the compiled build of ``package`` first on its ``__path__`` when it is current."""
    if os.environ.get("CORRAL_COMPILED", "").lower() in ("off", "0", "no", "false"):
        return False
    if package not in COMPILED:
        return False
    recorded = _recorded()
    if recorded is None:
        return False
    compiler = recorded.get("compiler")
    try:
        if not isinstance(compiler, str) or recorded != current_manifest(compiler):
            return False
    except OSError:  # a source the build was made from is not here (not an editable install)
        return False
    folder = OVERLAY.joinpath(*package.split("."))
    if not folder.is_dir():
        return False
    path.insert(0, str(folder))
    return True
