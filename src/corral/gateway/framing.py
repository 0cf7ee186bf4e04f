"""HTTP/1.1 message framing: where a body ends, so raw bytes can be passed through unchanged.

Theory of operation. The proxy forwards bodies as the bytes it received (chunked framing
included), never re-encoding them, and must know exactly where each message ends: a pipelined
request, or a response followed by nothing, must not be cut in the wrong place. A ``BodyFramer``
is told the body's framing from the head (RFC 9112 §6.3): a ``Content-Length``, ``chunked``, or
"until close". ``feed(data, start)`` returns how many bytes from ``start`` belong to the body
and whether the body is complete. For chunked bodies it reads chunk-size lines (extensions
ignored) and the trailer section, and waits — consuming nothing — while a size or trailer line
is incomplete, so at most one partial line (≤ 4 KiB) is ever held back. Chunk data itself is
consumed as soon as it arrives, which is what lets server-sent events and streamed responses
flow unbuffered. Syntax errors raise ``FramingError``; httptools re-validates the same bytes.
"""

from __future__ import annotations

__all__ = ["MAX_LINE", "BodyFramer", "FramingError", "dechunk"]

MAX_LINE = 4096

_SIZE, _DATA, _TRAILER, _DONE = 0, 1, 2, 3
_HEX = b"0123456789abcdefABCDEF"


class FramingError(ValueError):
    pass


class BodyFramer:
    __slots__ = ("body_bytes", "chunked", "remaining", "state", "until_close")

    def __init__(self, length: int | None = None, *, chunked: bool = False) -> None:
        self.chunked = chunked
        self.until_close = not chunked and length is None
        self.remaining = 0 if chunked or length is None else length
        self.body_bytes = 0  # payload bytes seen (without chunk framing)
        self.state = _SIZE if chunked else (_DONE if length == 0 else _DATA)

    @property
    def done(self) -> bool:
        return self.state == _DONE

    def feed(self, data: bytes | bytearray, start: int = 0) -> tuple[int, bool]:
        """Bytes of ``data[start:]`` that belong to this body, and whether it is now complete."""
        if self.state == _DONE:
            return 0, True
        end = len(data)
        if self.until_close:
            self.body_bytes += end - start
            return end - start, False
        if not self.chunked:
            take = min(self.remaining, end - start)
            self.remaining -= take
            self.body_bytes += take
            if self.remaining == 0:
                self.state = _DONE
            return take, self.state == _DONE
        pos = start
        while pos < end:
            if self.state == _DATA:
                take = min(self.remaining, end - pos)
                self.remaining -= take
                pos += take
                if self.remaining == 0:
                    self.state = _SIZE
                continue
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                if end - pos > MAX_LINE:
                    raise FramingError("chunk line too long")
                break
            line = bytes(data[pos:eol])
            pos = eol + 2
            if self.state == _SIZE:
                size_text = line.split(b";", 1)[0].strip()
                if not size_text or len(size_text) > 16 or size_text.translate(None, _HEX):
                    raise FramingError(f"bad chunk size {size_text[:20]!r}")
                size = int(size_text, 16)
                if size == 0:
                    self.state = _TRAILER
                else:
                    self.state = _DATA
                    self.remaining = size + 2  # the data and its CRLF
                    self.body_bytes += size
            elif not line:  # _TRAILER: an empty line ends the message
                self.state = _DONE
                break
        return pos - start, self.state == _DONE


def dechunk(raw: bytes) -> bytes:
    """The payload of a complete chunked body (framing already checked by ``BodyFramer``);
    trailers are dropped."""
    out: list[bytes] = []
    pos = 0
    while True:
        end = raw.find(b"\r\n", pos)
        if end < 0:
            raise FramingError("truncated chunk size line")
        size_text = raw[pos:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise FramingError(f"bad chunk size {size_text!r}") from None
        if size == 0:
            return b"".join(out)
        start = end + 2
        out.append(raw[start : start + size])
        pos = start + size + 2
