"""Instance output on disk: a size-rotating writer (used by the shim) and readers.

Rotation is logrotate's "rotate N": ``output.log`` is the live file; when a write would take it
past ``max_bytes`` it becomes ``output.log.1``, ``.1`` becomes ``.2`` … and ``.N`` is dropped.
So at most N+1 files of at most ``max_bytes`` each exist. A rotation prefers to cut at a line
end so that a line is not split across files unless it alone is longer than ``max_bytes``.

``follow`` keeps reading across rotations the way ``tail -F`` does: it reads the old file to its
end, then reopens the path when the path names a different file (a new inode).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO


def rotated(path: Path, index: int) -> Path:
    return path.with_name(f"{path.name}.{index}")


def rotation_set(path: Path, keep: int | None = None) -> list[Path]:
    """The existing files of ``path``'s rotation set, oldest first."""
    found: list[Path] = []
    index = 1
    while keep is None or index <= keep:
        candidate = rotated(path, index)
        if not candidate.exists():
            break
        found.append(candidate)
        index += 1
    found.reverse()
    if path.exists():
        found.append(path)
    return found


class RotatingWriter:
    """Appends bytes to ``path``, rotating by size; every write goes straight to the file."""

    def __init__(self, path: Path, max_bytes: int, keep: int, mode: int = 0o640) -> None:
        if max_bytes <= 0:
            raise ValueError(f"log max_bytes must be positive, got {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = max(keep, 0)
        self._mode = mode
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self._mode)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            room = self.max_bytes - self._size
            if room <= 0:
                self.rotate()
                continue
            piece = view[:room]
            if len(view) > room:
                cut = bytes(piece).rfind(b"\n")
                if cut >= 0:
                    piece = piece[: cut + 1]
                elif self._size > 0:
                    # The line does not fit: start it in a fresh file rather than split it.
                    self.rotate()
                    continue
            written = os.write(self._fd, piece)
            self._size += written
            view = view[written:]
            if self._size >= self.max_bytes or len(view) > 0:
                self.rotate()

    def rotate(self) -> None:
        os.close(self._fd)
        if self.keep == 0:
            self.path.unlink()
        else:
            for index in range(self.keep - 1, 0, -1):
                source = rotated(self.path, index)
                if source.exists():
                    source.replace(rotated(self.path, index + 1))
            self.path.replace(rotated(self.path, 1))
        self._fd = self._open()
        self._size = 0

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _tail_lines(paths: Sequence[Path], lines: int) -> list[str]:
    """The last ``lines`` lines of the concatenation of ``paths`` (oldest file first)."""
    if lines <= 0:
        return []
    collected: list[bytes] = []  # lines in reverse order
    carry = b""  # the start of a line whose beginning is in an older chunk or file
    block = 64 * 1024
    for path in reversed(list(paths)):
        if not path.exists():
            continue  # rotated away since the caller listed it
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            while end > 0 and len(collected) < lines:
                start = max(0, end - block)
                f.seek(start)
                chunk = f.read(end - start) + carry
                end = start
                parts = chunk.split(b"\n")
                carry = parts[0]
                for part in reversed(parts[1:]):
                    collected.append(part)
        if len(collected) >= lines:
            break
    if carry:
        collected.append(carry)
    # A file that ends with "\n" yields an empty last part: it is not a line.
    if collected and collected[0] == b"":
        collected.pop(0)
    picked = collected[:lines]
    picked.reverse()
    return [line.decode("utf-8", "replace") for line in picked]


async def tail(paths: Sequence[Path], lines: int) -> list[str]:
    """The last ``lines`` lines across a rotation set (``paths`` oldest first)."""
    import asyncio  # here, not at the top: the shim imports this module and starts faster

    return await asyncio.to_thread(_tail_lines, list(paths), lines)


async def follow(
    path: Path, *, from_start: bool = False, poll_interval: float = 0.1
) -> AsyncIterator[str]:
    """Yield each new line written to ``path``, across rotations, until cancelled.

    Log lines are for humans, so a short poll for new bytes is fine here (unlike exits)."""
    import asyncio

    f = await _open_when_exists(path, poll_interval)
    pending = b""
    try:
        if not from_start:
            f.seek(0, os.SEEK_END)
        while True:
            chunk = f.read(64 * 1024)
            if chunk:
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for line in complete:
                    yield line.decode("utf-8", "replace")
                continue
            if _replaced(path, f.fileno()):
                # Rotated: the writer may have appended to the old file between our last read
                # and its rename, so read the old file to its end before moving on.
                rest = f.read()
                if rest:
                    pending += rest
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        yield line.decode("utf-8", "replace")
                f.close()
                f = await _open_when_exists(path, poll_interval)
                continue
            await asyncio.sleep(poll_interval)
    finally:
        f.close()


async def _open_when_exists(path: Path, poll_interval: float) -> BinaryIO:
    import asyncio

    while True:
        try:
            return open(path, "rb")  # returned open: the caller closes it
        except FileNotFoundError:
            await asyncio.sleep(poll_interval)


def _replaced(path: Path, fd: int) -> bool:
    try:
        current = path.stat()
    except FileNotFoundError:
        return True
    mine = os.fstat(fd)
    return (current.st_ino, current.st_dev) != (mine.st_ino, mine.st_dev)
