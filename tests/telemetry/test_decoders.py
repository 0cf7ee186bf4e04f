"""Zipkin v2 JSON and OTLP (protobuf and JSON) decode to the same spans."""

from __future__ import annotations

import json

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus

from corral.telemetry import otlp, zipkin
from corral.telemetry.model import Event, Span
from corral.telemetry.zipkin import BadSpans

TRACE = "5b8efff798038103d269b633813fc60c"
SPAN = "eee19b7ec3c1b174"
PARENT = "eee19b7ec3c1b173"


def expected(**over: object) -> Span:
    base = Span(
        trace_id=TRACE,
        span_id=SPAN,
        parent_id=PARENT,
        name="GET /orders/{id}",
        kind="SERVER",
        service="orders",
        instance="orders-1",
        start_us=1_700_000_000_000_000,
        duration_us=1500,
        error=True,
        status="db down",
        attributes={"http.request.method": "GET", "http.status_code": "500", "flag": "true"},
        events=(Event(1_700_000_000_000_100, "retry"),),
    )
    from msgspec.structs import replace

    return replace(base, **over)


def test_zipkin_v2_json_decodes_and_encodes_back() -> None:
    body = json.dumps(
        [
            {
                "traceId": TRACE.upper(),
                "id": SPAN,
                "parentId": PARENT,
                "name": "GET /orders/{id}",
                "kind": "SERVER",
                "timestamp": 1_700_000_000_000_000,
                "duration": 1500,
                "localEndpoint": {"serviceName": "Orders", "ipv4": "127.0.0.1", "port": 9001},
                "remoteEndpoint": {"serviceName": "gateway", "ipv4": "127.0.0.1", "port": 5000},
                "annotations": [{"timestamp": 1_700_000_000_000_100, "value": "retry"}],
                "tags": {"service.instance.id": "orders-1", "error": "db down"},
                "debug": True,
            }
        ]
    ).encode()
    [span] = zipkin.decode(body)
    assert (span.trace_id, span.service, span.instance) == (TRACE, "orders", "orders-1")
    assert span.error and span.status == "db down"
    assert (span.remote_service, span.peer) == ("gateway", "127.0.0.1:5000")
    [again] = zipkin.decode(zipkin.encode([span]))
    assert again == span


def test_zipkin_instance_falls_back_to_the_local_address() -> None:
    body = (
        b'[{"traceId":"%s","id":"%s","localEndpoint":{"serviceName":"a","ipv4":"10.0.0.2","port":80}}]'
        % (
            TRACE.encode(),
            SPAN.encode(),
        )
    )
    assert zipkin.decode(body)[0].instance == "10.0.0.2:80"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"traceId": "x"}',
        b'[{"traceId": "xyz", "id": "eee19b7ec3c1b174"}]',
        b'[{"traceId": "5b8efff798038103", "id": "short"}]',
    ],
)
def test_malformed_zipkin_bodies_are_refused_whole(body: bytes) -> None:
    with pytest.raises(BadSpans):
        zipkin.decode(body)


def _kv(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))  # type: ignore[arg-type]  # oneof kwargs


def test_otlp_protobuf_decodes_ids_kinds_status_and_attribute_types() -> None:
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource={
                    "attributes": [
                        _kv("service.name", string_value="orders"),
                        _kv("service.instance.id", string_value="orders-1"),
                        _kv("telemetry.sdk.name", string_value="dropped"),
                    ]
                },  # type: ignore[arg-type]  # dict for a message field
                scope_spans=[
                    ScopeSpans(
                        spans=[
                            PbSpan(
                                trace_id=bytes.fromhex(TRACE),
                                span_id=bytes.fromhex(SPAN),
                                parent_span_id=bytes.fromhex(PARENT),
                                name="GET /orders/{id}",
                                kind=PbSpan.SPAN_KIND_SERVER,
                                start_time_unix_nano=1_700_000_000_000_000_000,
                                end_time_unix_nano=1_700_000_000_001_500_000,
                                attributes=[
                                    _kv("http.request.method", string_value="GET"),
                                    _kv("http.status_code", int_value=500),
                                    _kv("flag", bool_value=True),
                                ],
                                events=[
                                    PbSpan.Event(
                                        time_unix_nano=1_700_000_000_000_100_000, name="retry"
                                    )
                                ],
                                status=PbStatus(code=PbStatus.STATUS_CODE_ERROR, message="db down"),
                            )
                        ]
                    )
                ],
            )
        ]
    )
    assert otlp.decode(request.SerializeToString(), "application/x-protobuf") == [expected()]
    body, ctype = otlp.response("application/x-protobuf")
    assert ctype == otlp.PROTOBUF
    ExportTraceServiceResponse.FromString(body)


