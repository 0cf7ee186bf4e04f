"""Lean spans for Corral's own instrumentations (loaded by ``_corral_otel``).

Why: the SDK's ``Tracer.start_span`` + ``Span.end`` cost ≈ 30 µs a span here — a sampler call,
a lock and a cleaning pass per attribute, span-limit objects, a ``getpid`` — while the example
shop makes 7 spans an order and the issue allows +0.5 ms. A ``LeanSpan`` is a slotted object
with a plain attribute dict, set in the context like any API span (so spans the app makes itself
with the OpenTelemetry API nest under ours, and ours under theirs), and handed at its end to the
same ``BatchSpanProcessor`` the SDK's spans go to; the exporter (``_corral_otlp``) reads both
alike. Sampling is the SDK default's, parent-based always-on: a span follows its parent's
sampled flag, a root is sampled. When the app configured another sampler (``OTEL_TRACES_SAMPLER``)
``_corral_otel`` uses the SDK's tracer instead, so that setting keeps its meaning.
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
    """What our instrumentations call: the ``start_span`` of the SDK's tracer, reduced."""

    def __init__(self, trace: Any, resource: Any, scope: Any, processor: Any) -> None:
        self._start = _starter(trace, resource, scope, processor)

    def start_span(
        self, name: str, context: Any = None, kind: Any = None, attributes: Any = None
    ) -> Any:
        return self._start(name, kind, attributes if attributes is not None else {}, context)


def _starter(trace: Any, resource: Any, scope: Any, processor: Any) -> Any:
    """``start(name, kind, attributes, context=None) -> LeanSpan`` for one scope."""
    api_span = trace.Span
    span_context = trace.SpanContext
    get_current_span = trace.get_current_span
    sampled_flags = trace.TraceFlags(trace.TraceFlags.SAMPLED)
    unset = trace.Status(trace.StatusCode.UNSET)
    non_recording = trace.NonRecordingSpan
    getrandbits = _ids.getrandbits
    time_ns = time.time_ns
    on_end = processor.on_end

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

    def start(name: str, kind: Any, attributes: dict[str, Any], context: Any = None) -> Any:
        parent = get_current_span(context).get_span_context()
        if parent.is_valid:
            if not parent.trace_flags.sampled:
                return non_recording(
                    span_context(parent.trace_id, getrandbits(64) or 1, False, parent.trace_flags)
                )
            trace_id = parent.trace_id
            trace_state = parent.trace_state
        else:
            parent = None
            trace_id = getrandbits(128) or 1
            trace_state = None
        span = LeanSpan()
        span.context = span_context(
            trace_id, getrandbits(64) or 1, False, sampled_flags, trace_state
        )
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
