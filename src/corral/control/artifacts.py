"""Content-addressed artifacts: a service's ``source:`` directory snapshotted with each release.

A release that declares ``source: DIR`` records the artifact's digest (SHA-256 over every file's
relative path, mode and bytes, in sorted order) and runs from ``$CORRAL_HOME/artifacts/<digest>``,
an immutable copy. The same tree always gives the same digest, so an unchanged directory is no
new release, a changed one is; and a rollback, which copies an old release's spec, brings the old
code back together with its config.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

from corral.errors import NotFound, UserError

SKIP = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache"})
MAX_FILES = 20_000


def _files(root: Path) -> list[Path]:
    found: list[Path] = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP)
        for name in sorted(names):
            found.append(Path(directory) / name)
            if len(found) > MAX_FILES:
                raise UserError(
                    f"source {root} holds more than {MAX_FILES} files",
                    "point source: at the application's own directory",
                )
    return found


def digest_of(root: Path) -> str:
    if not root.is_dir():
        raise NotFound(
            f"source directory {root} does not exist",
            "source: is relative to the manifest's directory",
        )
    h = hashlib.sha256()
    for path in _files(root):
        relative = path.relative_to(root).as_posix()
        info = path.lstat()
        h.update(relative.encode() + b"\0" + oct(stat.S_IMODE(info.st_mode)).encode() + b"\0")
        if stat.S_ISLNK(info.st_mode):
            h.update(b"link:" + str(path.readlink()).encode())
        else:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:32]


def snapshot(root: Path, home: Path) -> tuple[str, Path]:
    """Copy ``root`` into the artifact store (once per content); return (digest, path)."""
    digest = digest_of(root)
    target = home / "artifacts" / digest
    if target.is_dir():
        return digest, target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{digest}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(root, staging, symlinks=True, ignore=shutil.ignore_patterns(*SKIP))
    if digest_of(staging) != digest:  # the directory changed while we copied it
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"source {root} changed while it was being snapshotted", "apply again")
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another apply made the same artifact
    return digest, target