def _otlp_json(kind: object, status: object) -> bytes:
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [
                            {"key": "service.name", "value": {"stringValue": "orders"}},
                            {"key": "service.instance.id", "value": {"stringValue": "orders-1"}},
                        ]
                    },
                    "scopeSpans": [
                        {
                            "scope": {"name": "x"},
                            "spans": [
                                {
                                    "traceId": TRACE,
                                    "spanId": SPAN,
                                    "parentSpanId": PARENT,
                                    "name": "GET /orders/{id}",
                                    "kind": kind,
                                    "startTimeUnixNano": "1700000000000000000",
                                    "endTimeUnixNano": "1700000000001500000",
                                    "attributes": [
                                        {
                                            "key": "http.request.method",
                                            "value": {"stringValue": "GET"},
                                        },
                                        {"key": "http.status_code", "value": {"intValue": "500"}},
                                        {"key": "flag", "value": {"boolValue": True}},
                                    ],
                                    "events": [
                                        {"timeUnixNano": "1700000000000100000", "name": "retry"}
                                    ],
                                    "status": {"code": status, "message": "db down"},
                                    "unknownField": 1,
                                }
                            ],
                        }
                    ],
                }
            ]
        }
    ).encode()


def test_otlp_json_ids_are_hex_enums_integers_and_int64_strings() -> None:
    assert otlp.decode(_otlp_json(2, 2), "application/json") == [expected()]
    assert otlp.decode(_otlp_json("SPAN_KIND_SERVER", "STATUS_CODE_ERROR"), "application/json") == [
        expected()
    ]
    assert otlp.response("application/json") == (b"{}", "application/json")


def test_otlp_json_with_base64_ids_is_refused_with_a_hint() -> None:
    body = _otlp_json(2, 2).replace(TRACE.encode(), b"W47/95gDgQPSabYzgT/GDA==")
    with pytest.raises(BadSpans, match="hex"):
        otlp.decode(body, "application/json")


@pytest.mark.parametrize("kind", ["server", "Server", "SERVER"])
def test_zipkin_kinds_in_any_case_and_uppercase_ids_are_accepted(kind: str) -> None:
    body = json.dumps(
        [{"traceId": TRACE[:16].upper(), "id": SPAN.upper(), "parentId": PARENT, "kind": kind}]
    ).encode()
    [span] = zipkin.decode(body)
    assert (span.trace_id, span.span_id, span.parent_id) == (TRACE[:16], SPAN, PARENT)
    assert span.kind == "SERVER"


def test_unknown_zipkin_kinds_and_empty_parent_ids_mean_internal_root_spans() -> None:
    body = json.dumps([{"traceId": TRACE, "id": SPAN, "parentId": "", "kind": "ODD"}]).encode()
    [span] = zipkin.decode(body)
    assert (span.kind, span.parent_id) == ("", None)


@pytest.mark.parametrize("field", ["traceId", "id", "parentId"])
def test_a_bad_id_in_any_id_field_is_named_in_the_error(field: str) -> None:
    good = {"traceId": TRACE, "id": SPAN, "parentId": PARENT}
    body = json.dumps([{**good, field: "not-hex-at-all!!"}]).encode()
    with pytest.raises(BadSpans, match=field):
        zipkin.decode(body)
