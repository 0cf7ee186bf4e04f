"""The auto-instrumentation itself, loaded by ``sitecustomize`` inside a Python instance.

``start()`` sets up the OpenTelemetry SDK's ``TracerProvider`` (so an app that uses the
OpenTelemetry API itself joins the same traces) with the resource the platform gave the instance
(``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) and a batch processor (``_corral_batch``)
that exports over OTLP/HTTP protobuf from its own thread (``_corral_otlp``), and instruments what
the standard library offers, each when the app first imports it:

- ``http.server.BaseHTTPRequestHandler``: a SERVER span per request continuing the caller's
  ``traceparent``, with ``http.request.method``, ``url.path``, ``url.query`` (when there is one,
  credential parameters' values redacted) and ``http.response.status_code``; requests to
  excluded URLs (the platform puts the health-probe paths there) are not traced, and nothing
  they call is either;
- urllib (``AbstractHTTPHandler.do_open``): a CLIENT span per request, ``traceparent`` sent,
  with ``url.full`` (``user:password@`` and credential parameters' values redacted);
- sqlite3 (``connect`` hands out a traced ``Connection`` subclass): a CLIENT span per
  ``execute``/``executemany``/``executescript``, on the connection's shortcuts and its cursors.

Why our own instrumentations rather than upstream's (urllib, dbapi/sqlite3): the issue allows
+0.5 ms a request, and upstream's cost ≈ 0.3 ms of CPU per span on top of the SDK's (semantic-
convention switching, duration histograms, wrapt proxies, attribute copies). Each hook here does
the minimum: one lean span start (``_corral_span``) with a handful of attributes, one ``end``;
``traceparent`` is parsed and written here (a pattern match and a format, not the propagator's
context objects and getters). Why our own import
hook rather than wrapt's: wrapt's post-import hooks import asyncio and importlib.metadata, a
quarter second of every process's start-up. Nothing here ever raises into the app.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

_STATE: dict[str, Any] = {}
_HOOKS: dict[str, list[Callable[[ModuleType], None]]] = {}


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


@contextlib.contextmanager
def _without_psutil() -> Iterator[None]:
    """The SDK's resources module imports psutil, when it can, for a process detector we do
    not use: a tenth of a second of start-up. Hidden while the SDK loads; the app's own
    ``import psutil`` later works as ever."""
    hide = "psutil" not in sys.modules
    if hide:
        sys.modules["psutil"] = None  # type: ignore[assignment]  # None: "cannot be imported"
    try:
        yield
    finally:
        if hide and sys.modules.get("psutil", False) is None:
            del sys.modules["psutil"]


def check() -> None:
    """Import everything ``start`` needs, start nothing (raises what a start would raise)."""
    with _without_psutil():
        _check()


def _check() -> None:
    for name in (
        "opentelemetry.trace",
        "opentelemetry.context",
        "opentelemetry.sdk.trace",
        "opentelemetry.sdk.trace.export",
        "opentelemetry.sdk.resources",
        "opentelemetry.trace.propagation.tracecontext",
        "opentelemetry.sdk.util.instrumentation",
        "_corral_otlp",
        "_corral_span",
        "_corral_batch",
    ):
        _module(name)


def start() -> None:
    if _STATE or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    # Every import before any side effect: a missing package leaves the app untouched.
    with _without_psutil():
        trace = _module("opentelemetry.trace")
        sdk_trace = _module("opentelemetry.sdk.trace")
        export = _module("opentelemetry.sdk.trace.export")
        resources = _module("opentelemetry.sdk.resources")
        otlp = _module("_corral_otlp")
        lean = _module("_corral_span")
        batch = _module("_corral_batch")
        scopes = _module("opentelemetry.sdk.util.instrumentation")
        context = _module("opentelemetry.context")

    resource = _resource(resources)
    provider = sdk_trace.TracerProvider(resource=resource)
    exporter = _exporter(export, otlp)
    suppress_key = context._SUPPRESS_INSTRUMENTATION_KEY
    processor = batch.BatchProcessor(
        exporter, lambda: context.attach(context.set_value(suppress_key, True))
    )
    provider.add_span_processor(processor)
    # atexit runs handlers last-registered first: this one before the provider's shutdown,
    # which joins the processor's thread, so that thread is not left retrying a collector
    # that is gone while the app is trying to exit (SIGTERM → sys.exit).
    atexit.register(exporter.stop)
    trace.set_tracer_provider(provider)
    _STATE["provider"] = provider
    # Another sampler than the SDK's default keeps its meaning: the SDK's tracer then.
    sampler = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    sdk_only = sampler not in ("parentbased_always_on", "always_on", "")
    current = _context_ops(context)[0]

    def tracer(name: str) -> Any:
        """``start(name, kind, attributes, parent)`` for one instrumentation (see
        ``_corral_span.Tracer``)."""
        if sdk_only:
            return _sdk_start(trace, trace.get_tracer(name, tracer_provider=provider))
        scope = scopes.InstrumentationScope(name)
        return lean.Tracer(trace, resource, scope, processor, current).start

    disabled = {
        part.strip()
        for part in os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")
        if part.strip()
    }
    for name, library, instrument in (
        ("http.server", "http.server", _instrument_http_server),
        ("urllib", "urllib.request", _instrument_urllib),
        ("sqlite3", "sqlite3", _instrument_sqlite3),
    ):
        if name not in disabled:
            _when_imported(library, _guarded(name, instrument, tracer(f"corral.{name}")))


def _sdk_start(trace: ModuleType, tracer: Any) -> Any:
    """The lean ``start`` signature over the SDK's tracer (its sampler decides)."""
    non_recording, set_span_in_context = trace.NonRecordingSpan, trace.set_span_in_context

    def start(name: str, kind: Any, attributes: dict[str, Any], parent: Any = None) -> Any:
        context = None if parent is None else set_span_in_context(non_recording(parent))
        return tracer.start_span(name, context=context, kind=kind, attributes=attributes)

    return start


