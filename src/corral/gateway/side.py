"""Requests the gateway makes on its own behalf, beside the client's: a mirror's shadow copy
and a cache entry's background refresh (stale-while-revalidate).

Each is one short connection of its own (``Connection: close``): it never shares an upstream
connection with client traffic, so a slow or broken shadow cannot delay or fail a real request.
The whole response is read — up to ``limit`` bytes, within ``timeout`` — and handed to
``on_done(status, head, body)``; a failure of any kind (refused, reset, timeout, too large,
malformed) gives ``on_done(0, b"", b"")``. Callers bound how many run at once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import cast

from corral.gateway.framing import FramingError, dechunk

__all__ = ["Done", "SideRequest", "close_head", "send"]

Done = Callable[[int, bytes, bytes], None]
_STATUS = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])")
_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([0-9]+)")
_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:[^\r\n]*chunked")
_CONNECTION = re.compile(rb"\r\n(?:connection|keep-alive)[ \t]*:[^\r\n]*", re.IGNORECASE)


def close_head(head: bytes, extra: bytes = b"") -> bytes:
    """A request head (ending in a blank line) made to close its connection, plus ``extra``
    header lines."""
    head = _CONNECTION.sub(b"", head)
    return head[:-2] + extra + b"Connection: close\r\n\r\n"


class SideRequest(asyncio.Protocol):
    def __init__(self, data: bytes, limit: int, on_done: Done, finished: asyncio.Future[None]):
        self.data = data
        self.limit = limit
        self.on_done: Done | None = on_done
        self.finished = finished
        self.received: list[bytes] = []
        self.size = 0
        self.transport: asyncio.Transport | None = None

    def _report(self, status: int, head: bytes = b"", body: bytes = b"") -> None:
        done, self.on_done = self.on_done, None
        if not self.finished.done():
            self.finished.set_result(None)
        if done is not None:
            done(status, head, body)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.data)
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.fail()
            return
        self.received.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.on_done is None:
            return
        raw = b"".join(self.received)
        end = raw.find(b"\r\n\r\n")
        found = _STATUS.match(raw)
        if exc is not None or end < 0 or found is None:
            self._report(0)
            return
        head, body = raw[: end + 4], raw[end + 4 :]
        lower = head.lower()
        length = _LENGTH.search(lower)
        try:
            if _CHUNKED.search(lower):
                body = dechunk(body)
            elif length is not None:
                if len(body) < int(length.group(1)):
                    self._report(0)  # cut short
                    return
                body = body[: int(length.group(1))]
        except FramingError:
            self._report(0)
            return
        self._report(int(found.group(1)), head, body)

    def fail(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._report(0)


async def send(
    loop: asyncio.AbstractEventLoop,
    host: str,
    port: int,
    data: bytes,
    *,
    timeout: float,
    limit: int,
    on_done: Done,
) -> None:
    """Send ``data`` (a whole request) to ``host:port`` and report the answer to ``on_done``."""
    side = SideRequest(data, limit, on_done, loop.create_future())
    timer = loop.call_later(timeout, side.fail)
    try:
        await loop.create_connection(lambda: side, host, port)
        await side.finished
    except OSError:
        side.fail()
    except asyncio.CancelledError:
        side.fail()
        raise
    finally:
        timer.cancel()
