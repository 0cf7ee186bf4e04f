"""Spans as Corral keeps them, whatever protocol brought them in.

A `Span` is the common shape the Zipkin v2 and OTLP decoders produce and the store keeps: ids
are lowercase hex, times are integer microseconds since the epoch, `kind` uses Zipkin's words
(``SERVER``, ``CLIENT``, ``PRODUCER``, ``CONSUMER``; ``""`` for internal spans), and
`attributes` holds every tag/attribute as a string. `service` and `instance` come from the
resource (``service.name``, ``service.instance.id``) or the Zipkin local endpoint.
"""

from __future__ import annotations

import msgspec

KINDS = ("", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
KIND_CODE = {kind: code for code, kind in enumerate(KINDS)}
CALLEE_KINDS = frozenset({"SERVER", "CONSUMER"})
CALLER_KINDS = frozenset({"CLIENT", "PRODUCER"})


class Event(msgspec.Struct, array_like=True, frozen=True):
    """A timestamped annotation (Zipkin) or span event (OTLP)."""

    ts_us: int
    name: str


class Span(msgspec.Struct, frozen=True, gc=False):
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    service: str
    instance: str
    start_us: int
    duration_us: int
    error: bool = False
    status: str = ""  # the error message, if the span says one
    attributes: dict[str, str] = {}
    events: tuple[Event, ...] = ()
    remote_service: str = ""  # Zipkin remoteEndpoint.serviceName
    peer: str = ""  # the remote address (host:port) the span talked to, if known
    shared: bool = False  # Zipkin: a server span sharing its id with the client span

    @property
    def caller_id(self) -> str | None:
        """The span that called this one: the parent, or for a shared server span the client
        span of the same id (Zipkin v1-style RPC spans, as py_zipkin sends them)."""
        return self.span_id if self.shared else self.parent_id


class Facts(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What normalisation derives from one span: the rollup dimensions it feeds."""

    endpoint: str  # the operation as a route template: "GET /orders/{id}"
    peer: str  # the remote side named for the dependency map ("" if none)
    fingerprint: str  # the SQL statement with literals replaced by ? ("" if not a DB call)
