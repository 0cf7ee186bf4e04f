"""Zero-touch tracing, the decisions (pure) and the bootstrap as an interpreter meets it."""

from __future__ import annotations

import http.client
import http.server
import importlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from corral.telemetry import autoinstrument as ai
from corral.telemetry.inject import BOOTSTRAP_DIR, find_site
from corral.testing import wait_for

SITE = ai.SitePaths(bootstrap="/boot", packages="/otel")


@pytest.mark.parametrize(
    ("argv", "shebang", "interpreter"),
    [
        (["python3", "app.py"], None, ["python3"]),
        (["/usr/bin/python3.11", "-m", "shop"], None, ["/usr/bin/python3.11"]),
        (["python", "-u", "-X", "dev", "app.py"], None, ["python", "-u", "-X", "dev"]),
        (["python3", "-I", "app.py"], None, ["python3", "-I"]),
        (["./app.py"], "#!/usr/bin/env python3", ["/usr/bin/env", "python3"]),
        (["gunicorn", "app:app"], "#!/srv/venv/bin/python", ["/srv/venv/bin/python"]),
        (["./app.py"], "#!/usr/bin/env -S python3 -u", ["/usr/bin/env", "python3", "-u"]),
        (["node", "server.js"], None, None),
        (["./run.sh"], "#!/bin/sh", None),
        (["./app"], "\x7fELF", None),
        (["pythonista"], None, None),
        ([], None, None),
    ],
)
def test_python_services_are_recognised_from_their_command(
    argv: list[str], shebang: str | None, interpreter: list[str] | None
) -> None:
    assert ai.python_interpreter(argv, shebang) == interpreter


def test_the_site_goes_in_front_of_the_services_own_pythonpath() -> None:
    env = ai.instrumented_env({"PYTHONPATH": "/app/lib", "A": "1"}, SITE, {})
    assert env["PYTHONPATH"] == "/boot:/otel:/app/lib"
    assert env["A"] == "1"
    assert ai.instrumented_env({}, SITE, {})["PYTHONPATH"] == "/boot:/otel"


def test_health_probe_paths_are_not_traced_unless_the_service_says_otherwise() -> None:
    spec = {"health": {"readiness": {"http": "/ready"}, "liveness": {"http": "/healthz?deep=1"}}}
    env = ai.instrumented_env({}, SITE, spec)
    assert env["OTEL_PYTHON_EXCLUDED_URLS"] == "/ready$,/healthz$"
    own = ai.instrumented_env({"OTEL_PYTHON_EXCLUDED_URLS": "x"}, SITE, spec)
    assert own["OTEL_PYTHON_EXCLUDED_URLS"] == "x"


def test_opting_out_in_the_manifest_turns_it_off() -> None:
    assert ai.opted_in({})
    assert ai.opted_in({"telemetry": {"auto_instrument": True}})
    assert not ai.opted_in({"telemetry": {"auto_instrument": False}})


def test_the_check_reads_the_bootstraps_answer_or_says_why_there_is_none() -> None:
    assert ai.parse_check("noise\ncorral-otel: ok Python 3.11.7\n", 0) == ai.Check(
        True, "Python 3.11.7"
    )
    failed = ai.parse_check("corral-otel: unavailable Python 3.9 is older\n", 0)
    assert not failed.ok and failed.detail == "Python 3.9 is older"
    silent = ai.parse_check("", 0)
    assert not silent.ok and "did not load the bootstrap" in silent.detail
    late = ai.parse_check("", None)
    assert not late.ok and not late.final


def test_the_manifest_accepts_the_opt_out_and_refuses_typos() -> None:
    from corral.errors import CorralError
    from corral.manifest.schema import Service

    service = Service.model_validate(
        {"command": ["python3", "app.py"], "telemetry": {"auto_instrument": False}}
    )
    assert service.telemetry.auto_instrument is False
    assert Service.model_validate({"command": ["x"]}).model_dump()["telemetry"] == {
        "auto_instrument": True
    }
    with pytest.raises((CorralError, ValueError)):
        Service.model_validate({"command": ["x"], "telemetry": {"auto_instrumnet": False}})


needs_site = pytest.mark.skipif(
    find_site() is None, reason="the OpenTelemetry site is not built (scripts/bootstrap.sh)"
)


@needs_site
def test_an_interpreter_that_can_load_the_site_says_so(tmp_path: Path) -> None:
    site = find_site()
    assert site is not None
    env = ai.instrumented_env({"PATH": "/usr/bin:/bin"}, site, {})
    env[ai.CHECK_ENV] = "1"
    done = subprocess.run(
        ai.check_argv([sys.executable]), env=env, capture_output=True, text=True, timeout=30
    )
    assert ai.parse_check(done.stdout, done.returncode).ok, done.stdout + done.stderr