def _resource(resources: ModuleType) -> Any:
    """What ``Resource.create()`` would give, without its detector threads and entry-point
    scan: the SDK's own attributes, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``."""
    attributes: dict[str, Any] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": getattr(_module("opentelemetry.sdk.version"), "__version__", ""),
    }
    from urllib.parse import unquote

    for pair in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    service = os.environ.get("OTEL_SERVICE_NAME")
    if service:
        attributes["service.name"] = service
    program = os.path.basename(sys.executable)  # noqa: PTH119 -- pathlib: start-up time
    attributes.setdefault("service.name", f"unknown_service:{program}")
    return resources.Resource(attributes)


def _exporter(export: ModuleType, otlp: ModuleType) -> Any:
    class Exporter(export.SpanExporter):  # type: ignore[misc,name-defined]  # the SDK's base
        def __init__(self) -> None:
            self._out = otlp.Exporter()

        def export(self, spans: Any) -> Any:
            if self._out.send(otlp.encode(spans)):
                return export.SpanExportResult.SUCCESS
            return export.SpanExportResult.FAILURE

        def shutdown(self) -> None:
            self._out.close()

        def stop(self) -> None:
            self._out.stop()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return Exporter()


# -- running a hook when the app imports a module ------------------------------------------


class _Loader:
    """Wraps the real loader: the module runs as it would, then our hooks see it."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self._loader  # the app sees the module as if we were not there
        self._loader.exec_module(module)
        _fire(self._name, module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class _Finder:
    """First on ``sys.meta_path``; steps in only for the modules we watch, once each."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name not in _HOOKS:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _Loader(spec.loader, name)
            return spec
        return None


def _fire(name: str, module: ModuleType) -> None:
    for hook in _HOOKS.pop(name, []):
        hook(module)


def _when_imported(name: str, hook: Callable[[ModuleType], None]) -> None:
    if name in sys.modules:
        hook(sys.modules[name])
        return
    _HOOKS.setdefault(name, []).append(hook)
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def _guarded(name: str, action: Callable[[ModuleType, Any], None], start: Any) -> Any:
    def run(module: ModuleType) -> None:
        try:
            action(module, start)
        except Exception as error:  # one instrumentation failing must not cost the app
            _warn(f"{name} not instrumented: {type(error).__name__}: {error}")

    return run


def _warn(message: str) -> None:
    sys.stderr.write(f"corral-otel: {message}\n")


# -- the instrumentations ------------------------------------------------------------------


