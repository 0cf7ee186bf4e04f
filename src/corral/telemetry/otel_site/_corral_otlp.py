"""OTLP/HTTP protobuf export of SDK spans, written out by hand (loaded by ``_corral_otel``).

Why not the upstream exporter: it builds protobuf message objects span by span (≈ 38 µs a span
here) and sends them with ``requests``, whose import (with urllib3, idna, charset-normalizer,
certifi and protobuf) costs every traced process a quarter second and puts copies of those
libraries on the app's path. Here a span is a few byte strings joined (``encode``), and the batch
goes out over one kept-alive ``http.client`` connection, on the batch processor's thread.

The wire format is opentelemetry-proto's ``ExportTraceServiceRequest`` (field numbers below);
tests/telemetry/test_autoinstrument.py checks it decodes with the upstream message classes to
what the upstream encoder produces. Settings: ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``,
``…_HEADERS`` (``k=v`` pairs, percent-encoded) and ``…_TIMEOUT`` (seconds), as the SDK reads them.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import http.client

_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")


_SMALL = [bytes((i,)) for i in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64  # int64 on the wire: two's complement in ten bytes
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes, messages."""
    size = len(payload)
    tag = _SMALL[number << 3 | 2] if number < 16 else _varint(number << 3 | 2)
    return tag + (_SMALL[size] if size < 128 else _varint(size)) + payload


def _text(number: int, value: str) -> bytes:
    return _field(number, value.encode("utf-8", "replace")) if value else b""


def _fixed64(number: int, value: int) -> bytes:
    return _varint(number << 3 | 1) + _FIXED64.pack(value & 0xFFFFFFFFFFFFFFFF)


def _any_value(value: Any) -> bytes:
    """AnyValue: 1 string, 2 bool, 3 int, 4 double, 5 array (field order of the oneof)."""
    if isinstance(value, str):
        return _field(1, value.encode("utf-8", "replace"))
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, (bytes, bytearray)):
        return _field(7, bytes(value))
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(v)) for v in value))
    return _field(1, str(value).encode("utf-8", "replace"))


_KEYS: dict[str, bytes] = {}


def _key(key: str) -> bytes:
    """A KeyValue's key field, kept: the same few keys come back in every span."""
    encoded = _KEYS.get(key)
    if encoded is None:
        encoded = _field(1, key.encode("utf-8", "replace"))
        if len(_KEYS) < 4096:  # bounded: an app inventing keys must not grow this forever
            _KEYS[key] = encoded
    return encoded