def test_a_broken_site_never_breaks_the_app(tmp_path: Path) -> None:
    # The bootstrap with a packages dir whose OpenTelemetry cannot be imported (it shadows the
    # copy in this venv): the app runs all the same, and its log says once why it is not traced.
    broken = tmp_path / "opentelemetry"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('a half-installed site')\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{BOOTSTRAP_DIR}:{tmp_path}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
    }
    done = subprocess.run(
        [sys.executable, "-c", "print('app ran')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    assert done.stdout == "app ran\n"
    assert done.stderr.count("corral-otel: unavailable") == 1, done.stderr


ENCODER_CHECK = r"""
import sys
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import _corral_otlp

memory = InMemorySpanExporter()
provider = TracerProvider(resource=Resource({"service.name": "shop", "n": 7, "ok": True}))
provider.add_span_processor(SimpleSpanProcessor(memory))
tracer = provider.get_tracer("corral.test", "1.0")
with tracer.start_as_current_span("GET", kind=trace.SpanKind.SERVER) as root:
    root.set_attribute("http.response.status_code", 200)
    with tracer.start_as_current_span("SELECT", kind=trace.SpanKind.CLIENT) as child:
        child.set_attributes({"db.statement": "SELECT 1 -- é", "ratio": 0.5, "tags": ["a", "b"]})
        child.record_exception(ValueError("boom"))
        child.set_status(trace.Status(trace.StatusCode.ERROR, "boom"))
        child.add_link(root.get_span_context(), {"why": "test"})
spans = memory.get_finished_spans()
theirs = ExportTraceServiceRequest.FromString(encode_spans(spans).SerializeToString())
ours = ExportTraceServiceRequest.FromString(_corral_otlp.encode(spans))
print("same" if ours == theirs else f"DIFFERENT\n{ours}\n---\n{theirs}")
"""


@needs_site
def test_spans_go_out_exactly_as_the_upstream_otlp_exporter_would_send_them() -> None:
    site = find_site()
    assert site is not None
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{site.bootstrap}:{site.packages}"}
    done = subprocess.run(
        [sys.executable, "-c", ENCODER_CHECK], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "same", done.stdout + done.stderr


def test_credentials_in_urls_never_reach_a_span() -> None:
    sys.path.insert(0, str(BOOTSTRAP_DIR))
    try:
        import _corral_otel  # type: ignore[import-not-found]  # the bootstrap apps load, on its own path
    finally:
        sys.path.remove(str(BOOTSTRAP_DIR))
    url = "https://user:hunter2@api.example/v1/x?limit=5&access_token=abc&Signature=s#top"
    redacted = _corral_otel.redact_url(url)
    assert "hunter2" not in redacted and "abc" not in redacted and "=s#" not in redacted
    assert redacted == (
        "https://REDACTED:REDACTED@api.example/v1/x?limit=5&access_token=REDACTED"
        "&Signature=REDACTED#top"
    )
    assert _corral_otel.redact_query("q=shoes&password=pw") == "q=shoes&password=REDACTED"


# A traced app that stops on SIGTERM the way the example shop does (sys.exit), with spans
# still queued in the batch processor when it is told to stop.
STOPPABLE_APP = """
import signal, sqlite3, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
db = sqlite3.connect(":memory:")
for _ in range(3):
    db.execute("SELECT 1")
print("ready", flush=True)
time.sleep(60)
"""


class _Collector(http.server.BaseHTTPRequestHandler):
    posts: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _traced_env(collector_port: int, service: str, **extra: str) -> dict[str, str]:
    """An app's environment with the zero-touch bootstrap on its path, exporting to a port."""
    site = find_site()
    assert site is not None
    return {
        **extra,
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{site.bootstrap}:{site.packages}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector_port}",
        "OTEL_SERVICE_NAME": service,
    }


def _seconds_to_stop(port: int, **extra_env: str) -> float:
    # nothing leaves before the app is told to stop
    env = _traced_env(port, "stoppable", **extra_env, OTEL_BSP_SCHEDULE_DELAY="60000")
    app = subprocess.Popen(
        [sys.executable, "-c", STOPPABLE_APP], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert app.stdout is not None and app.stdout.readline() == "ready\n"
        began = time.monotonic()
        app.send_signal(signal.SIGTERM)
        assert app.wait(30) == 0
        return time.monotonic() - began
    finally:
        app.kill()
        app.wait()


@needs_site
def test_a_traced_app_told_to_stop_exits_at_once_when_the_collector_is_gone() -> None:
    # The exporter used to retry a refused connection for up to its 10 s timeout at exit.
    assert _seconds_to_stop(_free_port()) < 2.5


@contextmanager
def _serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """``handler`` answering on a free port in a thread, for the test's length; yields the port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@needs_site
def test_a_traced_app_told_to_stop_still_sends_its_queued_spans() -> None:
    _Collector.posts = []
    with _serving(_Collector) as port:
        assert _seconds_to_stop(port) < 2.5
    assert _Collector.posts and b"SELECT 1" in b"".join(_Collector.posts)


def _bootstrap_module() -> Any:
    """``_corral_otel``, the module apps load, from its own directory."""
    sys.path.insert(0, str(BOOTSTRAP_DIR))
    try:
        return importlib.import_module("_corral_otel")
    finally:
        sys.path.remove(str(BOOTSTRAP_DIR))


@pytest.mark.parametrize(
    "header",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        " \t00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\t",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333-01",
        "00-+af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "garbage",
        "",
    ],
)
def test_a_callers_traceparent_is_taken_or_refused_as_upstreams_propagator_does(
    header: str,
) -> None:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    upstream = trace.get_current_span(
        TraceContextTextMapPropagator().extract({"traceparent": header})
    ).get_span_context()
    ours = _bootstrap_module().parse_traceparent(header)
    if not upstream.is_valid:
        assert ours is None
    else:
        assert ours == (upstream.trace_id, upstream.span_id, int(upstream.trace_flags))


# A traced service that calls another with urllib for every request it serves.
RELAY_APP = """
import os, sys, urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer
downstream = sys.argv[1]
class Relay(BaseHTTPRequestHandler):
    def do_GET(self):
        urllib.request.urlopen(downstream, timeout=10).read()
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
server = HTTPServer(("127.0.0.1", 0), Relay)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class _Downstream(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append({k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@needs_site
def test_a_traced_service_carries_its_callers_trace_and_tracestate_to_the_services_it_calls() -> (
    None
):
    _Downstream.seen = []
    with _serving(_Downstream) as downstream:
        env = _traced_env(_free_port(), "relay")
        url = f"http://127.0.0.1:{downstream}/next"
        relay = subprocess.Popen(
            [sys.executable, "-c", RELAY_APP, url], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert relay.stdout is not None
            port = int(relay.stdout.readline())
            caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            for headers in ({"traceparent": caller, "tracestate": "shop=1,corral=x"}, {}):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/relay", headers=headers)
                assert conn.getresponse().status == 204
                conn.close()
        finally:
            relay.kill()
            relay.wait()
    continued, root = _Downstream.seen
    version, trace_id, span_id, flags = continued["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "0af7651916cd43dd8448eb211c80319c", "01")
    assert span_id != "b7ad6b7169203331"  # the relay's own client span, a child of the caller's
    assert continued["tracestate"] == "shop=1,corral=x"
    # No caller's trace: the relay starts one, and its outgoing call carries it.
    assert root["traceparent"].split("-")[1] != trace_id and "tracestate" not in root


@needs_site
def test_a_full_batch_of_spans_goes_out_without_waiting_for_the_schedule_delay() -> None:
    _Collector.posts = []
    with _serving(_Collector) as port:
        env = _traced_env(
            port, "batcher", OTEL_BSP_SCHEDULE_DELAY="60000", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="3"
        )
        app = subprocess.Popen(
            [sys.executable, "-c", STOPPABLE_APP], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            assert app.stdout is not None and app.stdout.readline() == "ready\n"
            wait_for(
                lambda: _Collector.posts, 10, what="a whole batch (3 spans) sent while the app runs"
            )
            assert app.poll() is None
            assert b"".join(_Collector.posts).count(b"SELECT 1") == 3
        finally:
            app.kill()
            app.wait()


@needs_site
@pytest.mark.parametrize(("sampler", "traced"), [("always_off", False), ("traceidratio", True)])
def test_an_app_that_chose_its_own_sampler_keeps_its_choice(sampler: str, traced: bool) -> None:
    _Collector.posts = []
    with _serving(_Collector) as port:
        _seconds_to_stop(port, OTEL_TRACES_SAMPLER=sampler, OTEL_TRACES_SAMPLER_ARG="1.0")
    assert (b"SELECT 1" in b"".join(_Collector.posts)) is traced
