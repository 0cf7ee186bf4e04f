"""Zipkin v2 JSON: decode what clients POST to ``/api/v2/spans``, encode for the query API.

Decoding is typed (msgspec), so a malformed body fails as a whole with a message naming the
bad field, and nothing of it is stored. Tags are strings in Zipkin; an ``error`` tag marks the
span failed (its value is the message). ``service.instance.id`` in the tags (the OpenTelemetry
exporter copies resource attributes there) names the instance; otherwise the local endpoint's
address does.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from corral.errors import UserError
from corral.telemetry.model import Event, Span


class Endpoint(msgspec.Struct, omit_defaults=True):
    serviceName: str | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    port: int | None = None


class Annotation(msgspec.Struct):
    timestamp: int
    value: str


class ZipkinSpan(msgspec.Struct, omit_defaults=True):
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
_KINDS = frozenset({"SERVER", "CLIENT", "PRODUCER", "CONSUMER"})
_HEX = frozenset("0123456789abcdef")


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
    trace_id = _hex_id(z.traceId, "traceId", (16, 32))
    span_id = _hex_id(z.id, "id", (16,))
    parent = _hex_id(z.parentId, "parentId", (16,)) if z.parentId else None
    tags = z.tags or {}
    local = z.localEndpoint
    remote = z.remoteEndpoint
    kind = (z.kind or "").upper()
    error = "error" in tags
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_id=parent,
        name=z.name or "",
        kind=kind if kind in _KINDS else "",
        service=(local.serviceName or "").lower() if local else "",
        instance=tags.get("service.instance.id") or _address(local),
        start_us=z.timestamp or 0,
        duration_us=z.duration or 0,
        error=error,
        status=tags["error"] if error else "",
        attributes=tags,
        events=tuple(Event(a.timestamp, a.value) for a in z.annotations or ()),
        remote_service=(remote.serviceName or "") if remote else "",
        peer=_address(remote),
        shared=bool(z.shared),
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
