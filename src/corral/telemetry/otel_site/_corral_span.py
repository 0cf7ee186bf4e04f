"""Lean spans for Corral's own instrumentations (loaded by ``_corral_otel``).

Why: the SDK's ``Tracer.start_span`` + ``Span.end`` cost ≈ 30 µs a span here — a sampler call,
a lock and a cleaning pass per attribute, span-limit objects, a ``getpid`` — while the example
shop makes 9 spans an order and the issue allows +0.5 ms. A ``LeanSpan`` is a slotted object
with a plain attribute dict, set in the context like any API span (so spans the app makes itself
with the OpenTelemetry API nest under ours, and ours under theirs), and handed at its end to the
same batch processor (``_corral_batch``) the SDK's spans go to; the exporter (``_corral_otlp``)
reads both alike. Sampling is the SDK default's, parent-based always-on: a span follows its parent's
sampled flag, a root is sampled. When the app configured another sampler (``OTEL_TRACES_SAMPLER``)
``_corral_otel`` uses the SDK's tracer instead, so that setting keeps its meaning.

The span path skips the SDK's generic work our own instrumentations have no use for: span
contexts are built as the tuples they are (``SpanContext.__new__`` re-checks ids we just drew),
a parent arrives as a span context (no context object made and read back for it), and ``end``
appends to ``_corral_batch``'s queue directly (no processor fan-out, no ``getpid``).
"""

from __future__ import annotations

import os
import random
import time
import traceback
from typing import Any

_ids = random.Random()  # our own: an app that seeds the global random must not repeat our ids
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.seed)  # a forked worker must not repeat its parent's


class Event:
    __slots__ = ("attributes", "name", "timestamp")

    def __init__(self, name: str, attributes: dict[str, Any] | None, timestamp: int) -> None:
        self.name = name
        self.attributes = attributes or {}
        self.timestamp = timestamp


class Tracer:
    """What our instrumentations call. ``start(name, kind, attributes, parent)``: ``parent`` a
    ``SpanContext`` (an invalid one: a root span) or None for the current span's."""

    def __init__(
        self, trace: Any, resource: Any, scope: Any, processor: Any, current: Any = None
    ) -> None:
        """``current``: returns the current context (default: the API's ``get_current``)."""
        self.start = _starter(trace, resource, scope, processor, current)

    def start_span(
        self, name: str, context: Any = None, kind: Any = None, attributes: Any = None
    ) -> Any:
        parent = None if context is None else self._parent(context)
        return self.start(name, kind, attributes if attributes is not None else {}, parent)

    @staticmethod
    def _parent(context: Any) -> Any:
        from opentelemetry import trace

        return trace.get_current_span(context).get_span_context()


def _starter(trace: Any, resource: Any, scope: Any, processor: Any, current: Any) -> Any:
    """``start(name, kind, attributes, parent) -> LeanSpan`` for one scope."""
    from opentelemetry import context as context_api
    from opentelemetry.trace import propagation

    api_span = trace.Span
    span_context = trace.SpanContext
    new_context = tuple.__new__
    current = current or context_api.get_current
    span_key = propagation._SPAN_KEY
    invalid = trace.INVALID_SPAN_CONTEXT
    sampled_flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    default_state = trace.DEFAULT_TRACE_STATE
    unset = trace.Status(trace.StatusCode.UNSET)
    non_recording = trace.NonRecordingSpan
    getrandbits = _ids.getrandbits
    time_ns = time.time_ns
    on_end = getattr(processor, "emit", None) or processor.on_end

    class LeanSpan(api_span):  # type: ignore[misc,valid-type]  # the API's abstract Span
        __slots__ = (
            "attributes",
            "context",
            "end_time",
            "events",
            "kind",
            "name",
            "parent",
            "start_time",
            "status",
        )
        attributes: dict[str, Any]
        context: Any
        end_time: int | None
        events: list[Event]
        kind: Any
        name: str
        parent: Any
        start_time: int
        status: Any
        dropped_attributes = 0
        dropped_events = 0
        dropped_links = 0
        links: tuple[Any, ...] = ()
        resource = None  # set below: one for every span of the process
        instrumentation_scope = None

        def get_span_context(self) -> Any:
            return self.context

        def is_recording(self) -> bool:
            return self.end_time is None

        def set_attribute(self, key: str, value: Any) -> None:
            if self.end_time is None:
                self.attributes[key] = value

        def set_attributes(self, attributes: Any) -> None:
            if self.end_time is None:
                self.attributes.update(attributes)

        def add_event(self, name: str, attributes: Any = None, timestamp: Any = None) -> None:
            if self.end_time is None:
                self.events.append(Event(name, dict(attributes or {}), timestamp or time_ns()))

        def update_name(self, name: str) -> None:
            if self.end_time is None:
                self.name = name

        def set_status(self, status: Any, description: str | None = None) -> None:
            if self.end_time is None:
                if not isinstance(status, trace.Status):
                    status = trace.Status(status, description)
                self.status = status

        def record_exception(
            self,
            exception: BaseException,
            attributes: Any = None,
            timestamp: Any = None,
            escaped: bool = False,
        ) -> None:
            stack = "".join(
                traceback.format_exception(type(exception), exception, exception.__traceback__)
            )
            details = {
                "exception.type": type(exception).__qualname__,
                "exception.message": str(exception),
                "exception.stacktrace": stack,
                "exception.escaped": str(escaped),
            }
            details.update(attributes or {})
            self.add_event("exception", details, timestamp)

        def end(self, end_time: int | None = None) -> None:
            if self.end_time is None:
                self.end_time = end_time or time_ns()
                on_end(self)

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.end()

    LeanSpan.resource = resource
    LeanSpan.instrumentation_scope = scope

    def start(name: str, kind: Any, attributes: dict[str, Any], parent: Any = None) -> Any:
        if parent is None:
            current_span = current().get(span_key)
            parent = invalid if current_span is None else current_span.get_span_context()
        # A SpanContext is the tuple (trace_id, span_id, is_remote, flags, state, is_valid).
        if parent[5]:
            if not parent[3] & 1:  # not sampled: neither are we, but the ids go on
                ids = (parent[0], getrandbits(64) or 1, False, parent[3], parent[4], True)
                return non_recording(new_context(span_context, ids))
            trace_id = parent[0]
            trace_state = parent[4]
        else:
            parent = None
            trace_id = getrandbits(128) or 1
            trace_state = default_state
        span = LeanSpan()
        ids = (trace_id, getrandbits(64) or 1, False, sampled_flags, trace_state, True)
        span.context = new_context(span_context, ids)
        span.parent = parent
        span.name = name
        span.kind = kind
        span.attributes = attributes
        span.events = []
        span.status = unset
        span.start_time = time_ns()
        span.end_time = None
        return span

    return start
