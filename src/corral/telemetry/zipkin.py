"""Zipkin v2 JSON: decode what clients POST to ``/api/v2/spans``, encode for the query API.

Decoding is typed (msgspec), so a malformed body fails as a whole with a message naming the
bad field, and nothing of it is stored. Tags are strings in Zipkin; an ``error`` tag marks the
span failed (its value is the message). ``service.instance.id`` in the tags (the OpenTelemetry
exporter copies resource attributes there) names the instance; otherwise the local endpoint's
address does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import msgspec

from corral.errors import UserError
from corral.telemetry.model import Event, Span


# gc=False: decoded structs hold only strings, numbers and lists of them — never a cycle — so
# the cyclic collector need not track the five or so each span allocates.
class Endpoint(msgspec.Struct, omit_defaults=True, gc=False):
    serviceName: str | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    port: int | None = None


class Annotation(msgspec.Struct, gc=False):
    timestamp: int
    value: str


class ZipkinSpan(msgspec.Struct, omit_defaults=True, gc=False):
    traceId: str
    id: str
    parentId: str | None = None
    name: str | None = None
    kind: str | None = None
    timestamp: int | None = None
    duration: int | None = None
    localEndpoint: Endpoint | None = None
    remoteEndpoint: Endpoint | None = None
    annotations: list[Annotation] | None = None
    tags: dict[str, str] | None = None
    debug: bool | None = None
    shared: bool | None = None


_decoder = msgspec.json.Decoder(list[ZipkinSpan])
_encoder = msgspec.json.Encoder()
_KINDS = {k: k for k in ("SERVER", "CLIENT", "PRODUCER", "CONSUMER")}
_HEX = frozenset("0123456789abcdef")
_ID = re.compile(r"[0-9a-f]{16}")
_TRACE_ID = re.compile(r"[0-9a-f]{16}(?:[0-9a-f]{16})?")


class BadSpans(UserError):
    code = "bad_spans"


def _hex_id(value: str, field: str, length: tuple[int, ...]) -> str:
    value = value.lower()
    if len(value) not in length or not _HEX.issuperset(value):
        raise BadSpans(
            f"span field {field} is not a hex id of {' or '.join(map(str, length))} characters: "
            f"{value[:40]!r}",
            "send ids as lowercase hex, as Zipkin v2 JSON requires",
        )
    return value


def _address(ep: Endpoint | None) -> str:
    if ep is None:
        return ""
    host = ep.ipv4 or ep.ipv6 or ""
    if host and ep.port:
        return f"[{host}]:{ep.port}" if ":" in host else f"{host}:{ep.port}"
    return host


def from_zipkin(z: ZipkinSpan) -> Span:
    # Once per span on the event loop: lowercase ids pass one regex match each (the common
    # case); anything else goes through `_hex_id`, which lowercases or names what is wrong.
    trace_id = z.traceId
    if _TRACE_ID.fullmatch(trace_id) is None:
        trace_id = _hex_id(trace_id, "traceId", (16, 32))
    span_id = z.id
    if _ID.fullmatch(span_id) is None:
        span_id = _hex_id(span_id, "id", (16,))
    parent = z.parentId or None
    if parent is not None and _ID.fullmatch(parent) is None:
        parent = _hex_id(parent, "parentId", (16,))
    tags = z.tags or {}
    local = z.localEndpoint
    remote = z.remoteEndpoint
    error = "error" in tags
    annotations = z.annotations
    kind = z.kind
    if kind:
        kind = _KINDS.get(kind) or _KINDS.get(kind.upper(), "")
    # positional: msgspec's keyword path costs more, and this runs once per span
    return Span(
        trace_id,
        span_id,
        parent,
        z.name or "",
        kind or "",
        (local.serviceName or "").lower() if local else "",
        tags.get("service.instance.id") or _address(local),
        z.timestamp or 0,
        z.duration or 0,
        error,
        tags["error"] if error else "",
        tags,
        tuple([Event(a.timestamp, a.value) for a in annotations]) if annotations else (),
        (remote.serviceName or "") if remote else "",
        _address(remote) if remote else "",
        bool(z.shared),
    )


def decode(body: bytes) -> list[Span]:
    """Zipkin v2 JSON (a list of spans) → spans; raises `BadSpans` naming what is wrong."""
    try:
        raw = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BadSpans(
            f"not a Zipkin v2 JSON span list: {exc}",
            "POST a JSON array of Zipkin v2 spans (https://zipkin.io/zipkin-api/)",
        ) from None
    except msgspec.DecodeError as exc:
        raise BadSpans(f"malformed JSON: {exc}", "POST a JSON array of Zipkin v2 spans") from None
    return [from_zipkin(z) for z in raw]


def to_zipkin(span: Span) -> ZipkinSpan:
    tags = dict(span.attributes)
    if span.error and "error" not in tags:
        tags["error"] = span.status or "true"
    host, _, port = span.peer.rpartition(":")
    remote = None
    if span.remote_service or span.peer:
        remote = Endpoint(
            serviceName=span.remote_service or None,
            ipv4=(host or span.peer) if span.peer else None,
            port=int(port) if port.isdigit() and host else None,
        )
    return ZipkinSpan(
        traceId=span.trace_id,
        id=span.span_id,
        parentId=span.parent_id,
        name=span.name,
        kind=span.kind or None,
        timestamp=span.start_us,
        duration=span.duration_us,
        localEndpoint=Endpoint(serviceName=span.service),
        remoteEndpoint=remote,
        annotations=[Annotation(e.ts_us, e.name) for e in span.events] or None,
        tags=tags or None,
        shared=True if span.shared else None,
    )


def encode(spans: Iterable[Span]) -> bytes:
    return _encoder.encode([to_zipkin(s) for s in spans])


def encode_traces(traces: Iterable[Iterable[Span]]) -> bytes:
    return _encoder.encode([[to_zipkin(s) for s in trace] for trace in traces])
