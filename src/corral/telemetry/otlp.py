"""OTLP/HTTP traces, in protobuf and in JSON, decoded to spans; the export responses.

Protobuf goes through the ``opentelemetry-proto`` generated classes. OTLP/JSON is not plain
proto3 JSON: trace and span ids are **hex** (not base64), enums are integers (names are
accepted too), 64-bit integers are strings — so it has its own typed decoder here rather than
`json_format` (which would read ids as base64).

Resource attributes: ``service.name`` names the service, ``service.instance.id`` the instance;
a few that say where the span ran (`KEPT_RESOURCE`) are copied into the span's attributes.
Span kind and status become Zipkin's words (`model.KINDS`) and ``error`` (status code 2).
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from corral.telemetry.model import Event, Span
from corral.telemetry.zipkin import BadSpans

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
KEPT_RESOURCE = (
    "host.name",
    "deployment.release",
    "deployment.environment",
    "deployment.environment.name",
    "service.version",
    "service.namespace",
    "k8s.pod.name",
)
_KIND = {0: "", 1: "", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_KIND_NAMES = {f"SPAN_KIND_{v or 'INTERNAL'}": v for v in _KIND.values()} | {
    "SPAN_KIND_UNSPECIFIED": ""
}
STATUS_ERROR = 2
_STATUS_NAMES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}


def _pb_value(value: Any) -> str:
    which = value.WhichOneof("value")
    if which == "string_value":
        return str(value.string_value)
    if which == "bool_value":
        return "true" if value.bool_value else "false"
    if which == "int_value":
        return str(value.int_value)
    if which == "double_value":
        return repr(value.double_value)
    if which == "array_value":
        return msgspec.json.encode([_pb_value(v) for v in value.array_value.values]).decode()
    if which == "kvlist_value":
        pairs = {kv.key: _pb_value(kv.value) for kv in value.kvlist_value.values}
        return msgspec.json.encode(pairs).decode()
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return ""


def decode_protobuf(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise BadSpans(
            f"not an OTLP ExportTraceServiceRequest (protobuf): {exc}",
            "send Content-Type application/json for OTLP/JSON",
        ) from None
    spans: list[Span] = []
    append = spans.append
    for rs in request.resource_spans:
        resource = {kv.key: _pb_value(kv.value) for kv in rs.resource.attributes}
        service = resource.get("service.name", "")
        instance = resource.get("service.instance.id", "")
        extra = {k: resource[k] for k in KEPT_RESOURCE if k in resource}
        for ss in rs.scope_spans:
            for s in ss.spans:
                attrs = dict(extra)
                for kv in s.attributes:
                    attrs[kv.key] = _pb_value(kv.value)
                start = s.start_time_unix_nano // 1000
                error = s.status.code == STATUS_ERROR
                append(
                    Span(
                        trace_id=_id(s.trace_id.hex(), "traceId", 32),
                        span_id=_id(s.span_id.hex(), "spanId", 16),
                        parent_id=s.parent_span_id.hex() or None,
                        name=s.name,
                        kind=_KIND.get(s.kind, ""),
                        service=service,
                        instance=instance,
                        start_us=start,
                        duration_us=max(0, s.end_time_unix_nano // 1000 - start),
                        error=error,
                        status=s.status.message if error else "",
                        attributes=attrs,
                        events=tuple(Event(e.time_unix_nano // 1000, e.name) for e in s.events),
                    )
                )
    return spans


def _id(value: str, field: str, length: int) -> str:
    if len(value) != length:
        raise BadSpans(
            f"OTLP span field {field} must be {length // 2} bytes, got {value[:40]!r}",
            "OTLP ids are 16-byte trace ids and 8-byte span ids (hex in OTLP/JSON)",
        )
    return value


# OTLP/JSON, typed: lowerCamelCase keys; unknown fields are ignored as the spec requires.


class JArray(msgspec.Struct):
    values: list[JAnyValue] = []


class JKeyValue(msgspec.Struct):
    key: str
    value: JAnyValue | None = None


class JKvList(msgspec.Struct):
    values: list[JKeyValue] = []


class JAnyValue(msgspec.Struct):
    stringValue: str | None = None
    boolValue: bool | None = None
    intValue: int | str | None = None
    doubleValue: float | str | None = None
    arrayValue: JArray | None = None
    kvlistValue: JKvList | None = None
    bytesValue: str | None = None


class JStatus(msgspec.Struct):
    code: int | str = 0
    message: str = ""


class JEvent(msgspec.Struct):
    timeUnixNano: int | str = 0
    name: str = ""


class JSpan(msgspec.Struct):
    traceId: str
    spanId: str
    name: str = ""
    parentSpanId: str = ""
    kind: int | str = 0
    startTimeUnixNano: int | str = 0
    endTimeUnixNano: int | str = 0
    attributes: list[JKeyValue] = []
    events: list[JEvent] = []
    status: JStatus | None = None


class JScopeSpans(msgspec.Struct):
    spans: list[JSpan] = []


class JResource(msgspec.Struct):
    attributes: list[JKeyValue] = []


class JResourceSpans(msgspec.Struct):
    resource: JResource | None = None
    scopeSpans: list[JScopeSpans] = []


class JRequest(msgspec.Struct):
    resourceSpans: list[JResourceSpans] = []


_json_decoder = msgspec.json.Decoder(JRequest)
_HEX = frozenset("0123456789abcdef")


def _j_value(value: JAnyValue | None) -> str:
    if value is None:
        return ""
    if value.stringValue is not None:
        return value.stringValue
    if value.boolValue is not None:
        return "true" if value.boolValue else "false"
    if value.intValue is not None:
        return str(int(value.intValue))
    if value.doubleValue is not None:
        return repr(float(value.doubleValue))
    if value.arrayValue is not None:
        return msgspec.json.encode([_j_value(v) for v in value.arrayValue.values]).decode()
    if value.kvlistValue is not None:
        pairs = {kv.key: _j_value(kv.value) for kv in value.kvlistValue.values}
        return msgspec.json.encode(pairs).decode()
    if value.bytesValue is not None:
        return value.bytesValue
    return ""


def _j_hex(value: str, field: str, length: int) -> str:
    value = value.lower()
    if len(value) != length or not _HEX.issuperset(value):
        raise BadSpans(
            f"OTLP/JSON span field {field} is not {length} hex digits: {value[:40]!r}",
            "OTLP/JSON ids are hex strings, not base64 (unlike plain proto3 JSON)",
        )
    return value


def _j_kind(kind: int | str) -> str:
    if isinstance(kind, int):
        return _KIND.get(kind, "")
    return _KIND_NAMES.get(kind, "")


def decode_json(body: bytes) -> list[Span]:
    try:
        request = _json_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadSpans(
            f"not an OTLP/JSON ExportTraceServiceRequest: {exc}",
            "send Content-Type application/x-protobuf for OTLP protobuf",
        ) from None
    spans: list[Span] = []
    for rs in request.resourceSpans:
        resource = (
            {kv.key: _j_value(kv.value) for kv in rs.resource.attributes} if rs.resource else {}
        )
        service = resource.get("service.name", "")
        instance = resource.get("service.instance.id", "")
        extra = {k: resource[k] for k in KEPT_RESOURCE if k in resource}
        for ss in rs.scopeSpans:
            for s in ss.spans:
                attrs = dict(extra)
                for kv in s.attributes:
                    attrs[kv.key] = _j_value(kv.value)
                start = int(s.startTimeUnixNano) // 1000
                code = s.status.code if s.status else 0
                if isinstance(code, str):
                    code = _STATUS_NAMES.get(code, 0)
                error = code == STATUS_ERROR
                spans.append(
                    Span(
                        trace_id=_j_hex(s.traceId, "traceId", 32),
                        span_id=_j_hex(s.spanId, "spanId", 16),
                        parent_id=_j_hex(s.parentSpanId, "parentSpanId", 16)
                        if s.parentSpanId
                        else None,
                        name=s.name,
                        kind=_j_kind(s.kind),
                        service=service,
                        instance=instance,
                        start_us=start,
                        duration_us=max(0, int(s.endTimeUnixNano) // 1000 - start),
                        error=error,
                        status=s.status.message if error and s.status else "",
                        attributes=attrs,
                        events=tuple(Event(int(e.timeUnixNano) // 1000, e.name) for e in s.events),
                    )
                )
    return spans


def decode(body: bytes, content_type: str) -> list[Span]:
    """OTLP/HTTP traces by content type (protobuf unless it says JSON)."""
    if content_type.split(";", 1)[0].strip().lower() == JSON:
        return decode_json(body)
    return decode_protobuf(body)


def response(content_type: str) -> tuple[bytes, str]:
    """An empty ExportTraceServiceResponse (full success) in the request's encoding."""
    if content_type.split(";", 1)[0].strip().lower() == JSON:
        return b"{}", JSON
    return ExportTraceServiceResponse().SerializeToString(), PROTOBUF