def _excluded_urls() -> Any:
    """``OTEL_PYTHON_[HTTP_SERVER_]EXCLUDED_URLS``: comma-separated regexes searched in the URL
    (upstream's convention); None when there are none."""
    raw = os.environ.get("OTEL_PYTHON_HTTP_SERVER_EXCLUDED_URLS") or os.environ.get(
        "OTEL_PYTHON_EXCLUDED_URLS", ""
    )
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    return re.compile("|".join(parts)) if parts else None


def _excluded(pattern: Any) -> Any:
    """``excluded((host, path)) -> bool`` for the pattern (None: nothing is excluded), the
    answers kept: a service is asked for the same few paths over and over (a dict lookup instead
    of building the URL and searching it)."""
    if pattern is None:
        return None
    answers: dict[tuple[str | None, str], bool] = {}
    search = pattern.search

    def excluded(request: tuple[str | None, str]) -> bool:
        answer = answers.get(request)
        if answer is None:
            host, path = request
            answer = search(f"http://{host or 'localhost'}{path}") is not None
            if len(answers) < 4096:  # bounded: paths with ids in them must not grow this forever
                answers[request] = answer
        return answer

    return excluded


# Query parameters whose values are credentials (upstream's redact_url list, plus common ones):
# spans are shown on the dashboard, so secrets in URLs must not reach them.
_SENSITIVE_PARAM = re.compile(
    r"(?i)(^|&)(AWSAccessKeyId|Signature|sig|X-Goog-Signature|access_token|token|api_key|apikey|"
    r"password|secret)=[^&]*"
)
_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@?#]*@")


def redact_query(query: str) -> str:
    if "=" not in query:
        return query
    return _SENSITIVE_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}=REDACTED", query)


def redact_url(url: str) -> str:
    """``url`` without ``user:password@`` and with credential parameters' values redacted."""
    if "@" in url:
        url = _USERINFO.sub(r"\1REDACTED:REDACTED@", url, count=1)
    base, sep, query = url.partition("?")
    if not sep:
        return url
    fragment = ""
    if "#" in query:
        query, fragment = query.split("#", 1)
        fragment = "#" + fragment
    return f"{base}?{redact_query(query)}{fragment}"


# W3C trace-context ``traceparent``, as upstream's propagator matches it (lower-case hex; a
# later version may append fields, version 00 may not).
_TRACEPARENT = re.compile(
    r"[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?[ \t]*"
)
_MAX_TRACESTATE = 512  # upstream's limit on the combined header, beyond which it is ignored
_FLAGS: dict[int, Any] = {}  # the TraceFlags objects for sampled and not, made once


def parse_traceparent(value: str) -> tuple[int, int, int] | None:
    """``(trace_id, span_id, flags)`` from a ``traceparent`` header; None when it is not one
    upstream's propagator would accept (all-zero ids, version ff, extra fields on 00)."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, extra = match.groups()
    if version == "ff" or (version == "00" and extra):
        return None
    parsed = (int(trace_id, 16), int(span_id, 16), int(flags, 16))
    return parsed if parsed[0] and parsed[1] else None


def format_traceparent(span_context: Any) -> str:
    """The ``traceparent`` a child of ``span_context`` is sent (version 00)."""
    ids = (span_context[0], span_context[1], span_context[3])
    return "00-%032x-%016x-%02x" % ids  # noqa: UP031 -- 5× faster than format() for TraceFlags


def _context_ops(context: ModuleType) -> tuple[Callable[[], Any], Any, Any]:
    """``(current, attach, detach)``: the current context, and making one current and undoing
    that — straight on the runtime context's ``ContextVar`` when it is the API's default one
    (three Python calls fewer each time), through the API otherwise."""
    var = getattr(getattr(context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    if not isinstance(var, contextvars.ContextVar):
        return context.get_current, context.attach, context.detach
    reset = var.reset

    def detach(token: Any) -> None:
        try:
            reset(token)
        except Exception:  # the API logs and goes on, so do we: never the app's problem
            pass

    return var.get, var.set, detach


def _read_headers(headers: Any) -> tuple[str | None, str | None, list[str]]:
    """``Host``, ``traceparent`` and the ``tracestate`` values, in one pass over the raw header
    list of ``http.client.HTTPMessage`` (its ``get`` lower-cases every name and re-checks the
    value for each header asked for); through ``get`` for any other kind of message."""
    raw = getattr(headers, "_headers", None)
    if not isinstance(raw, list):
        return headers.get("Host"), headers.get("traceparent"), headers.get_all("tracestate") or []
    host = traceparent = None
    states: list[str] = []
    for name, value in raw:
        size = len(name)
        if size == 4 and host is None and name.lower() == "host":
            host = value
        elif size == 11 and traceparent is None and name.lower() == "traceparent":
            traceparent = value
        elif size == 10 and name.lower() == "tracestate":
            states.append(value)
    return host, traceparent, states


def _remote_parent(trace: ModuleType, traceparent: str | None, states: list[str]) -> Any:
    """The caller's span context from its headers, or the invalid one (a root)."""
    try:
        parsed = parse_traceparent(traceparent) if isinstance(traceparent, str) else None
        if parsed is None:
            return trace.INVALID_SPAN_CONTEXT
        state = trace.DEFAULT_TRACE_STATE
        if states and sum(len(s) for s in states) + len(states) - 1 <= _MAX_TRACESTATE:
            state = trace.TraceState.from_header(states)
    except Exception:  # headers of a kind we do not know: the request is a root, never an error
        return trace.INVALID_SPAN_CONTEXT
    flags = _FLAGS.get(parsed[2]) or trace.TraceFlags(parsed[2])
    # A SpanContext is this tuple; its __new__ would only re-check what the pattern did.
    return tuple.__new__(trace.SpanContext, (parsed[0], parsed[1], True, flags, state, True))


