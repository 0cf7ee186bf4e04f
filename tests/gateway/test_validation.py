"""Request validation's pure core: JSON Schema compiled to msgspec, head checks, and the
config that refuses schemas it cannot check."""

from __future__ import annotations

from typing import Any

import pytest

from corral.errors import ManifestError
from corral.gateway.config import validate_gateway_data
from corral.gateway.framing import BodyFramer, dechunk
from corral.gateway.validation import SchemaProblem, compile_validator

ORDER: dict[str, Any] = {
    "type": "object",
    "required": ["items"],
    "properties": {
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["qty"],
                "additionalProperties": False,
                "properties": {
                    "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                    "sku": {"type": "string", "pattern": "^[A-Z]+$"},
                },
            },
        },
        "note": {"type": ["string", "null"], "maxLength": 3},
        "speed": {"enum": ["slow", "fast"]},
        "sku-list": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"items":[{"qty":0}]}', "$.items[0].qty: must be ≥ 1"),
        (b'{"items":[{"qty":100}]}', "$.items[0].qty: must be ≤ 99"),
        (b'{"items":[{"qty":"2"}]}', "$.items[0].qty: expected int, got str"),
        (b'{"items":[{"qty":1,"sku":"x"}]}', "$.items[0].sku: must match '^[A-Z]+$'"),
        (b'{"items":[]}', "$.items: must have length ≥ 1"),
        (b"{}", "$.items: is required"),
        (b'{"items":[{"qty":1,"z":1}]}', "$.items[0].z: is not allowed"),
        (b'{"items":[{"qty":1}],"note":"abcd"}', "$.note: must have length ≤ 3"),
        (b'{"items":[{"qty":1}],"speed":"warp"}', "$.speed: 'warp' is not one of the allowed"),
        (b'{"items":[{"qty":1}],"sku-list":{"a":"b"}}', "$.sku-list[...]: expected int, got str"),
        (b"", "$: a JSON body is required"),
        (b"{oops", "$: the body is not valid JSON"),
    ],
)
def test_a_body_that_breaks_the_schema_is_refused_at_the_failing_path(
    body: bytes, message: str
) -> None:
    failure = compile_validator(body=ORDER).check_body(body)
    assert failure is not None and failure.status == 400
    assert failure.message.startswith(message), failure.message


def test_a_body_that_fits_the_schema_passes_extra_fields_allowed_unless_forbidden() -> None:
    validator = compile_validator(body=ORDER)
    good = b'{"items":[{"qty":2,"sku":"AB"}],"note":null,"speed":"fast","other":1}'
    assert validator.check_body(good) is None


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"anyOf": [{"type": "string"}]}, "anyOf"),
        ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, "properties.a.$ref"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": ["string", "integer"]}, "type"),
        ({"type": "strnig"}, "type"),
    ],
)
def test_a_schema_outside_the_supported_subset_is_refused_not_ignored(
    schema: dict[str, Any], where: str
) -> None:
    with pytest.raises(SchemaProblem) as caught:
        compile_validator(body=schema)
    assert caught.value.path == where


def test_the_gateway_config_reports_an_unsupported_schema_at_the_route() -> None:
    data = {
        "routes": [
            {
                "name": "orders",
                "upstreams": ["127.0.0.1:9"],
                "validation": {"body": {"type": "object", "oneOf": []}},
            }
        ]
    }
    with pytest.raises(ManifestError) as caught:
        validate_gateway_data(data)
    problem = caught.value.problems[0]
    assert problem.path == "routes[0].validation.body"
    assert "oneOf" in problem.message and "supported" in problem.hint


def _lookup(headers: dict[str, str]) -> Any:
    return lambda name: headers.get(name)


def test_head_checks_name_the_missing_header_query_parameter_or_content_type() -> None:
    v = compile_validator(
        headers=["X-Api-Key"], query=["page"], content_types=["application/json"], max_body_bytes=10
    )
    ok = {"x-api-key": "k", "content-type": "application/json; charset=utf-8"}
    assert v.check_head("POST", _lookup(ok), "page=1", True, 5) is None
    failure = v.check_head("GET", _lookup({}), "page=1", False, None)
    assert failure is not None and (failure.status, failure.message) == (
        400,
        "header x-api-key: is required",
    )
    failure = v.check_head("GET", _lookup(ok), "size=1", False, None)
    assert failure is not None and failure.message == "query parameter page: is required"
    failure = v.check_head("POST", _lookup({**ok, "content-type": "text/plain"}), "page=", True, 5)
    assert failure is not None and failure.status == 415
    failure = v.check_head("POST", _lookup(ok), "page=1", True, 11)
    assert failure is not None and failure.status == 413


def test_dechunk_returns_the_payload_the_framer_accepted() -> None:
    raw = b"4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\nTrailer: x\r\n\r\n"
    framer = BodyFramer(chunked=True)
    assert framer.feed(raw) == (len(raw), True)
    assert dechunk(raw) == b"abcdefg"
