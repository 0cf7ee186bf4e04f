"""Edge spans and the access log, exported off the hot path.

The proxy hands every finished request to ``Recorder.record`` as one tuple (``Finished``) —
an append to a bounded list, nothing else on the request path. A background task wakes every
``FLUSH_SECONDS``, takes the list, and turns it into

- **Zipkin v2 JSON** (one ``SERVER`` span per request, one ``CLIENT`` span per upstream try,
  the CLIENT spans children of the SERVER span), POSTed to the collector endpoint; and
- **JSON access-log lines** appended to the ``access_log`` file.

The encoding runs on the event loop, ``EXPORT_SLICE`` requests at a time with the loop let run
between slices; only the file write and the POST (blocking I/O, the GIL released) go to a
thread. Encoding in the thread made the loop and the thread take turns at the GIL: every loop
wake-up waited out the thread's switch interval, and one ``json.dumps`` of a whole batch held
the GIL for tens of milliseconds — the gateway's p99 with export on was 105 ms at 18k
requests/s (20 ms with the encoding chunked in the thread; see ``bench/gateway.py --observed``).

Ids are the ones the proxy put in ``traceparent``: the trace id, and the span id sent upstream,
which is the id of that try's CLIENT span (so the upstream's own spans hang under the try that
carried them); the SERVER span has its own id and, when the request carried a
``traceparent``, the caller's span as parent.

When the list holds ``max_buffer`` requests, new ones are dropped and counted
(``dropped``); a failed POST drops its batch and is counted (``failed``) — telemetry never
slows or fails a request. Timestamps: the proxy records loop time; the flush converts with one
wall-minus-loop offset taken at flush time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["FLUSH_SECONDS", "Finished", "Recorder", "access_line", "zipkin_spans"]

log = logging.getLogger("corral.gateway.spans")

FLUSH_SECONDS = 0.25  # small batches: a short encoding pass, a short file write and POST
POST_TIMEOUT = 2.0
EXPORT_SLICE = 128  # finished requests encoded per loop turn (~1–2 ms)
_encode = msgspec.json.encode

# (trace_id, server_id, parent_id, start, end, method, host, path, status, route, peer,
#  request_id, tries); a try is (span_id, address, start, end, status, cluster).
Finished = tuple[
    bytes,
    bytes,
    bytes | None,
    float,
    float,
    str,
    bytes,
    str,
    int,
    str,
    bytes,
    bytes,
    list[tuple[bytes, str, float, float, int, str]] | None,
]


def _endpoint(address: str, service: str | None = None) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    out: dict[str, Any] = {}
    if service:
        out["serviceName"] = service
    if host.startswith("["):
        out["ipv6"] = host[1:-1]
    elif host:
        out["ipv4"] = host
    if port.isdigit():
        out["port"] = int(port)
    return out


def zipkin_spans(batch: list[Finished], offset: float, service: str) -> list[dict[str, Any]]:
    """Zipkin v2 spans for finished requests; ``offset`` converts loop time to wall time."""
    spans: list[dict[str, Any]] = []
    local = {"serviceName": service}
    for (
        trace,
        sid,
        parent,
        start,
        end,
        method,
        host,
        path,
        status,
        route,
        peer,
        rid,
        tries,
    ) in batch:
        trace_id = trace.decode()
        server_id = sid.decode()
        tags = {
            "http.method": method,
            "http.path": path,
            "http.host": host.decode("latin-1"),
            "http.status_code": str(status),
            "http.route": route,
            "request_id": rid.decode("latin-1"),
        }
        if status >= 500 or status == 0:
            tags["error"] = str(status)
        server: dict[str, Any] = {
            "traceId": trace_id,
            "id": server_id,
            "kind": "SERVER",
            "name": f"{method} {route}",
            "timestamp": int((start + offset) * 1e6),
            "duration": max(1, int((end - start) * 1e6)),
            "localEndpoint": local,
            "tags": tags,
        }
        if parent is not None:
            server["parentId"] = parent.decode()
        if peer:
            server["remoteEndpoint"] = _endpoint(peer.decode() + ":")
        spans.append(server)
        for span_id, address, t0, t1, code, cluster in tries or ():
            remote = cluster[8:] if cluster.startswith("service:") else cluster[7:]
            client_tags = {"http.method": method, "http.path": path, "http.status_code": str(code)}
            if code >= 500 or code == 0:
                client_tags["error"] = "connect failure" if code == 0 else str(code)
            spans.append(
                {
                    "traceId": trace_id,
                    "id": span_id.decode(),
                    "parentId": server_id,
                    "kind": "CLIENT",
                    "name": method,
                    "timestamp": int((t0 + offset) * 1e6),
                    "duration": max(1, int((t1 - t0) * 1e6)),
                    "localEndpoint": local,
                    "remoteEndpoint": _endpoint(address, remote.split("@", 1)[0]),
                    "tags": client_tags,
                }
            )
    return spans


def access_line(item: Finished, offset: float) -> str:
    trace, _, _, start, end, method, host, path, status, route, peer, rid, tries = item
    return json.dumps(
        {
            "time": round(start + offset, 6),
            "client": peer.decode("latin-1"),
            "method": method,
            "host": host.decode("latin-1"),
            "path": path,
            "status": status,
            "duration_ms": round((end - start) * 1000, 3),
            "route": route,
            "upstream": tries[-1][1] if tries else None,
            "tries": len(tries) if tries else 0,
            "request_id": rid.decode("latin-1"),
            "trace_id": trace.decode(),
        },
        separators=(",", ":"),
    )


class Recorder:
    """The bounded buffer of finished requests and its flush task (module docstring)."""

    def __init__(
        self,
        *,
        zipkin: Callable[[], str | None],
        access_log: str | None,
        service: str = "corral-gateway",
        max_buffer: int = 10_000,
    ) -> None:
        self.zipkin = zipkin
        self.access_log = access_log
        self.service = service
        self.max_buffer = max_buffer
        self.spans_on = True
        self.buffer: list[Finished] = []
        self.dropped = 0
        self.exported = 0
        self.failed = 0
        self._task: asyncio.Task[None] | None = None

    def record(self, item: Finished) -> None:
        if len(self.buffer) < self.max_buffer:
            self.buffer.append(item)
        else:
            self.dropped += 1

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None:
            self._task = loop.create_task(self._run(loop))

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush(loop)
            except Exception:
                log.exception("gateway: span export failed")

    async def flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self.buffer = self.buffer, []
        if not batch:
            return
        offset = time.time() - loop.time()
        url = self.zipkin() if self.spans_on else None
        lines: list[str] = []
        chunks: list[bytes] = []
        try:
            for start in range(0, len(batch), EXPORT_SLICE):
                part = batch[start : start + EXPORT_SLICE]
                if self.access_log is not None:
                    lines.extend(access_line(item, offset) + "\n" for item in part)
                if url is not None:  # each chunk's JSON array without its brackets
                    chunks.append(_encode(zipkin_spans(part, offset, self.service))[1:-1])
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            self.buffer[:0] = batch  # stopped mid-encoding: ``close``'s last flush sends it
            raise
        body = b"[" + b",".join(chunks) + b"]" if url is not None else b""
        await loop.run_in_executor(None, self._write, "".join(lines), url, body, len(batch))

    def _write(self, log_lines: str, url: str | None, body: bytes, requests: int) -> None:
        """The blocking part, in a thread: append the access log, POST the spans."""
        if self.access_log is not None and log_lines:
            try:
                with Path(self.access_log).open("a", encoding="utf-8") as out:
                    out.write(log_lines)
            except OSError as error:
                log.warning("gateway: cannot write the access log %s: %s", self.access_log, error)
        if url is None:
            return
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=POST_TIMEOUT) as response:
                response.read()
            self.exported += requests
        except (OSError, ValueError) as error:
            self.failed += requests
            log.warning("gateway: span export to %s failed: %s", url, error)

    async def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self.flush(loop)
