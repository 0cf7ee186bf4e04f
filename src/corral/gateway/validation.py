"""Request validation per route: required headers and query parameters, content type, body
size, and a JSON Schema for the body compiled to a msgspec type.

Theory of operation. ``compile_validator(spec)`` runs off the hot path (when a config version
is compiled) and turns a route's ``validate:`` block into a ``RequestValidator``. The body's
JSON Schema is translated once into msgspec types — ``Struct`` classes for objects with
``properties``, ``Annotated[..., Meta(...)]`` for bounds, ``Literal`` for ``enum``/``const`` —
so checking a body is one ``msgspec.json.Decoder.decode`` call in C, and the first failure
comes back with its JSON path (``$.items[0].qty``), reworded for people
(``$.items[0].qty: must be ≥ 1``).

The supported subset (``SUPPORTED``) is what a msgspec type can express: ``type`` (one, or one
plus ``"null"``), ``properties``/``required``/``additionalProperties`` (``false``, or a schema
for objects without ``properties``), ``items``, ``minItems``/``maxItems``,
``minLength``/``maxLength``/``pattern``, ``minimum``/``maximum``/``exclusiveMinimum``/
``exclusiveMaximum`` (numbers, draft 6+)/``multipleOf``, ``enum`` and ``const`` of strings,
integers and null, ``minProperties``/``maxProperties``; annotations (``title``,
``description``, ``default``, ``examples``, ``format``, ``$schema``, ``$id``, ``$comment``)
are accepted and not checked. Anything else (``anyOf``, ``$ref``, ``uniqueItems``…) is refused
when the config is validated — at its path inside the schema, with the list of what is
supported — never silently ignored. Deviation from JSON Schema: ``type: integer`` refuses
``1.0`` (msgspec decodes integers strictly).

Answers: a missing header or query parameter or a body that fails its schema → 400 with the
failing path; a body over ``max_body_bytes`` → 413; a content type not listed → 415. Bodies
are checked for requests that carry one, and for POST, PUT and PATCH (an empty body then
fails: "a JSON body is required").

Pure: no I/O, no clock; compiling is deterministic (fields in schema order, names numbered).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union
from urllib.parse import parse_qsl

import msgspec

__all__ = [
    "BODY_METHODS",
    "SUPPORTED",
    "Failure",
    "RequestValidator",
    "SchemaProblem",
    "compile_schema",
    "compile_validator",
    "explain",
]

HeaderLookup = Callable[[str], "str | None"]
BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
_ANNOTATIONS = frozenset(
    ("title", "description", "default", "examples", "format", "$schema", "$id", "$comment")
)
SUPPORTED = tuple(
    sorted(
        {
            "type",
            "properties",
            "required",
            "additionalProperties",
            "items",
            "minItems",
            "maxItems",
            "minLength",
            "maxLength",
            "pattern",
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "multipleOf",
            "enum",
            "const",
            "minProperties",
            "maxProperties",
        }
        | _ANNOTATIONS
    )
)
_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_names = itertools.count()


class SchemaProblem(ValueError):
    """A schema the validator cannot compile: ``path`` inside the schema, what, and a hint."""

    def __init__(self, path: str, message: str, hint: str = "") -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message
        self.hint = hint


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a request is refused: the status to answer and a message naming the failing part."""

    status: int
    message: str