def _instrument_http_server(server: ModuleType, start: Any) -> None:
    context = _module("opentelemetry.context")
    trace = _module("opentelemetry.trace")
    _FLAGS.update({flag: trace.TraceFlags(flag) for flag in (0, 1)})
    propagation = _module("opentelemetry.trace.propagation")
    excluded = _excluded(_excluded_urls())
    suppress_key = context._SUPPRESS_INSTRUMENTATION_KEY
    span_key = propagation._SPAN_KEY
    new_context = context.Context
    server_kind = trace.SpanKind.SERVER
    error_status = trace.Status(trace.StatusCode.ERROR)
    current, attach, detach = _context_ops(context)

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
        try:
            host, traceparent, states = _read_headers(self.headers)
        except Exception:  # headers of a kind we do not know: untraced, never an error
            return ok
        if excluded is not None and excluded((host, path)):
            self._corral_otel = (None, attach(context.set_value(suppress_key, True)))
            return ok
        if current().get(suppress_key):
            return ok
        attributes: dict[str, Any] = {
            "http.request.method": self.command,
            "url.path": path,
            "server.port": self.server.server_address[1],
        }
        if query:
            attributes["url.query"] = redact_query(query)
        parent = _remote_parent(trace, traceparent, states)
        span = start(self.command, server_kind, attributes, parent)
        # What upstream attaches: a fresh context (the caller's, from the headers) with our
        # span as the current one; the request's thread starts with nothing else in it.
        self._corral_otel = (span, attach(new_context({span_key: span})))
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
                detach(token)

    # Patching the class is the point: every handler subclass the app defines inherits these.
    handler.parse_request = parse_request
    handler.handle_one_request = handle_one_request
    handler.send_response_only = send_response_only
    handler._corral_instrumented = True


def _instrument_urllib(request: ModuleType, start: Any) -> None:
    context = _module("opentelemetry.context")
    trace = _module("opentelemetry.trace")
    suppress_keys = (
        context._SUPPRESS_INSTRUMENTATION_KEY,
        context._SUPPRESS_HTTP_INSTRUMENTATION_KEY,
    )
    client_kind = trace.SpanKind.CLIENT
    error_status = trace.Status(trace.StatusCode.ERROR)
    current = _context_ops(context)[0]
    no_state = trace.DEFAULT_TRACE_STATE

    handler = request.AbstractHTTPHandler
    if getattr(handler, "_corral_instrumented", False):
        return
    original_do_open = handler.do_open

    def do_open(self: Any, http_class: Any, req: Any, **kwargs: Any) -> Any:
        values = current()
        if values.get(suppress_keys[0]) or values.get(suppress_keys[1]):
            return original_do_open(self, http_class, req, **kwargs)
        method = req.get_method()
        url = req.full_url
        host, _, port = (req.host or "").rpartition(":")
        attributes: dict[str, Any] = {"http.request.method": method, "url.full": redact_url(url)}
        if host and port.isdigit():
            attributes["server.address"] = host
            attributes["server.port"] = int(port)
        elif req.host:
            attributes["server.address"] = req.host
        span = start(method, client_kind, attributes, None)
        sent = span.get_span_context()  # a non-recording span's too: its ids carry the trace
        req.add_unredirected_header("Traceparent", format_traceparent(sent))
        if sent[4] is not no_state and sent[4]:
            req.add_unredirected_header("Tracestate", sent[4].to_header())
        try:
            response = original_do_open(self, http_class, req, **kwargs)
        except BaseException as error:
            span.record_exception(error)
            span.set_status(error_status)
            span.end()
            raise
        code = getattr(response, "status", None)
        if isinstance(code, int):
            span.set_attribute("http.response.status_code", code)
            if code >= 400:
                span.set_status(error_status)
        span.end()
        return response

    handler.do_open = do_open
    handler._corral_instrumented = True


