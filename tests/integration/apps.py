"""Tiny apps the platform tests run as instances (standard library only)."""

from __future__ import annotations

import sys
from pathlib import Path

PY = sys.executable

# An HTTP server on $PORT whose /ready answers 200 while $READY_FILE (if set) exists, and which
# appends one line to $DATA_DIR/starts (pets) on every start.
HTTP_APP = r"""
import http.server, os, signal, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
data = os.environ.get("DATA_DIR")
if data:
    with open(os.path.join(data, "starts"), "a") as f:
        f.write(os.environ["CORRAL_INSTANCE"] + "\n")
gate = os.environ.get("READY_FILE")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path != "/ready" or not gate or os.path.exists(gate)
        body = os.environ["CORRAL_INSTANCE"].encode()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("listening", os.environ["PORT"], flush=True)
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def write_app(directory: Path) -> Path:
    path = directory / "app.py"
    path.write_text(HTTP_APP)
    return path


def service_yaml(
    name: str,
    app: Path,
    *,
    mode: str = "cattle",
    instances: int | str = 1,
    extra: str = "",
    readiness: bool = True,
) -> str:
    probe = "      readiness: {http: /ready, period: 100ms}\n" if readiness else ""
    return (
        f"  {name}:\n"
        f"    mode: {mode}\n"
        f"    command: [{PY}, {app}]\n"
        f"    instances: {instances}\n"
        f"    ports: {{http: auto}}\n"
        f"    restart: {{backoff: {{initial: 100ms, max: 1s}}}}\n"
        f"    stop: {{grace: 2s}}\n"
        f"    health:\n{probe}"
        f"      liveness: {{tcp: http, period: 200ms}}\n" + extra
    )