def _at(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def _meta(**bounds: Any) -> msgspec.Meta | None:
    given = {k: v for k, v in bounds.items() if v is not None}
    return msgspec.Meta(**given) if given else None


def _bounded(kind: Any, meta: msgspec.Meta | None) -> Any:
    return Annotated[kind, meta] if meta is not None else kind


def _number(schema: Mapping[str, Any], path: str, key: str) -> float | int | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaProblem(_at(path, key), f"must be a number, got {value!r}")
    return value


def _count(schema: Mapping[str, Any], path: str, key: str) -> int | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchemaProblem(_at(path, key), f"must be a non-negative integer, got {value!r}")
    return value


def _literal(values: Sequence[Any], path: str, key: str) -> Any:
    for index, value in enumerate(values):
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            raise SchemaProblem(
                _at(_at(path, key), index),
                f"{value!r}: only strings, integers and null can be listed",
                "use type and bounds for other values",
            )
    concrete = tuple(v for v in values if v is not None)
    if not concrete:
        return type(None)
    kind: Any = Literal.__getitem__(concrete)
    return kind | None if None in values else kind


def compile_schema(schema: object, path: str = "") -> Any:
    """The msgspec type that accepts exactly what ``schema`` (the supported subset) accepts.

    Raises ``SchemaProblem`` for anything outside the subset."""
    if schema is True or schema == {}:
        return Any
    if not isinstance(schema, Mapping):
        raise SchemaProblem(path, f"a schema must be an object, got {schema!r}")
    for key in schema:
        if key not in SUPPORTED:
            raise SchemaProblem(
                _at(path, str(key)),
                f"JSON Schema keyword {key!r} is not supported here",
                "supported: " + ", ".join(k for k in SUPPORTED if k not in _ANNOTATIONS),
            )
    if "enum" in schema:
        values = schema["enum"]
        if not isinstance(values, list) or not values:
            raise SchemaProblem(_at(path, "enum"), "must be a non-empty list")
        return _literal(values, path, "enum")
    if "const" in schema:
        return _literal([schema["const"]], path, "const")
    declared = schema.get("type")
    if declared is None:
        declared = "object" if "properties" in schema else None
    if declared is None:
        return Any
    names = [declared] if isinstance(declared, str) else declared
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SchemaProblem(_at(path, "type"), f"{declared!r} is not a type or list of types")
    for name in names:
        if name not in _TYPES:
            raise SchemaProblem(_at(path, "type"), f"{name!r} is not a JSON type", str(_TYPES))
    concrete = [n for n in names if n != "null"]
    if len(concrete) > 1:
        raise SchemaProblem(
            _at(path, "type"),
            f"a union of {concrete} cannot be checked here",
            "give one type, optionally with null",
        )
    kind: Any = type(None) if not concrete else _one(concrete[0], schema, path)
    if "null" in names and concrete:
        kind = Union[kind, None]  # noqa: UP007 - ``kind`` is a runtime value, not a class
    return kind


def _one(name: str, schema: Mapping[str, Any], path: str) -> Any:
    if name == "string":
        pattern = schema.get("pattern")
        if pattern is not None:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as error:
                raise SchemaProblem(_at(path, "pattern"), f"is not a regex: {error}") from None
        meta = _meta(
            min_length=_count(schema, path, "minLength"),
            max_length=_count(schema, path, "maxLength"),
            pattern=pattern,
        )
        return _bounded(str, meta)
    if name in ("integer", "number"):
        meta = _meta(
            ge=_number(schema, path, "minimum"),
            le=_number(schema, path, "maximum"),
            gt=_number(schema, path, "exclusiveMinimum"),
            lt=_number(schema, path, "exclusiveMaximum"),
            multiple_of=_number(schema, path, "multipleOf"),
        )
        return _bounded(int if name == "integer" else float, meta)
    if name == "boolean":
        return bool
    if name == "array":
        items = compile_schema(schema.get("items", True), _at(path, "items"))
        meta = _meta(
            min_length=_count(schema, path, "minItems"),
            max_length=_count(schema, path, "maxItems"),
        )
        return _bounded(list[items], meta)  # type: ignore[valid-type]  # a runtime type
    return _object(schema, path)


def _object(schema: Mapping[str, Any], path: str) -> Any:
    properties = schema.get("properties")
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaProblem(_at(path, "required"), "must be a list of property names")
    meta = _meta(
        min_length=_count(schema, path, "minProperties"),
        max_length=_count(schema, path, "maxProperties"),
    )
    if properties is None and not required:
        if extra is False:
            return _bounded(dict[str, Any], msgspec.Meta(max_length=0))
        values = compile_schema(extra, _at(path, "additionalProperties"))
        return _bounded(dict[str, values], meta)  # type: ignore[valid-type]  # a runtime type
    if meta is not None:
        raise SchemaProblem(
            path, "minProperties/maxProperties with properties cannot be checked here"
        )
    if not isinstance(properties, Mapping | type(None)):
        raise SchemaProblem(_at(path, "properties"), "must be an object of schemas")
    if extra is not True and extra is not False:
        raise SchemaProblem(
            _at(path, "additionalProperties"),
            "a schema for extra properties beside properties cannot be checked here",
            "use true or false",
        )
    required_fields: list[tuple[str, Any, Any]] = []
    optional_fields: list[tuple[str, Any, Any]] = []
    props = dict(properties or {})
    for name in required:
        props.setdefault(name, True)
    for index, (name, sub) in enumerate(props.items()):
        kind = compile_schema(sub, _at(_at(path, "properties"), str(name)))
        if name in required:
            required_fields.append((f"f{index}", kind, msgspec.field(name=str(name))))
        else:
            optional = Union[kind, msgspec.UnsetType]  # type: ignore[valid-type]  # noqa: UP007 - built at run time
            field = msgspec.field(name=str(name), default=msgspec.UNSET)
            optional_fields.append((f"f{index}", optional, field))
    # A Struct lists required fields first; the order of fields in JSON does not matter.
    fields = required_fields + optional_fields
    return msgspec.defstruct(
        f"Body{next(_names)}", fields, forbid_unknown_fields=extra is False, omit_defaults=True
    )


_BOUND = re.compile(r"^Expected `(\w+)`(?: of length)? (>=|<=|>|<) (\S+)$")
_GOT = re.compile(r"^Expected `([^`]+)`, got `([^`]+)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]+)`$")
_REGEX = re.compile(r"^Expected `str` matching regex (.*)$")
_SIGNS = {">=": "≥", "<=": "≤", ">": ">", "<": "<"}


def explain(error: msgspec.MsgspecError) -> str:
    """A msgspec error as ``$.path: what is wrong`` (``$`` is the body's root)."""
    text = str(error)
    if isinstance(error, msgspec.DecodeError) and not isinstance(error, msgspec.ValidationError):
        if "truncated" in text:
            return "$: a JSON body is required"
        return f"$: the body is not valid JSON ({text})"
    message, sep, where = text.rpartition(" - at `")
    if sep:
        path = where.rstrip("`")
    else:
        message, path = text, "$"
    found = _MISSING.match(message)
    if found:
        return f"{path}.{found.group(1)}: is required"
    found = _UNKNOWN.match(message)
    if found:
        return f"{path}.{found.group(1)}: is not allowed"
    found = _BOUND.match(message)
    if found:
        kind, sign, bound = found.groups()
        what = (
            "must have length"
            if kind in ("array", "object", "str") and "length" in message
            else "must be"
        )
        return f"{path}: {what} {_SIGNS[sign]} {bound}"
    found = _REGEX.match(message)
    if found:
        return f"{path}: must match {found.group(1)}"
    found = _GOT.match(message)
    if found:
        return f"{path}: expected {found.group(1)}, got {found.group(2)}"
    if message.startswith("Invalid enum value"):
        return f"{path}: {message[len('Invalid enum value ') :]} is not one of the allowed values"
    return f"{path}: {message[:1].lower()}{message[1:]}"


@dataclass(frozen=True, slots=True)
class RequestValidator:
    """One route's request checks (see the module docstring)."""

    headers: tuple[str, ...] = ()  # lower-case names that must be present
    query: tuple[str, ...] = ()
    content_types: tuple[str, ...] = ()  # lower-case media types; empty: any
    max_body_bytes: int | None = None
    decoder: msgspec.json.Decoder[Any] | None = None

    def check_head(
        self,
        method: str,
        header: HeaderLookup,
        query: str,
        has_body: bool,
        length: int | None,
    ) -> Failure | None:
        """Checks that need only the head; ``length`` is the Content-Length if one was sent."""
        for name in self.headers:
            if header(name) is None:
                return Failure(400, f"header {name}: is required")
        if self.query:
            present = {k for k, _ in parse_qsl(query, keep_blank_values=True)}
            for name in self.query:
                if name not in present:
                    return Failure(400, f"query parameter {name}: is required")
        limit = self.max_body_bytes
        if limit is not None and length is not None and length > limit:
            return Failure(413, f"body: {length} bytes is over this route's {limit}")
        if self.content_types and (has_body or method in BODY_METHODS):
            sent = (header("content-type") or "").partition(";")[0].strip().lower()
            if sent not in self.content_types:
                return Failure(
                    415,
                    f"content-type: {sent or 'none'} is not one of "
                    + ", ".join(self.content_types),
                )
        return None

    def wants_body(self, method: str, has_body: bool) -> bool:
        """Whether the body must be buffered and checked before the request goes upstream."""
        return self.decoder is not None and (has_body or method in BODY_METHODS)

    def check_body(self, body: bytes) -> Failure | None:
        decoder = self.decoder
        if decoder is None:
            return None
        limit = self.max_body_bytes
        if limit is not None and len(body) > limit:
            return Failure(413, f"body: {len(body)} bytes is over this route's {limit}")
        try:
            decoder.decode(body)
        except msgspec.MsgspecError as error:
            return Failure(400, explain(error))
        return None


def compile_validator(
    *,
    body: Mapping[str, Any] | None = None,
    headers: Sequence[str] = (),
    query: Sequence[str] = (),
    content_types: Sequence[str] = (),
    max_body_bytes: int | None = None,
) -> RequestValidator:
    """Build a route's validator; raises ``SchemaProblem`` for a body schema it cannot check."""
    decoder = None
    if body is not None:
        kind = compile_schema(body)
        try:
            decoder = msgspec.json.Decoder(kind)
        except TypeError as error:  # a combination msgspec refuses (e.g. two unions)
            raise SchemaProblem("", f"cannot be checked here: {error}") from None
    return RequestValidator(
        headers=tuple(h.lower() for h in headers),
        query=tuple(query),
        content_types=tuple(c.lower() for c in content_types),
        max_body_bytes=max_body_bytes,
        decoder=decoder,
    )