_NAMES: dict[str, str] = {}


def _statement_name(sql: Any) -> str:
    """The span's name: the statement's verb (``SELECT``), as upstream's dbapi names it."""
    name = _NAMES.get(sql) if isinstance(sql, str) else None
    if name is None:
        text = sql if isinstance(sql, str) else str(sql)
        word = text.lstrip().split(None, 1)
        name = word[0].upper() if word else "sqlite"
        if isinstance(sql, str) and len(_NAMES) < 1024:  # an app's statements repeat; bounded
            _NAMES[sql] = name
    return name


def _instrument_sqlite3(sqlite3: Any, start: Any) -> None:
    trace = _module("opentelemetry.trace")
    client_kind = trace.SpanKind.CLIENT
    error_status = trace.Status(trace.StatusCode.ERROR)
    base_connection, base_cursor = sqlite3.Connection, sqlite3.Cursor
    if getattr(sqlite3, "_corral_instrumented", False):
        return

    def traced(run: Any, method: str) -> Any:
        def wrapper(self: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
            attributes = {"db.system": "sqlite", "db.statement": sql, "db.name": self._db}
            span = start(_statement_name(sql), client_kind, attributes, None)
            try:
                return run(self, sql, *args, **kwargs)
            except BaseException as error:
                span.record_exception(error)
                span.set_status(error_status)
                raise
            finally:
                span.end()

        wrapper.__name__ = method
        return wrapper

    class Cursor(base_cursor):  # type: ignore[misc,valid-type]  # sqlite3's own Cursor
        __slots__ = ()
        execute = traced(base_cursor.execute, "execute")
        executemany = traced(base_cursor.executemany, "executemany")
        executescript = traced(base_cursor.executescript, "executescript")

        @property
        def _db(self) -> str:
            return str(getattr(self.connection, "_db", ""))

    class Connection(base_connection):  # type: ignore[misc,valid-type]  # sqlite3's own
        _db = ""

        def cursor(self, factory: Any = None) -> Any:
            return base_connection.cursor(self, factory or Cursor)

        execute = traced(base_connection.execute, "execute")
        executemany = traced(base_connection.executemany, "executemany")
        executescript = traced(base_connection.executescript, "executescript")

    factories: dict[type, type] = {}

    def factory_for(factory: Any) -> Any:
        """A traced subclass of the app's own ``Connection`` subclass (made once each)."""
        if factory is None or factory is base_connection:
            return Connection
        if not (isinstance(factory, type) and issubclass(factory, base_connection)):
            return factory  # something we do not know how to extend: left as it is
        if factory not in factories:
            factories[factory] = type(factory.__name__, (factory, Connection), {})
        return factories[factory]

    original_connect = sqlite3.connect

    def connect(database: Any, *args: Any, **kwargs: Any) -> Any:
        if len(args) >= 5:  # factory given positionally, after timeout … check_same_thread
            args = (*args[:4], factory_for(args[4]), *args[5:])
        else:
            kwargs["factory"] = factory_for(kwargs.get("factory"))
        conn = original_connect(database, *args, **kwargs)
        if isinstance(conn, Connection):
            conn._db = str(database)
        return conn

    connect.__doc__ = original_connect.__doc__
    sqlite3.connect = connect
    dbapi2: Any = sys.modules.get("sqlite3.dbapi2")
    if dbapi2 is not None:
        dbapi2.connect = connect
    sqlite3._corral_instrumented = True
