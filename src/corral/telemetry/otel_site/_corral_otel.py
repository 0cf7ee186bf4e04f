"""The auto-instrumentation itself, loaded by ``sitecustomize`` inside a Python instance.

``start()`` configures the OpenTelemetry SDK from the ``OTEL_*`` settings the platform gave the
instance (resource attributes, the collector's OTLP/HTTP endpoint, the ingest token), exports
spans in batches over OTLP/HTTP protobuf, and instruments what the standard library offers:
urllib (client spans, ``traceparent`` sent), urllib3 and requests when the app uses them, sqlite3
(``cursor().execute`` as upstream does, and ``Connection.execute``/``executemany``/
``executescript``, which the app calls far more often and upstream misses), and
``http.server.BaseHTTPRequestHandler``, for which there is no upstream instrumentation: a SERVER
span per request that continues the caller's ``traceparent``, with ``http.request.method``,
``url.path`` and ``http.response.status_code``. Requests to excluded URLs (the platform puts the
instance's health-probe paths there) are not traced, and nothing they call is either.

Every OpenTelemetry module is imported with ``importlib`` so that this file type-checks
without the packages; at run time they come from the site directory behind this one.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

_STATE: dict[str, Any] = {}


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


def _instrumentors() -> list[tuple[str, str, str, str]]:
    """(name, library, module, class) of the upstream instrumentations shipped in the site.
    Each is applied when the app imports the library: importing every library ourselves would
    cost each process their import time, and force our copies on apps that bring their own."""
    return [
        ("urllib", "urllib.request", "opentelemetry.instrumentation.urllib", "URLLibInstrumentor"),
        ("sqlite3", "sqlite3", "opentelemetry.instrumentation.sqlite3", "SQLite3Instrumentor"),
        ("urllib3", "urllib3", "opentelemetry.instrumentation.urllib3", "URLLib3Instrumentor"),
        ("requests", "requests", "opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
    ]


def check() -> None:
    """Import everything ``start`` needs, start nothing (raises what a start would raise)."""
    for name in (
        "opentelemetry.sdk.trace",
        "opentelemetry.sdk.trace.export",
        "opentelemetry.sdk.resources",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry.propagate",
        "opentelemetry.util.http",
        "opentelemetry.instrumentation.dbapi",
        "wrapt",
    ):
        _module(name)
    for _, _, module, cls in _instrumentors():
        getattr(_module(module), cls)


def start() -> None:
    if _STATE or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    # Every import before any side effect: a missing package leaves the app untouched.
    register = _module("wrapt").register_post_import_hook
    trace = _module("opentelemetry.trace")
    sdk_trace = _module("opentelemetry.sdk.trace")
    export = _module("opentelemetry.sdk.trace.export")
    resources = _module("opentelemetry.sdk.resources")

    provider = sdk_trace.TracerProvider(resource=resources.Resource.create())
    provider.add_span_processor(export.BatchSpanProcessor(_lazy_exporter(export.SpanExporter)))
    trace.set_tracer_provider(provider)
    _STATE["provider"] = provider

    disabled = {
        part.strip()
        for part in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
        if part.strip()
    }
    hooks: list[tuple[str, Any]] = []
    for name, library, module, cls in _instrumentors():
        if name not in disabled:
            hooks.append((library, _instrumenter(name, module, cls, provider)))
    if "sqlite3" not in disabled:
        hooks.append(("sqlite3", _guarded("sqlite3", _trace_sqlite_connection_shortcuts)))
    if "http.server" not in disabled:
        tracer = trace.get_tracer("corral.http.server", tracer_provider=provider)
        hooks.append(
            ("http.server", _guarded("http.server", lambda: _instrument_http_server(tracer)))
        )
    for library, hook in hooks:
        register(lambda _, run=hook: run(), library)


def _instrumenter(name: str, module: str, cls: str, provider: Any) -> Any:
    return _guarded(
        name, lambda: getattr(_module(module), cls)().instrument(tracer_provider=provider)
    )


def _guarded(name: str, action: Any) -> Any:
    def run() -> None:
        try:
            action()
        except Exception as error:  # one instrumentation failing must not cost the app
            _warn(f"{name} not instrumented: {type(error).__name__}: {error}")

    return run


def _lazy_exporter(base: type) -> Any:
    """The OTLP/HTTP exporter, imported on the first export (in the batch processor's thread):
    it pulls in requests and protobuf, a quarter second that a process which never makes a
    span should not pay at start."""

    class LazyOTLPSpanExporter(base):  # type: ignore[misc]  # base: the SDK's SpanExporter
        def __init__(self) -> None:
            self._real: Any = None

        def _exporter(self) -> Any:
            if self._real is None:
                otlp = _module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
                self._real = otlp.OTLPSpanExporter()
            return self._real

        def export(self, spans: Any) -> Any:
            return self._exporter().export(spans)

        def shutdown(self) -> None:
            if self._real is not None:
                self._real.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True if self._real is None else bool(self._real.force_flush(timeout_millis))

    return LazyOTLPSpanExporter()


def _warn(message: str) -> None:
    import sys

    sys.stderr.write(f"corral-otel: {message}\n")


def _trace_sqlite_connection_shortcuts() -> None:
    """``Connection.execute`` runs SQL through a cursor made in C, which upstream's proxy never
    sees: route the shortcuts through the traced ``cursor()``, as sqlite3 itself defines them."""
    dbapi = _module("opentelemetry.instrumentation.dbapi")
    proxy = dbapi.TracedConnectionProxy

    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().execute(*args, **kwargs)

    def executemany(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().executemany(*args, **kwargs)

    def executescript(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self.cursor().executescript(*args, **kwargs)

    for name, method in (
        ("execute", execute),
        ("executemany", executemany),
        ("executescript", executescript),
    ):
        if name not in vars(proxy):
            setattr(proxy, name, method)


def _instrument_http_server(tracer: Any) -> None:
    from http import server

    context = _module("opentelemetry.context")
    propagate = _module("opentelemetry.propagate")
    trace = _module("opentelemetry.trace")
    excluded = _module("opentelemetry.util.http").get_excluded_urls("HTTP_SERVER")
    suppress_key = context._SUPPRESS_INSTRUMENTATION_KEY
    server_kind = trace.SpanKind.SERVER
    error_status = trace.Status(trace.StatusCode.ERROR)

    handler = server.BaseHTTPRequestHandler
    if getattr(handler, "_corral_instrumented", False):
        return
    original_parse = handler.parse_request
    original_handle_one = handler.handle_one_request
    original_send_only = handler.send_response_only

    def parse_request(self: Any) -> bool:
        ok: bool = original_parse(self)
        if not ok:
            return ok
        path, _, query = self.path.partition("?")
        host = self.headers.get("Host") or "localhost"
        if excluded.url_disabled(f"http://{host}{path}"):
            self._corral_otel = (None, context.attach(context.set_value(suppress_key, True)))
            return ok
        if context.get_value(suppress_key):
            return ok
        attributes: dict[str, Any] = {
            "http.request.method": self.command,
            "url.path": path,
            "url.scheme": "http",
            "server.port": self.server.server_address[1],
            "client.address": self.client_address[0],
            "network.protocol.version": self.request_version.partition("/")[2],
        }
        if query:
            attributes["url.query"] = query
        agent = self.headers.get("User-Agent")
        if agent:
            attributes["user_agent.original"] = agent
        parent = propagate.extract(self.headers)
        span = tracer.start_span(
            self.command, context=parent, kind=server_kind, attributes=attributes
        )
        token = context.attach(trace.set_span_in_context(span, parent))
        self._corral_otel = (span, token)
        return ok

    def send_response_only(self: Any, code: int, message: str | None = None) -> None:
        self._corral_status = code
        original_send_only(self, code, message)

    def handle_one_request(self: Any) -> None:
        self._corral_otel = None
        self._corral_status = None
        try:
            original_handle_one(self)
        except BaseException as error:
            span = (self._corral_otel or (None, None))[0]
            if span is not None:
                span.record_exception(error)
                span.set_status(error_status)
            raise
        finally:
            state = self._corral_otel
            self._corral_otel = None
            if state is not None:
                span, token = state
                if span is not None:
                    code = self._corral_status
                    if code is not None:
                        span.set_attribute("http.response.status_code", code)
                        if code >= 500:
                            span.set_status(error_status)
                    span.end()
                context.detach(token)

    # Patching the class is the point: every handler subclass the app defines inherits these.
    handler.parse_request = parse_request  # type: ignore[method-assign]  # see above
    handler.handle_one_request = handle_one_request  # type: ignore[method-assign]  # see above
    handler.send_response_only = send_response_only  # type: ignore[method-assign]  # see above
    handler._corral_instrumented = True  # type: ignore[attr-defined]  # our own marker