def _attributes(number: int, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    return b"".join(
        _field(number, _key(key) + _field(2, _any_value(value)))
        for key, value in attributes.items()
    )


# A span's attributes, field 9, by (key, type, value): the same method, path, port, statement
# and status come back span after span (the type: True == 1 must not share an encoding).
_SPAN_ATTRIBUTES: dict[tuple[str, type, Any], bytes] = {}
_CACHED_TYPES = (str, int, bool)


def _span_attributes(attributes: Mapping[str, Any]) -> bytes:
    out = []
    for key, value in attributes.items():
        kind = type(value)
        if kind not in _CACHED_TYPES:
            out.append(_field(9, _key(key) + _field(2, _any_value(value))))
            continue
        cache_key = (key, kind, value)
        encoded = _SPAN_ATTRIBUTES.get(cache_key)
        if encoded is None:
            encoded = _field(9, _key(key) + _field(2, _any_value(value)))
            if len(_SPAN_ATTRIBUTES) < 8192 and len(encoded) < 512:  # bounded, small values
                _SPAN_ATTRIBUTES[cache_key] = encoded
        out.append(encoded)
    return b"".join(out)


_KINDS: dict[Any, bytes] = {}
_UNSET_STATUS = _field(15, b"")  # always sent, even empty, as the upstream encoder does
# Field 16 (fixed32): only HAS_IS_REMOTE and IS_REMOTE, as the upstream encoder sets them.
_FLAGS_LOCAL = b"\x85\x01" + _FIXED32.pack(0x100)
_FLAGS_REMOTE = b"\x85\x01" + _FIXED32.pack(0x300)
_pack64 = _FIXED64.pack


def _span(span: Any) -> bytes:
    """One ``Span`` message from an SDK ``ReadableSpan`` (or a lean span: the same fields)."""
    ctx = span.context
    parent = span.parent
    # Fields 1 and 2, ids of fixed size: the tag and length bytes are constants.
    parts = [
        b"\x0a\x10" + ctx.trace_id.to_bytes(16, "big"),
        b"\x12\x08" + ctx.span_id.to_bytes(8, "big"),
    ]
    state = ctx.trace_state.to_header() if ctx.trace_state else ""
    if state:
        parts.append(_text(3, state))
    if parent is not None:
        parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    parts.append(_text(5, span.name))
    kind = _KINDS.get(span.kind)
    if kind is None:
        kind = _KINDS[span.kind] = b"\x30" + _varint(span.kind.value + 1)  # SDK's count from 0
    parts.append(kind)
    parts.append(b"\x39" + _pack64((span.start_time or 0) & 0xFFFFFFFFFFFFFFFF))  # 7, fixed64
    parts.append(b"\x41" + _pack64((span.end_time or 0) & 0xFFFFFFFFFFFFFFFF))  # 8, fixed64
    if span.attributes:
        parts.append(_span_attributes(span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        body = _fixed64(1, event.timestamp) + _text(2, event.name)
        parts.append(_field(11, body + _attributes(3, event.attributes)))
    for link in span.links:
        body = _field(1, link.context.trace_id.to_bytes(16, "big"))
        body += _field(2, link.context.span_id.to_bytes(8, "big"))
        body += _attributes(4, link.attributes)
        link_flags = 0x300 if link.context.is_remote else 0x100
        parts.append(_field(13, body + b"\x35" + _FIXED32.pack(link_flags)))  # 6, fixed32
    status = span.status
    code = status.status_code.value
    if code or status.description:
        body = _text(2, status.description or "")
        if code:
            body += b"\x18" + _varint(code)
        parts.append(_field(15, body))
    else:
        parts.append(_UNSET_STATUS)
    parts.append(_FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL)
    return b"".join(parts)


def encode(spans: Iterable[Any]) -> bytes:
    """An ``ExportTraceServiceRequest``: spans grouped by resource, then by scope."""
    groups: dict[int, tuple[Any, dict[tuple[str, str], list[bytes]]]] = {}
    for span in spans:
        resource = span.resource
        _, scopes = groups.setdefault(id(resource), (resource, {}))
        scope = span.instrumentation_scope
        key = (scope.name, scope.version or "") if scope is not None else ("", "")
        scopes.setdefault(key, []).append(_field(2, _span(span)))
    out = []
    for resource, scopes in groups.values():
        body = _field(1, _attributes(1, resource.attributes))
        for (name, version), encoded in scopes.items():
            scope_msg = _field(1, _text(1, name) + _text(2, version))
            body += _field(2, scope_msg + b"".join(encoded))
        if resource.schema_url:
            body += _text(3, resource.schema_url)
        out.append(_field(1, body))
    return b"".join(out)


def _setting(name: str, default: str = "") -> str:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(
        f"OTEL_EXPORTER_OTLP_{name}", default
    )


def _headers() -> dict[str, str]:
    out = {"Content-Type": "application/x-protobuf", "User-Agent": "corral-otel"}
    for pair in _setting("HEADERS").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(value.strip())
    return out


class Exporter:
    """Posts each batch to the collector over one kept-alive connection; a batch that still
    fails after the retries is dropped (each kind of failure said once on stderr), so a
    collector that is down never piles spans up in the app beyond the processor's bounded
    queue. Used by ``_corral_batch.BatchProcessor`` from its own thread.

    Once the app exits (``stop``, run at exit before the SDK's shutdown joins the processor's
    thread), a failed post is not retried and every post after ``STOP_GRACE_S`` is skipped:
    an app told to stop (SIGTERM → ``sys.exit``) must not wait out the retries against a
    collector that is gone, often stopped just before it."""

    STOP_GRACE_S = 1.0

    def __init__(self) -> None:
        traces = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
        url = urlsplit(traces or base.rstrip("/") + "/v1/traces")
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._timeout = float(_setting("TIMEOUT", "10") or 10)
        self._headers = _headers()
        self._conn: http.client.HTTPConnection | None = None
        self._warned: set[str] = set()
        self._stopping = threading.Event()
        self._stop_by = 0.0
        # Imported here, not at the top: a process that never starts tracing does not pay for
        # http.client (with ssl and email); and not in the processor's thread, where an import
        # can wait on the import lock the app's main thread holds.
        import http.client

        self._http = http

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            http = self._http
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            timeout = self.STOP_GRACE_S if self._stopping.is_set() else self._timeout
            self._conn = cls(self._host, self._port, timeout=timeout)
        return self._conn

    def stop(self) -> None:
        """The app is exiting: give up retrying, and posting at all after the grace."""
        self._stop_by = time.monotonic() + self.STOP_GRACE_S
        self._stopping.set()

    def send(self, body: bytes) -> bool:
        """Post one batch; a refused connection, 429 or 5xx is retried with backoff (as the
        upstream exporter does: a collector that starts after the app loses nothing) for at
        most the export timeout, in the processor's thread, never the app's."""
        http = self._http
        deadline = time.monotonic() + self._timeout
        delay = 0.25
        while True:
            stopping = self._stopping.is_set()
            if stopping and time.monotonic() > self._stop_by:
                self._warn("exit", "the app exited before the collector took them")
                return False
            failure = self._post(http, body)
            if failure is None:
                return True
            kind, message, retry = failure
            if not retry or stopping or time.monotonic() + delay > deadline:
                self._warn(kind, message)
                return False
            if not self._stopping.wait(delay):  # woken by ``stop``: one last try at once
                delay *= 2

    def _post(self, http: Any, body: bytes) -> tuple[str, str, bool] | None:
        """None when the collector took the batch; otherwise (kind, message, worth a retry)."""
        for attempt in (1, 2):  # a kept-alive connection the server closed: one reconnect
            conn = self._connection()
            try:
                conn.request("POST", self._path, body=body, headers=self._headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as error:
                self.close()
                if attempt == 2:
                    return type(error).__name__, f"{type(error).__name__}: {error}", True
                continue
            if response.will_close:
                self.close()
            if 200 <= response.status < 300:
                return None
            retry = response.status == 429 or response.status >= 500
            return str(response.status), f"the collector answered {response.status}", retry
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:  # once each: a collector away must not flood the app's log
            self._warned.add(kind)
            sys.stderr.write(f"corral-otel: spans not exported: {message}\n")
