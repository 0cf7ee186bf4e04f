"""Zero-touch tracing on a real platform: Python services started by Corral send spans with no
tracing code of their own; opting out and an interpreter that cannot load the site are honoured
without breaking the app."""

from __future__ import annotations

import json
import random
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.errors import NotFound
from corral.telemetry.inject import find_site
from corral.testing import Platform

pytestmark = pytest.mark.skipif(
    find_site() is None, reason="the OpenTelemetry site is not built (scripts/bootstrap.sh)"
)

# A stdlib app: GET /work writes to SQLite through a cursor and calls its own /echo over urllib;
# any GET answers with its PYTHONPATH so the test sees what it was started with.
APP = r"""
import http.server, os, signal, sqlite3, sys, urllib.request
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
db = sqlite3.connect(":memory:", check_same_thread=False)
db.cursor().execute("CREATE TABLE hits (path TEXT)")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/work":
            db.cursor().execute("INSERT INTO hits VALUES (?)", (self.path,))
            port = self.server.server_address[1]
            urllib.request.urlopen(f"http://127.0.0.1:{port}/echo", timeout=5).read()
        body = os.environ.get("PYTHONPATH", "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def _old_python(tmp_path: Path) -> str:
    """A Python the site cannot serve: an older one if this machine has it, otherwise this one
    started with -I (which ignores PYTHONPATH, as some packaged interpreters are set up to)."""
    for base, pattern in (
        ("/root/.pyenv/versions", "3.[6-9].*/bin/python3"),
        ("/usr/bin", "python3.[6-9]"),
    ):
        found = sorted(str(p) for p in Path(base).glob(pattern))
        if found:
            return found[-1]
    wrapper = tmp_path / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -I "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def _service(python: str, extra: str = "") -> str:
    return (
        f"    command: [{python}, app.py]\n"
        "    ports: {http: auto}\n"
        "    env: {OTEL_BSP_SCHEDULE_DELAY: '100'}\n"
        "    health: {readiness: {http: /ready, period: 200ms}}\n" + extra
    )


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    with Platform.start(tmp_path / "home", auto_instrument=True) as p:
        yield p


def _get(port: int, path: str, trace_id: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        headers={"traceparent": f"00-{trace_id}-{'ab' * 8}-01"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def _spans(platform: Platform, trace_id: str) -> list[dict[str, Any]]:
    """The spans of one trace as the platform API shows them ([] while there are none)."""
    try:
        result = platform.client.request("GET", f"/telemetry/trace/{trace_id}")
    except NotFound:
        return []
    return [row["span"] for row in result["rows"]]


def test_python_services_are_traced_with_no_code_unless_they_opt_out_or_cannot_be(
    platform: Platform, tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text(APP)
    old = _old_python(tmp_path)
    platform.apply_text(
        "services:\n"
        "  traced:\n" + _service(sys.executable) + "  optout:\n"
        "" + _service(sys.executable, "    telemetry: {auto_instrument: false}\n") + "  oldpy:\n"
        "" + _service(old),
        base_dir=tmp_path,
    )
    platform.wait_for(
        lambda: all(platform.ready(s) == 1 for s in ("traced", "optout", "oldpy")),
        timeout=30,
        what="the three services in run",
    )
    ports = {s: platform.running(s)[0]["port"] for s in ("traced", "optout", "oldpy")}

    traced_id = f"{random.getrandbits(128):032x}"
    assert "corral-otel-site" in _get(ports["traced"], "/work", traced_id)
    spans = platform.wait_for(
        lambda: (s := _spans(platform, traced_id)) and len(s) >= 4 and s,
        timeout=15,
        what="the traced app's spans",
    )
    text = json.dumps(spans)
    assert '"SERVER"' in text and '"CLIENT"' in text  # http.server and urllib
    assert "INSERT INTO hits" in text  # sqlite3
    assert "ab" * 8 in text  # the caller's traceparent was continued
    instance = platform.running("traced")[0]["id"]
    assert instance in text  # service.instance.id
    assert '"v1"' in text  # deployment.release
    assert "host.name" in text

    # Opted out: started exactly as written, sends nothing.
    optout_id = f"{random.getrandbits(128):032x}"
    assert "corral-otel-site" not in _get(ports["optout"], "/work", optout_id)
    # A cannot-load interpreter: still runs, untraced, and an event says why.
    old_id = f"{random.getrandbits(128):032x}"
    assert "corral-otel-site" not in _get(ports["oldpy"], "/work", old_id)
    events = [e for e in platform.events() if e.get("service") == "oldpy"]
    assert any("auto-instrumentation off" in e["reason"] for e in events), events
    assert not any(
        "auto-instrumentation off" in e["reason"]
        for e in platform.events()
        if e.get("service") in ("traced", "optout")
    )
    # Spans of the traced app sent after these requests have arrived, so theirs would have too.
    later = f"{random.getrandbits(128):032x}"
    _get(ports["traced"], "/echo", later)
    platform.wait_for(lambda: _spans(platform, later), timeout=15, what="a later span")
    assert _spans(platform, optout_id) == [] and _spans(platform, old_id) == []
    # Readiness probes (every 200 ms, for seconds now) are not traced: the only traces are the
    # table's creation and the two requests above.
    recent = platform.client.request(
        "GET", "/telemetry/traces", query={"service": "traced", "limit": 100}
    )
    assert len(recent) == 3, recent
