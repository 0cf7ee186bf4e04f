"""Shared helpers of the example shop: a tiny JSON HTTP server and dependency lookup.

Standard library only, so the example runs on any Python 3.11 without installing anything.
"""

from __future__ import annotations

import json
import os
import random
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handler = Callable[[str, str, Any], tuple[int, Any]]


def endpoint(service: str) -> str:
    """Base URL of one `run` instance of ``service``.

    The platform keeps ``$CORRAL_ENDPOINTS`` (a JSON file) current as instances move, so a
    replaced instance with a new port is found on the next call; ``<SERVICE>_URL`` from the
    environment at start is the fallback."""
    path = os.environ.get("CORRAL_ENDPOINTS")
    if path:
        try:
            with open(path) as f:
                addresses = json.load(f).get(service) or []
            if addresses:
                return "http://" + random.choice(addresses)
        except (OSError, ValueError):
            pass
    url = os.environ.get(service.upper().replace("-", "_") + "_URL")
    if not url:
        raise LookupError(f"no endpoint for {service}")
    return url


def call(service: str, method: str, path: str, body: Any = None, timeout: float = 3.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        endpoint(service) + path,
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        payload = json.loads(exc.read() or b"{}")
        raise ServiceError(exc.code, payload.get("error", str(exc))) from None


class ServiceError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def serve(name: str, handle: Handler, html: Callable[[], str] | None = None) -> None:
    port = int(os.environ.get("PORT", "8000"))

    class Handler(BaseHTTPRequestHandler):
        server_version = name

        def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
            body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _dispatch(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                self._send(400, {"error": "body is not JSON"})
                return
            if method == "GET" and self.path == "/" and html is not None:
                self._send(200, html(), "text/html; charset=utf-8")
                return
            if self.path == "/healthz":
                self._send(200, {"ok": True, "instance": os.environ.get("CORRAL_INSTANCE")})
                return
            try:
                status, payload = handle(method, self.path, body)
            except ServiceError as exc:
                status, payload = exc.status, {"error": str(exc)}
            except (LookupError, OSError) as exc:
                status, payload = 503, {"error": f"dependency unavailable: {exc}"}
            self._send(status, payload)

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def log_message(self, format: str, *args: Any) -> None:
            sys.stdout.write(f"{self.command} {self.path} {args[1] if len(args) > 1 else ''}\n")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"{name} listening on 127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
