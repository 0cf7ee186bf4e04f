"""The gateway data plane: asyncio ``Protocol`` + httptools, no web framework on the request path.

How a request flows (one worker, one event loop, preferably uvloop):

- ``ClientConnection`` collects bytes until the end of the head (``\\r\\n\\r\\n``), has its
  httptools parser validate exactly that head (``on_url``/``on_headers_complete``/
  ``on_message_complete`` are the only callbacks: with no ``on_header`` llhttp makes no
  per-header Python call; the parser is reused while heads are whole messages), and reads the
  few headers it needs with one regex ``findall`` on a lower-cased copy. The head is forwarded
  as the client sent it, with only the hop-by-hop lines cut and our lines appended
  (``X-Forwarded-*``, ``X-Request-Id``, ``traceparent``): per-header Python work is the main cost
  of a Python proxy, so unchanged header bytes pass through.
- Bodies are framed by ``BodyFramer`` (Content-Length or chunked) and forwarded as raw bytes as
  they arrive — chunked framing included — so streams and server-sent events are never
  buffered. The same framing finds the end of each pipelined request; requests are answered in
  order, one at a time per connection, and later ones wait in the buffer (reading pauses when
  that backlog grows).
- A ``Pool`` per cluster holds ``Endpoint`` records (``lb``), the passive ``OutlierDetector``,
  the routable set (health, ejection, panic) and idle upstream connections (LIFO: the most
  recently used connection is warm and least likely to have been closed by the upstream).
- ``UpstreamConnection`` parses each response head the same way and forwards head and body
  bytes to the client unchanged unless a hop-by-hop header must go; 502/503/504 and connect
  failures before any response byte reached the client are retried on another endpoint when
  ``retry.may_retry`` and the route's budget allow.
- Back-pressure both ways: a transport whose write buffer is full pauses reading on the other
  side (``pause_writing`` → ``pause_reading``) until it drains.
- Time: deadlines (request headers, keep-alive idle, connect, per-try, total) are compared
  against a cached clock by one periodic sweep (``SWEEP_SECONDS``), not a timer per request.
- WebSocket (any ``Upgrade``): the head is forwarded with its ``Upgrade``/``Connection`` lines;
  on ``101`` both connections become a byte tunnel.

Robustness: a malformed head → 400; a head over ``max_header_bytes`` → 431; a body over
``max_body_bytes`` → 413; headers not complete within ``header_timeout`` → 408; no routable
endpoint → 503 with a short reason; an upstream that dies after the response began → the client
connection is closed (it sees a truncated body), before → 502 (or a retry). An exception in a
callback answers 500 or closes that connection; it never reaches the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from random import Random
from typing import Any, Final, cast

import httptools

from corral.gateway import side
from corral.gateway.config import AdaptiveConcurrency, Limits
from corral.gateway.framing import BodyFramer, FramingError, dechunk
from corral.gateway.gradient import GradientLimit, GradientSettings
from corral.gateway.lb import Endpoint, Picker, make_picker
from corral.gateway.metrics import Metrics
from corral.gateway.outlier import Outcome, OutlierDetector, routable
from corral.gateway.plugins import (
    PENDING,
    LogRecord,
    PluginChain,
    PluginFailed,
    PluginRequest,
    Respond,
    reload_modules,
)
from corral.gateway.plugins_process import PluginProcess, build_chains
from corral.gateway.policies import (
    GO,
    HIT,
    WAIT,
    Guard,
    Policies,
    RequestView,
    render_cached,
    render_fallback,
)
from corral.gateway.retry import IDEMPOTENT, RETRYABLE_STATUS, RetryBudget
from corral.gateway.router import Cluster, CompiledRoute, Mirror, RouteMatch, RouteTable
from corral.gateway.spans import Recorder


def _load_compiled_scan() -> Callable[..., tuple[dict[bytes, bytes], bool, bytes | None]] | None:
    """The compiled header scan, built by scripts/build_compiled.py; without it the regex scan
    below does the same."""
    try:
        from corral.gateway._headscan import scan
    except ImportError:
        return None
    return scan


_compiled_scan: Final = _load_compiled_scan()


def _find_head_end(data: bytes) -> int:
    return data.find(b"\r\n\r\n")


def _load_head_end() -> Callable[[bytes], int]:
    """Where a head ends (``data.find(b"\\r\\n\\r\\n")``): the compiled one (memchr) when
    built, since it runs on every request and response head."""
    try:
        from corral.gateway._headscan import head_end
    except ImportError:
        return _find_head_end
    return head_end


_head_end: Final = _load_head_end()

__all__ = ["SWEEP_SECONDS", "ClientConnection", "Gateway", "Pool", "UpstreamConnection"]

log = logging.getLogger("corral.gateway")

SWEEP_SECONDS: Final = 0.25
MAX_IDLE_PER_ENDPOINT = 256
MAX_RESPONSE_HEAD: Final = 64 * 1024
MAX_SIDE_RESPONSE = 16 << 20  # a mirror's answer larger than this is cut off

_HEAD: Final = 0
_BODY: Final = 1
_WAIT: Final = 2
_TUNNEL: Final = 3
_CLOSED: Final = 4
_PARKED: Final = 5
# Deadline kinds of a client connection.
_D_NONE: Final = 0
_D_IDLE: Final = 1
_D_HEADERS: Final = 2
_D_UPSTREAM: Final = 3
# Why a client's reading is paused (bit flags). Module constants are ``Final`` throughout: a
# compiled module reads a non-final global from its dict on every use.
_READ_BACKLOG: Final = 1
_READ_UPSTREAM: Final = 2

_REASONS: Final = {
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

# The request headers the proxy reads or replaces, and the response headers it must see. One
# list serves both scans: the compiled one (``_headscan.c``, the names as a tuple and the sets
# below as bit masks over it) and the regex fallback, one C-level pass either way — per-header
# Python work is the main cost here (measured).
_REQUEST_NAMES: Final = (
    b"host",
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"traceparent",
    b"x-request-id",
    b"b3",
    b"x-b3-traceid",
)
_RESPONSE_NAMES: Final = (b"content-length", b"transfer-encoding", b"connection", b"keep-alive")


def _scan_pattern(names: tuple[bytes, ...]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(name) for name in names)
    return re.compile(rb"\r\n(" + alternatives + rb")[ \t]*:[ \t]*([^\r\n]*)")


_REQUEST_SCAN: Final = _scan_pattern(_REQUEST_NAMES)
_RESPONSE_SCAN: Final = _scan_pattern(_RESPONSE_NAMES)
_CASELESS: Final = frozenset((b"host", b"traceparent", b"transfer-encoding", b"connection"))


def _mask(names: tuple[bytes, ...], chosen: Iterable[bytes]) -> int:
    return sum(1 << names.index(name) for name in chosen if name in names)


def _status_of(head: bytes) -> int:
    """The status code of a response head (``HTTP/1.x NNN[ reason]\\r\\n``), or -1.

    By hand, not a regex: compiled, a few byte compares (a head of 16 bytes or more has an
    index 12)."""
    if len(head) < 16 or not head.startswith(b"HTTP/1.") or head[8] != 32:
        return -1
    if head[7] not in (48, 49):  # HTTP/1.0 or 1.1
        return -1
    hundreds, tens, ones = head[9] - 48, head[10] - 48, head[11] - 48
    if not (1 <= hundreds <= 9 and 0 <= tens <= 9 and 0 <= ones <= 9) or head[12] not in (32, 13):
        return -1
    return hundreds * 100 + tens * 10 + ones


_HOP_BY_HOP: Final = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"traceparent",
    )
)
_HOP_BY_HOP_UPGRADE: Final = _HOP_BY_HOP - {b"connection", b"upgrade"}
_RESPONSE_HOP: Final = frozenset((b"connection", b"keep-alive"))
# What a response head's hop-by-hop lines need. A lone "Connection: keep-alive" (what nginx and
# most servers send) is left in when the client's connection stays open too: it says the same
# thing on the client's hop, and not cutting it saves a second scan of every response head.
_HOP_NONE: Final = 0
_HOP_KEEP_ALIVE: Final = 1
_HOP_CUT: Final = 2
_SINGLE: Final = frozenset((b"host", b"content-length", b"transfer-encoding"))


_REQUEST_MASKS: Final = (
    _mask(_REQUEST_NAMES, _CASELESS),
    _mask(_REQUEST_NAMES, _SINGLE),
    _mask(_REQUEST_NAMES, _HOP_BY_HOP),
    _mask(_REQUEST_NAMES, _HOP_BY_HOP_UPGRADE),
)
_RESPONSE_MASKS: Final = (
    _mask(_RESPONSE_NAMES, _CASELESS),
    _mask(_RESPONSE_NAMES, _SINGLE),
    _mask(_RESPONSE_NAMES, _RESPONSE_HOP),
)


class _BadHead(Exception):
    pass


# The framing of a request without a body. Shared: a finished framer is never fed again.
_NO_BODY: Final = BodyFramer(0)


def _scan(
    pattern: re.Pattern[bytes], lower: bytes, cut: frozenset[bytes]
) -> tuple[dict[bytes, bytes], bool]:
    """Values of the headers ``pattern`` names, and whether any of them is a line to ``cut``.

    ``lower`` is the head lower-cased, so the scan can be case-sensitive (faster), and the
    values are lower-case too: callers re-read the few values whose case matters. One
    ``findall`` (no match objects, no per-match offsets) is about three times cheaper than
    ``finditer`` here; where the lines to cut are is found only when there are some
    (``_line_spans``), which a request from wrk or curl never has."""
    values: dict[bytes, bytes] = {}
    cutting = False
    for name, value in pattern.findall(lower):
        value = value.rstrip()
        old = values.get(name)
        if old is not None:
            if name in _SINGLE:
                raise _BadHead(name.decode())
            value = old + b", " + value
        values[name] = value
        if name in cut:
            cutting = True
    return values, cutting


def _line_spans(
    pattern: re.Pattern[bytes], lower: bytes, cut: frozenset[bytes]
) -> list[tuple[int, int]]:
    """Spans (from the CRLF before the name to the end of the value) of the lines to cut."""
    return [m.span() for m in pattern.finditer(lower) if m.group(1) in cut]


def _without(head: bytes, spans: list[tuple[int, int]]) -> bytes:
    if not spans:
        return head
    parts = []
    pos = 0
    for start, end in sorted(spans):
        if start >= pos:
            parts.append(head[pos:start])
            pos = end
    parts.append(head[pos:])
    return b"".join(parts)


def _value(head: bytes, lower: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (given as ``b"\\r\\nname:"``), or None."""
    i = lower.find(name)
    if i < 0:
        return None
    start = i + len(name)
    return head[start : head.find(b"\r\n", start)].strip()


def _spans(head: bytes, lower: bytes, names: Iterable[bytes]) -> list[tuple[int, int]]:
    """Spans of every line whose name (``b"\\r\\nname:"``) is in ``names``."""
    spans: list[tuple[int, int]] = []
    for name in names:
        i = lower.find(name)
        while i >= 0:
            end = lower.find(b"\r\n", i + 2)
            spans.append((i, end))
            i = lower.find(name, end)
    return spans


def _simple_response(
    status: int, message: str, *, close: bool, request_id: bytes = b"", extra: bytes = b""
) -> bytes:
    body = message.encode() + b"\n"
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Length: %d\r\n" % len(body),
        extra,
    ]
    if request_id:
        lines.append(b"X-Request-Id: " + request_id + b"\r\n")
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    lines.append(body)
    return b"".join(lines)


class AdaptiveSlot:
    """A cluster's gradient concurrency limit in this worker, and its requests in flight."""

    __slots__ = ("in_flight", "limit", "settings")

    def __init__(self, settings: AdaptiveConcurrency) -> None:
        self.settings = settings
        self.in_flight = 0
        self.limit = GradientLimit(
            GradientSettings(
                initial=settings.initial,
                min_limit=settings.min_limit,
                max_limit=settings.max_limit,
                smoothing=settings.smoothing,
                tolerance=settings.tolerance,
                window=settings.window,
                min_samples=settings.min_samples,
            )
        )


class Pool:
    """The endpoints of one cluster, their health and their idle connections."""

    def __init__(self, cluster: Cluster, now: float) -> None:
        self.cluster = cluster
        self.endpoints: list[Endpoint] = []
        self.by_address: dict[str, Endpoint] = {}
        self.picker: Picker = make_picker(cluster.lb.policy, cluster.lb.bounded_load)
        self.outlier = OutlierDetector(cluster.outlier)
        self.unhealthy: frozenset[str] = frozenset()
        self.routable: Sequence[Endpoint] = ()
        self.panic = False
        self.next_refresh = math.inf
        self.idle: dict[str, list[UpstreamConnection]] = {}
        self.hash_on = cluster.lb.hash_on
        self.ewma = cluster.lb.policy == "ewma"  # read per try: a plain attribute
        self.refresh(now)

    def reconfigure(self, cluster: Cluster, now: float) -> None:
        if cluster.lb != self.cluster.lb:
            self.picker = make_picker(cluster.lb.policy, cluster.lb.bounded_load)
            self.hash_on = cluster.lb.hash_on
            self.ewma = cluster.lb.policy == "ewma"
        if cluster.outlier != self.cluster.outlier:
            self.outlier.config = cluster.outlier
        self.cluster = cluster
        self.refresh(now)

    def set_endpoints(self, upstreams: Iterable[tuple[str, int]], now: float) -> None:
        endpoints: list[Endpoint] = []
        for address, weight in upstreams:
            e = self.by_address.get(address)
            if e is None:
                e = Endpoint(address, weight)
            e.weight = weight
            endpoints.append(e)
        keep = {e.address for e in endpoints}
        for address in sorted(self.idle):
            if address not in keep:
                for conn in self.idle.pop(address):
                    conn.close()
        self.endpoints = endpoints
        self.by_address = {e.address: e for e in endpoints}
        self.outlier.set_pool([e.address for e in endpoints])
        self.refresh(now)

    def set_unhealthy(self, addresses: frozenset[str], now: float) -> None:
        if addresses != self.unhealthy:
            self.unhealthy = addresses
            self.refresh(now)

    def refresh(self, now: float) -> None:
        excluded = [
            e
            for e in self.endpoints
            if e.address in self.unhealthy or self.outlier.is_ejected(e.address, now)
        ]
        threshold = self.cluster.outlier.panic_threshold
        chosen, self.panic = routable(self.endpoints, excluded, threshold)
        self.routable = tuple(chosen)
        self.next_refresh = self.outlier.next_change(now) or math.inf

    def pick(self, rng: Random, key: bytes | None, tried: Sequence[str]) -> Endpoint | None:
        candidates = self.routable
        if not candidates:
            return None
        if tried:
            fresh = [e for e in candidates if e.address not in tried]
            if fresh:
                return self.picker.pick(fresh, rng, None)
        return self.picker.pick(candidates, rng, key)

    def take_idle(self, endpoint: Endpoint) -> UpstreamConnection | None:
        conns = self.idle.get(endpoint.address)
        while conns:
            conn = conns.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def put_idle(self, conn: UpstreamConnection, now: float) -> None:
        if conn.endpoint.address not in self.by_address:
            conn.close()
            return
        conns = self.idle.setdefault(conn.endpoint.address, [])
        if len(conns) >= MAX_IDLE_PER_ENDPOINT:
            conn.close()
            return
        conn.idle_since = now
        conns.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        conns = self.idle.get(conn.endpoint.address)
        if conns and conn in conns:
            conns.remove(conn)

    def expire_idle(self, now: float, idle_timeout: float) -> None:
        for conns in self.idle.values():
            while conns and now - conns[0].idle_since > idle_timeout:
                conns.pop(0).close()

    def close(self) -> None:
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()


class Gateway:
    """One worker's data plane: the route table, the pools and the client connections."""

    def __init__(
        self,
        table: RouteTable,
        limits: Limits | None = None,
        *,
        rng: Random,
        scheme: str = "http",
        metrics: Metrics | None = None,
        worker: str = "0",
        workers: int = 1,
        collector: Callable[[], str | None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.worker = worker
        self.workers = workers
        # Platform mode: where spans go when the config names no collector.
        self.collector = collector
        self.policies: Policies | None = None
        self.recorder: Recorder | None = None
        self._load_at = (0.0, 0.0)  # (loop time, process CPU time) of the last load sample
        self.limits = limits or Limits()
        # The limits read on every request, as plain attributes: each read of a (frozen)
        # pydantic model's field is a type lookup and a dict lookup.
        self.max_header_bytes: int = self.limits.max_header_bytes
        self.max_body_bytes: int = self.limits.max_body_bytes
        self.header_timeout: float = self.limits.header_timeout
        self.idle_timeout: float = self.limits.idle_timeout
        self.retry_buffer_bytes: int = self.limits.retry_buffer_bytes
        self.rng = rng
        self._hex_pool = b""  # random hex digits, sliced into ids (``random_hex``)
        self._hex_at = 0
        self.scheme = scheme.encode()
        # The constant middle of the lines every request gets, joined once.
        self.forwarded_proto = b"\r\nX-Forwarded-Proto: " + self.scheme + b"\r\nX-Forwarded-Host: "
        self.metrics = metrics or Metrics()
        self.now = self.loop.time()
        self.table = table
        self.pools: dict[str, Pool] = {}
        self.budgets: dict[str, RetryBudget] = {}
        # Cluster key → its gradient limit, for clusters of routes with adaptive_concurrency.
        self.adaptive: dict[str, AdaptiveSlot] = {}
        self.connections: set[ClientConnection] = set()
        self.service_endpoints: dict[str, tuple[tuple[str, int], ...]] = {}
        self.unhealthy: dict[str, frozenset[str]] = {}
        self.on_sweep: list[Callable[[float], None]] = []
        self.on_ejection: Callable[[str, str, str], None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self.mirrors: dict[str, int] = {}  # route → shadow copies in flight
        self.side_tasks: set[asyncio.Task[None]] = set()
        # Route name → plugin chain; None when no route has plugins (one test per request).
        self.plugins: dict[str, PluginChain] | None = None
        self.plugin_processes: dict[tuple[str, str | None], PluginProcess] = {}
        self.plugins_generation = -1  # of the config applied; -1: nothing applied yet
        self.apply(table)

    # --- configuration (off the hot path) -------------------------------------------------

    def apply(self, table: RouteTable) -> None:
        """Swap in a compiled route table; pools of unchanged clusters keep their state."""
        now = self.now
        pools: dict[str, Pool] = {}
        for key, cluster in table.clusters.items():
            pool = self.pools.get(key)
            if pool is None:
                pool = Pool(cluster, now)
            else:
                pool.reconfigure(cluster, now)
            service = cluster.service
            if service is not None:
                pool.set_endpoints(self.service_endpoints.get(service, ()), now)
            else:
                pool.set_endpoints(cluster.upstreams, now)
            pool.set_unhealthy(self.unhealthy.get(key, frozenset()), now)
            pools[key] = pool
        for key, pool in self.pools.items():
            if key not in pools:
                pool.close()
        budgets = {}
        for route in table.routes:
            old = self.budgets.get(route.name)
            percent = route.retries.budget_percent
            budgets[route.name] = (
                old if old is not None and old.percent == percent else RetryBudget(percent)
            )
        adaptive: dict[str, AdaptiveSlot] = {}
        for route in table.routes:
            settings = route.adaptive
            if settings is None:
                continue
            # The first route (in match order) naming a cluster sets its limit's settings.
            for key in (route.cluster, *(key for _, key in route.backends)):
                if key not in adaptive:
                    slot = self.adaptive.get(key)
                    same = slot is not None and slot.settings == settings
                    adaptive[key] = slot if slot is not None and same else AdaptiveSlot(settings)
        self.pools, self.budgets, self.table, self.adaptive = pools, budgets, table, adaptive
        self._apply_policies(table)
        self._apply_telemetry(table)
        self._apply_plugins(table)

    def _apply_plugins(self, table: RouteTable) -> None:
        specs = [(r.name, r.route.plugins) for r in table.routes if r.route.plugins]
        generation = table.config.plugins_generation if table.config is not None else 0
        if generation != self.plugins_generation:
            # The admin API's reload: a config version, so every worker re-imports.
            if self.plugins_generation >= 0:
                reload_modules([s for _, route in specs for s in route])
            self.plugins_generation = generation
        if not specs and not self.plugin_processes:
            self.plugins = None
            return
        if self.plugins is not None:  # log records batched under the old chains
            for chain in self.plugins.values():
                chain.flush_logs()
        chains, processes = build_chains(specs, self.plugin_processes, self.loop, self.count)
        for key, process in self.plugin_processes.items():
            if key not in processes:
                task = self.loop.create_task(process.close())
                self.side_tasks.add(task)
                task.add_done_callback(self.side_tasks.discard)
        self.plugins = chains or None
        self.plugin_processes = processes

    def reload_plugins(self) -> list[str]:
        """Re-import every in-process plugin module and rebuild the chains (budgets start
        over, so disabled plugins come back); returns the reloaded module names."""
        specs = [s for r in self.table.routes for s in r.route.plugins]
        names = reload_modules(specs)
        self._apply_plugins(self.table)
        return names

    def _apply_policies(self, table: RouteTable) -> None:
        if any(r.guarded for r in table.routes) or self.policies is not None:
            old = self.policies
            self.policies = Policies.build(
                table, old, worker=self.worker, workers=self.workers, rng=self.rng
            )
            if old is None:  # counts made before policies existed (mirrors, validation)
                self.policies.counts.update(self.metrics.policy_counts)
            self.metrics.policy_counts = self.policies.counts
            if not self.policies.routes and not self.policies.waiting:
                self.policies = None

    def _apply_telemetry(self, table: RouteTable) -> None:
        config = table.config
        telemetry = config.telemetry if config is not None else None
        access_log = config.access_log if config is not None else None
        url = telemetry.zipkin if telemetry is not None else None
        fallback = self.collector
        enabled = telemetry.enabled if telemetry is not None else True
        spans = enabled and (url is not None or fallback is not None)
        if not spans and access_log is None:
            old = self.recorder
            if old is not None:
                self.recorder = self.metrics.recorder = None
                self.loop.create_task(old.close(self.loop))  # flushes what it holds, then ends
            return
        recorder = self.recorder
        if recorder is None:
            recorder = self.recorder = Recorder(zipkin=lambda: None, access_log=None)
            self.metrics.recorder = recorder
            if self._sweeper is not None:
                recorder.start(self.loop)

        def zipkin() -> str | None:
            if url is not None:
                return url
            return fallback() if fallback is not None else None

        recorder.zipkin = zipkin
        recorder.spans_on = spans
        recorder.access_log = access_log
        if telemetry is not None:
            recorder.service = telemetry.service_name
            recorder.max_buffer = telemetry.max_buffer

    def random_hex(self, digits: int) -> bytes:
        """``digits`` random lower-case hex digits, from ``rng``: sliced from a pool drawn 4 KiB
        at a time (a draw per id — its int, bytes and hex — was ~1,300 instructions a request)."""
        at = self._hex_at
        if at + digits > len(self._hex_pool):
            self._hex_pool = self.rng.randbytes(4096).hex().encode()
            at = 0
        self._hex_at = at + digits
        return self._hex_pool[at : at + digits]

    def set_endpoints(self, service: str, upstreams: Iterable[tuple[str, int]]) -> None:
        """Platform mode: the addresses (and weights) of ``service``'s routable instances."""
        endpoints = tuple(upstreams)
        self.service_endpoints[service] = endpoints
        pool = self.pools.get(f"service:{service}")
        if pool is not None:
            pool.set_endpoints(endpoints, self.now)

    def set_unhealthy(self, unhealthy: Mapping[str, Iterable[str]]) -> None:
        """Active-check results: cluster key → addresses failing their checks."""
        self.unhealthy = {k: frozenset(v) for k, v in unhealthy.items()}
        for key, pool in self.pools.items():
            pool.set_unhealthy(self.unhealthy.get(key, frozenset()), self.now)

    # --- serving --------------------------------------------------------------------------

    def protocol(self) -> ClientConnection:
        return ClientConnection(self)

    async def listen(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl: Any = None,
        reuse_port: bool = False,
        sock: Any = None,
    ) -> asyncio.AbstractServer:
        if sock is not None:
            server = await self.loop.create_server(self.protocol, sock=sock, ssl=ssl, backlog=1024)
        else:
            server = await self.loop.create_server(
                self.protocol, host, port, ssl=ssl, reuse_port=reuse_port, backlog=1024
            )
        self._servers.append(server)
        self.start()
        return server

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())
            if self.recorder is not None:
                self.recorder.start(self.loop)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                self.sweep(self.loop.time())
            except Exception:
                log.exception("gateway sweep failed")

    def sweep(self, now: float) -> None:
        self.now = now
        for conn in [c for c in self.connections if c.deadline <= now]:
            conn.on_deadline(now)
        idle = self.limits.idle_timeout
        for pool in self.pools.values():
            pool.expire_idle(now, idle)
            if pool.next_refresh <= now:
                pool.refresh(now)
        self.metrics.active_connections = len(self.connections)
        if self.policies is not None:
            self._policy_sweep(self.policies, now)
        if self.plugins is not None:
            for chain in self.plugins.values():
                chain.flush_logs()
        for hook in self.on_sweep:
            hook(now)

    # --- side requests: mirroring -----------------------------------------------------------

    def count(self, route: str, what: str) -> None:
        counts = self.metrics.policy_counts
        counts[(route, what)] = counts.get((route, what), 0) + 1

    def side_request(
        self, endpoint: Endpoint, data: bytes, timeout: float, done: side.Done
    ) -> None:
        """Start a request of the gateway's own (a mirror copy, a cache refresh)."""
        task = self.loop.create_task(
            side.send(
                self.loop,
                endpoint.host,
                endpoint.port,
                data,
                timeout=timeout,
                limit=MAX_SIDE_RESPONSE,
                on_done=done,
            )
        )
        self.side_tasks.add(task)
        task.add_done_callback(self.side_tasks.discard)

    def mirror(self, route: str, mirror: Mirror, head: bytes, body: bytes) -> None:
        """Send a shadow copy of a request; its answer is read and dropped. A copy never
        waits: over ``max_in_flight`` or without an endpoint it is skipped (and counted)."""
        in_flight = self.mirrors.get(route, 0)
        pool = self.pools.get(mirror.cluster)
        endpoint = pool.pick(self.rng, None, ()) if pool is not None else None
        if in_flight >= mirror.max_in_flight or endpoint is None:
            self.count(route, "mirror_skipped")
            return
        self.mirrors[route] = in_flight + 1

        def done(status: int, _head: bytes, _body: bytes) -> None:
            self.mirrors[route] = self.mirrors.get(route, 1) - 1
            self.count(route, "mirror_failed" if status == 0 else "mirrored")

        data = side.close_head(head, b"X-Corral-Mirror: 1\r\n") + body
        self.side_request(endpoint, data, mirror.timeout, done)

    # --- policies (their state lives in ``Policies``; this is the I/O side) ----------------

    def _policy_sweep(self, policies: Policies, now: float) -> None:
        shedder = policies.shedder
        if shedder is not None:
            # Loop lag: how late this sweep ran; CPU: this process's share of one core since
            # the last sample (the worker is single-threaded, so one core is its ceiling).
            cpu_now = time.process_time()
            last_at, last_cpu = self._load_at
            self._load_at = (now, cpu_now)
            if last_at:
                wall = now - last_at
                lag = max(0.0, wall - SWEEP_SECONDS)
                cpu = (cpu_now - last_cpu) / wall if wall > 0 else 0.0
                shedder.observe_load(cpu, lag, now)
        policies.expire(now)
        self.drain_policies(now)
        if policies.transitions:
            transitions, policies.transitions = policies.transitions, []
            for route, cluster, t in transitions:
                self.metrics.breaker_transition(route, cluster, t.target)
                log.warning(
                    "gateway: breaker %s→%s %s → %s (%s: %s)",
                    route,
                    cluster,
                    t.source,
                    t.target,
                    t.event,
                    t.reason,
                )
        self.metrics.breaker_states = {
            f"{route}|{cluster}": breaker.state
            for (route, cluster), breaker in sorted(policies.breakers.items())
        }

    def drain_policies(self, now: float) -> None:
        """Answer parked requests that were shed and start those whose slot came."""
        policies = self.policies
        if policies is None:
            return
        while policies.shed or policies.ready:
            if policies.shed:
                guard = policies.shed.pop(0)
                owner = guard.owner
                if isinstance(owner, ClientConnection):
                    owner.refused_while_parked(guard)
            else:
                guard = policies.ready.pop(0)
                owner = guard.owner
                if isinstance(owner, ClientConnection):
                    owner.unpark(guard, now)
                else:
                    policies.abandon(guard, now)

    async def close(self, drain: float | None = None) -> None:
        """Stop accepting, let requests in flight finish (up to ``drain`` s), close the rest."""
        for server in self._servers:
            server.close()
        for conn in list(self.connections):
            if conn.state == _HEAD and not conn.buf:
                conn.close()
        limit = self.loop.time() + (self.limits.drain if drain is None else drain)
        while self.connections and self.loop.time() < limit:
            await asyncio.sleep(0.05)
            for conn in list(self.connections):
                if conn.state == _HEAD and not conn.buf:
                    conn.close()
        for conn in list(self.connections):
            conn.abort()
        for task in list(self.side_tasks):
            task.cancel()
        for pool in self.pools.values():
            pool.close()
        if self.plugins is not None:
            for chain in self.plugins.values():
                chain.flush_logs()
        for process in self.plugin_processes.values():
            await process.close()
        self.plugin_processes = {}
        if self.recorder is not None:
            await self.recorder.close(self.loop)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


class ClientConnection(asyncio.Protocol):
    """One client (downstream) connection."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.state = _HEAD
        self.deadline = math.inf
        self.deadline_kind = _D_NONE
        self.read_paused = 0
        self.write_paused = False
        self.peer = b""
        self.upstream: UpstreamConnection | None = None
        self.counted = False
        # The request in flight.
        self._url = b""
        self._keep_alive = True
        self._http10 = False
        self._upgrade = False
        self.method = "GET"
        self.framer: BodyFramer | None = None
        self.route: CompiledRoute | None = None
        self.pool: Pool | None = None
        self.endpoint: Endpoint | None = None
        self.out_head = b""
        self.pending: list[bytes] = []
        self.kept: list[bytes] | None = None
        self.kept_size = 0
        self.tried: list[str] = []
        self.hash_key: bytes | None = None
        self.request_id = b""
        self.started = 0.0
        self.try_started = 0.0
        self.total_deadline = math.inf
        self.responded = False  # response head sent to the client
        self.request_done = False
        self.status = 0
        self.pending_head = b""
        self._head = b""
        self._lower = b""
        self._parser: Any = None
        self._message_complete = False
        self._processing = False
        # Traffic policies and telemetry: set only for guarded routes / when recording.
        self.cluster = ""
        self.guard: Guard | None = None
        self.parked = _WAIT  # the state to return to when a parked request gets its slot
        self.capture: list[bytes] | None = None  # response bytes kept for the cache
        self.capture_size = 0
        self.capture_head = b""
        self.tries_log: list[tuple[bytes, str, float, float, int, str]] | None = None
        self.try_span = b""
        self.server_span = b""
        self.parent_span: bytes | None = None
        self.trace_id = b""
        self.host_b = b""
        self.path = ""
        # Rarer per-request features (``CompiledRoute.extra``): validation, mirroring.
        self.special = False  # some of the fields below may be set: reset them after
        self.hold: list[bytes] | None = None  # a body held back until it is validated
        self.held: RouteMatch | None = None
        self.held_at: tuple[str, str, str] = ("", "", "")  # host, path, query
        self.ready_body: list[bytes] | None = None  # a validated body, sent with the first try
        self.mirror_body: list[bytes] | None = None  # a streamed body copied for the mirror
        self.mirror_size = 0
        self.chain: PluginChain | None = None  # this request's route has plugins
        self.adaptive_slot: AdaptiveSlot | None = None  # the gradient limit this request holds
        self.adaptive_at = 0.0  # when it took its place in that limit
        self.plugin_request: PluginRequest | None = None
        self.plugin_wait: object | None = None  # token while an out-of-process plugin answers

    # --- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        gw = self.gw
        if len(gw.connections) >= gw.limits.max_connections:
            gw.metrics.refused_connections += 1
            transport.write(_simple_response(503, "too many connections", close=True))
            transport.close()
            self.state = _CLOSED
            return
        gw.connections.add(self)
        self.counted = True
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = str(peer[0]).encode()
        self._set_deadline(_D_HEADERS, gw.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        if self.adaptive_slot is not None:
            self._adaptive_done(0.0, sample=False)
        if self.counted:
            self.gw.connections.discard(self)
            self.counted = False
        guard = self.guard
        if guard is not None:
            self.guard = None
            policies = self.gw.policies
            if policies is not None:
                now = self.gw.loop.time()
                policies.abandon(guard, now)
                self.gw.drain_policies(now)
        up = self.upstream
        if up is not None:
            self.upstream = None
            if self.endpoint is not None:
                self.endpoint.active -= 1
                self.endpoint = None
            up.client = None
            up.abort()

    def data_received(self, data: bytes) -> None:
        if self.state == _TUNNEL:
            up = self.upstream
            if up is not None and up.transport is not None:
                up.transport.write(data)
            return
        if self.state == _CLOSED:
            return
        buf = self.buf
        if not buf and self.state == _HEAD and data.endswith(b"\r\n\r\n"):
            end = _head_end(data)
            if end == len(data) - 4 and end + 4 <= self.gw.max_header_bytes:
                # The common case, one whole head with no body: no copy into the buffer.
                self._processing = True
                try:
                    self._start(data)
                    if self.state != _HEAD:
                        self._process()
                except Exception:
                    log.exception("gateway: request handling failed")
                    self._fail(500, "internal error")
                finally:
                    self._processing = False
                return
        buf += data
        self._run()

    def _run(self) -> None:
        if self._processing:  # re-entered from a response finishing inside _process
            return
        self._processing = True
        try:
            self._process()
        except Exception:
            log.exception("gateway: request handling failed")
            self._fail(500, "internal error")
        finally:
            self._processing = False

    def eof_received(self) -> bool | None:
        up = self.upstream
        if self.state == _TUNNEL and up is not None and up.transport is not None:
            if up.transport.can_write_eof():  # the client finished sending: so do we
                up.transport.write_eof()
            return True
        if self.state == _HEAD and not self.buf:
            return None
        # A half-closed client still gets its response (HTTP/1.0-style clients do this).
        self._keep_alive = False
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        up = self.upstream
        if up is not None and up.transport is not None and not up.read_paused:
            up.read_paused = True
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.upstream
        if up is not None and up.transport is not None and up.read_paused:
            up.read_paused = False
            up.transport.resume_reading()

    # --- httptools callbacks (the head only) ----------------------------------------------

    def on_url(self, url: bytes) -> None:
        self._url = url

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._keep_alive = parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._message_complete = True

    # --- request path ---------------------------------------------------------------------

    def _process(self) -> None:
        buf = self.buf
        while True:
            state = self.state
            if state == _HEAD:
                if not buf:
                    return
                if buf[:2] == b"\r\n":  # empty lines before a request line are allowed
                    del buf[:2]
                    continue
                end = buf.find(b"\r\n\r\n")
                limit = self.gw.max_header_bytes
                if end < 0:
                    if len(buf) > limit:
                        self._fail(431, "request head too large")
                    elif self.deadline_kind != _D_HEADERS:
                        self._set_deadline(_D_HEADERS, self.gw.header_timeout)
                    return
                if end + 4 > limit:
                    self._fail(431, "request head too large")
                    return
                head = bytes(buf[: end + 4])
                del buf[: end + 4]
                self._start(head)
            elif state == _BODY:
                if not buf:
                    return
                framer = self.framer
                assert framer is not None
                try:
                    n, done = framer.feed(buf)
                except FramingError as error:
                    self._fail(400, f"malformed body: {error}")
                    return
                if framer.body_bytes > self.gw.max_body_bytes:
                    self._fail(413, "request body too large")
                    return
                if n:
                    chunk = bytes(buf[:n])
                    del buf[:n]
                    if self.hold is not None:
                        self.hold.append(chunk)
                    else:
                        self._send(chunk)
                if not done:
                    return
                self.state = _WAIT
                self.request_done = True
                if self.special:
                    self._body_done()
            else:
                backlog = len(buf) > self.gw.max_header_bytes
                if backlog and state in (_WAIT, _PARKED):
                    self._pause_reading(_READ_BACKLOG)
                return

    def _lower_head(self) -> bytes:
        if not self._lower:
            self._lower = self._head.lower()
        return self._lower

    def _header(self, name: str) -> str | None:
        key = b"\r\n" + name.lower().encode("latin-1") + b":"
        value = _value(self._head, self._lower_head(), key)
        return None if value is None else value.decode("latin-1")

    def _start(self, head: bytes) -> None:
        gw = self.gw
        # One parser per connection, reused while every head it saw was a whole message: a
        # parser costs about as much to make as to run. After a body, an upgrade or an error
        # it is not in its start state (we never feed it bodies), so the next head gets a new one.
        parser = self._parser
        if parser is None:
            parser = self._parser = httptools.HttpRequestParser(self)
        self._upgrade = False
        self._message_complete = False
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            self._upgrade = True
        except httptools.HttpParserError:
            self._parser = None
            self._fail(400, "malformed request")
            return
        if not self._message_complete:
            self._parser = None
        method = parser.get_method().decode("latin-1")
        self.method = method
        self._head = head
        self._lower = b""  # lower-cased on demand (``_lower_head``)
        self.started = gw.loop.time()
        self.responded = False
        self.request_done = False
        self.tried = []
        self.route = None
        cut = _HOP_BY_HOP_UPGRADE if self._upgrade else _HOP_BY_HOP
        if _compiled_scan is not None:
            caseless, single, hop, hop_upgrade = _REQUEST_MASKS
            values, cutting, repeated = _compiled_scan(
                head, _REQUEST_NAMES, caseless, single, hop_upgrade if self._upgrade else hop
            )
            if repeated is not None:
                self._fail(400, f"more than one {repeated.decode()} header")
                return
        else:
            try:
                values, cutting = _scan(_REQUEST_SCAN, self._lower_head(), cut)
            except _BadHead as error:
                self._fail(400, f"more than one {error} header")
                return
        te = values.get(b"transfer-encoding")
        cl = values.get(b"content-length")
        if te is not None:
            if cl is not None or not te.lower().endswith(b"chunked"):
                self._fail(400, "ambiguous or unsupported transfer-encoding")
                return
            self.framer = BodyFramer(chunked=True)
        elif cl is not None and cl != b"0":
            length = int(cl)
            if length > gw.max_body_bytes:
                self._fail(413, "request body too large")
                return
            self.framer = BodyFramer(length)
        else:
            self.framer = _NO_BODY
        if method == "CONNECT":
            self._fail(405, "CONNECT is not supported")
            return
        url = self._url
        if url[:1] != b"/":  # absolute-form (a client that thinks we are a forward proxy)
            scheme_end = url.find(b"://")
            slash = url.find(b"/", scheme_end + 3) if scheme_end >= 0 else -1
            url = url[slash:] if slash >= 0 else b"/"
        q = url.find(b"?")
        path = (url if q < 0 else url[:q]).decode("latin-1")
        query = "" if q < 0 else url[q + 1 :].decode("latin-1")
        host_b = values.get(b"host", b"")
        host = host_b.decode("latin-1")
        found = gw.table.match(method, host, path, query, self._header)
        if found is None:
            self._fail(404, f"no route for {method} {host}{path}", close=not self.framer.done)
            return
        route = self.route = found.route
        # The head sent upstream: the client's lines minus hop-by-hop ones, plus ours.
        spans = _line_spans(_REQUEST_SCAN, self._lower_head(), cut) if cutting else []
        if route.remove_headers or route.add_headers:
            names = {b"\r\n" + n.encode() + b":" for n in route.remove_headers}
            names.update(b"\r\n" + k.lower().encode() + b":" for k, _ in route.add_headers)
            spans.extend(_spans(head, self._lower_head(), sorted(names)))
        out = _without(head, spans) if spans else head
        if route.rewrite_prefix is None and route.rewrite_path is None:
            new_path = path
        else:
            new_path = route.upstream_path(path, found.params)
        if new_path != path or url is not self._url:
            line_end = out.find(b"\r\n")
            target = new_path.encode("latin-1") + (b"?" + url[q + 1 :] if q >= 0 else b"")
            version = out[line_end - 8 : line_end]
            out = method.encode() + b" " + target + b" " + version + out[line_end:]
        # One slice of random hex gives the span id and, when the request starts a trace, the
        # trace id too.
        ids = gw.random_hex(48)
        if b"traceparent" in values or b"x-b3-traceid" in values or b"b3" in values:
            trace_id, sampled = self._trace(values, ids)
        else:  # nothing to continue: a new trace (``_trace``'s last line, without the call)
            trace_id, sampled = ids[:32], b"-01"
        if gw.recorder is not None:
            self._trace_ids(values, trace_id, ids, host_b, path)
        request_id = values.get(b"x-request-id")
        if request_id is not None and _compiled_scan is None:  # opaque: keep the client's case
            request_id = _value(head, self._lower_head(), b"\r\nx-request-id:") or request_id
        xff = values.get(b"x-forwarded-for")
        extra = [
            out[:-2],
            b"X-Forwarded-For: ",
            (xff + b", " + self.peer) if xff else self.peer,
            gw.forwarded_proto,
            host_b,
            b"\r\ntraceparent: 00-",
            trace_id,
            b"-",
            ids[32:],
            sampled,
            b"\r\n",
        ]
        if request_id is None:
            request_id = trace_id
            extra.append(b"X-Request-Id: " + request_id + b"\r\n")
        self.request_id = request_id
        for name, value in route.add_headers:
            extra.append(name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n")
        if self._upgrade:
            self._keep_alive = False  # after a refused upgrade the connection is not reused
        extra.append(b"\r\n")
        self.out_head = b"".join(extra)
        if self.framer is _NO_BODY or self.framer.done:
            self.state = _WAIT
            self.request_done = True
        else:
            self.state = _BODY
        retries = route.retries
        can_retry = retries.attempts > 0 and (retries.retryable or method in IDEMPOTENT)
        self.kept = [] if can_retry else None
        self.kept_size = 0
        pool = gw.pools.get(route.cluster)
        self.hash_key = None if pool is None or pool.hash_on is None else self._hash_key(pool)
        self.total_deadline = gw.now + route.timeouts.total
        gw.budgets[route.name].on_request()
        self.cluster = route.cluster
        plugins = gw.plugins
        if plugins is not None:
            chain = plugins.get(route.name)
            if chain is not None and self._plugins(chain, found, method, host, path, query):
                return
        self._admit(found, method, host, path, query)

    def _admit(self, found: RouteMatch, method: str, host: str, path: str, query: str) -> None:
        """The rarer features, the traffic policies, then the first try: the tail of
        ``_start``, and where an out-of-process plugin's answer resumes a request."""
        route = found.route
        gw = self.gw
        if route.extra and self._extras(found, method, host, path, query):
            return
        if route.guarded and gw.policies is not None:
            view = RequestView(
                method,
                host,
                path,
                query,
                self.peer.decode(),
                self._header,
                self._cookie,
                found.params,
            )
            self._guarded(gw.policies.admit(route, view, self, gw.loop.time()))
            return
        self._begin_try()

    # --- plugins (routes in ``Gateway.plugins`` only) --------------------------------------

    def _plugins(
        self, chain: PluginChain, found: RouteMatch, method: str, host: str, path: str, query: str
    ) -> bool:
        """Run the route's ``on_request`` hooks; True when they took the request over."""
        self.special = True
        self.chain = chain
        request = self.plugin_request = PluginRequest(
            chain.route,
            method,
            host,
            path,
            query,
            self.peer.decode(),
            self.request_id.decode("latin-1"),
            self._head,
        )
        token = self.plugin_wait = object()

        def resume(answer: Respond | None) -> None:
            if self.plugin_wait is not token or self.state == _CLOSED:
                return
            try:
                self._plugins_done(found, answer)
            except Exception:
                log.exception("gateway: request handling failed after a plugin")
                self._fail(500, "internal error")

        outcome = chain.on_request(request, resume)
        if outcome is PENDING:
            if not self.request_done:
                self.hold = []  # body bytes wait for the plugin's verdict
            return True
        self.plugin_wait = None
        if outcome is not None:
            self._plugin_answer(outcome)
            return True
        if request.edited:
            self.out_head = request.apply(self.out_head)
        return False

    def _plugins_done(self, found: RouteMatch, answer: Respond | None) -> None:
        """An out-of-process plugin answered (or timed out): go on with the request."""
        self.plugin_wait = None
        held, self.hold = self.hold, None
        if answer is not None:
            self._plugin_answer(answer)
            return
        request = self.plugin_request
        if request is not None and request.edited:
            self.out_head = request.apply(self.out_head)
        self.ready_body = held or None
        assert request is not None
        self._admit(found, self.method, request.host, request.path, request.query)
        hold = self._holding()
        if hold is not None and held:  # validation now holds the body: it came first
            hold[:0] = held
            self.ready_body = None
        if hold is not None and self.request_done:
            self._validate_held()
        elif self.state == _BODY and self.buf:
            self._run()

    def _holding(self) -> list[bytes] | None:
        return self.hold  # re-read after a call that may have set it

    def _plugin_answer(self, answer: Respond) -> None:
        close = not self.request_done or not self._keep_alive
        data = answer.render(close=close, request_id=self.request_id)
        self._answer_local(answer.status, data, close)

    # --- validation, mirroring and admin switches (``route.extra`` only) -------------------

    def _extras(self, found: RouteMatch, method: str, host: str, path: str, query: str) -> bool:
        """Run a route's rarer features; True when they took the request over (answered it,
        or hold its body until it is validated)."""
        route = found.route
        self.special = True
        if route.off:
            self.gw.count(route.name, "turned_off")
            self._answer_error(503, f"route {route.name} is turned off")
            return True
        if route.force_fallback and route.fallback is not None:
            self.gw.count(route.name, "forced_fallback")
            close = not self.request_done or not self._keep_alive
            data = render_fallback(
                route.fallback,
                head_only=method == "HEAD",
                close=close,
                extra=self._extra_headers(None),
            )
            self._answer_local(route.fallback.status, data, close)
            return True
        validator = route.validator
        if validator is not None:
            framer = self.framer
            assert framer is not None
            has_body = not framer.done
            length = None if framer.chunked else framer.remaining
            failure = validator.check_head(method, self._header, query, has_body, length)
            if failure is None and validator.wants_body(method, has_body):
                if has_body:
                    self.hold = []
                    self.held = found
                    self.held_at = (host, path, query)
                    return True
                failure = validator.check_body(b"")
            if failure is not None:
                self.gw.count(route.name, "invalid")
                self._answer_error(failure.status, failure.message)
                return True
        if route.mirror is not None:
            self._mirror_begin(route.mirror, route.name, b"" if self.request_done else None)
        return False

    def _mirror_begin(self, mirror: Mirror, route: str, body: bytes | None) -> None:
        """Maybe copy this request to the mirror: now when its ``body`` is known, else when
        the streamed body ends."""
        gw = self.gw
        if mirror.fraction < 1.0 and gw.rng.random() >= mirror.fraction:
            return
        if body is not None:
            gw.mirror(route, mirror, self.out_head, body)
        else:
            self.mirror_body = []
            self.mirror_size = 0

    def _body_done(self) -> None:
        """The request body has all arrived (a route with ``extra`` features)."""
        if self.plugin_wait is not None:
            return  # held until the plugin answers
        if self.hold is not None:
            self._validate_held()
            return
        copy = self.mirror_body
        route = self.route
        if copy is not None and route is not None and route.mirror is not None:
            self.mirror_body = None
            self.gw.mirror(route.name, route.mirror, self.out_head, b"".join(copy))

    def _validate_held(self) -> None:
        hold, found = self.hold, self.held
        self.hold = self.held = None
        assert hold is not None and found is not None and self.framer is not None
        route = found.route
        validator = route.validator
        assert validator is not None
        raw = b"".join(hold)
        try:
            body = dechunk(raw) if self.framer.chunked else raw
        except FramingError as error:
            self._answer_error(400, f"malformed body: {error}")
            return
        failure = validator.check_body(body)
        if failure is not None:
            self.gw.count(route.name, "invalid")
            self._answer_error(failure.status, failure.message)
            return
        self.ready_body = hold
        if route.mirror is not None:
            self._mirror_begin(route.mirror, route.name, raw)
        host, path, query = self.held_at
        gw = self.gw
        if route.guarded and gw.policies is not None:
            view = RequestView(
                self.method,
                host,
                path,
                query,
                self.peer.decode(),
                self._header,
                self._cookie,
                found.params,
            )
            self._guarded(gw.policies.admit(route, view, self, gw.loop.time()))
            return
        self._begin_try()

    def _reset_special(self) -> None:
        self.special = False
        self.hold = self.held = self.ready_body = self.mirror_body = None
        self.chain = self.plugin_request = self.plugin_wait = None

    # --- traffic policies (guarded routes only) -------------------------------------------

    def _cookie(self, name: str) -> str | None:
        cookies = _value(self._head, self._lower_head(), b"\r\ncookie:")
        if cookies is None:
            return None
        want = name.encode("latin-1")
        for part in cookies.split(b";"):
            key, _, value = part.strip().partition(b"=")
            if key == want:
                return value.decode("latin-1")
        return None

    def _guarded(self, guard: Guard) -> None:
        kind = guard.kind
        if kind == GO:
            self.guard = guard
            self.cluster = guard.cluster
            if guard.cacheable:
                self.capture = []
                self.capture_size = 0
            self._begin_try()
        elif kind == WAIT:
            self.guard = guard
            self.parked = self.state
            self.state = _PARKED
            self.deadline = math.inf
            self.deadline_kind = _D_NONE
        elif kind == HIT:
            entry = guard.entry
            assert entry is not None
            if guard.refresh:
                self._refresh(guard)
            close = not self.request_done or not self._keep_alive
            state = b"X-Cache: UPDATING\r\n" if guard.updating else b"X-Cache: HIT\r\n"
            data = render_cached(
                entry,
                head_only=self.method == "HEAD",
                close=close,
                extra=self._extra_headers(guard, state),
                now=self.gw.loop.time(),
            )
            self._answer_local(entry.status, data, close)
        else:
            self._refused(guard)

    def _refresh(self, guard: Guard) -> None:
        """stale-while-revalidate: refetch a stale entry in the background, once (the cache
        decides who starts it), while this request is answered from the stale entry."""
        gw = self.gw
        pool = gw.pools.get(guard.cluster)
        endpoint = pool.pick(gw.rng, None, ()) if pool is not None else None
        route = self.route
        if endpoint is None or route is None:
            return
        head, lower = self._head, self._lower_head()

        def header(name: str) -> str | None:  # this request's headers, for the Vary key
            value = _value(head, lower, b"\r\n" + name.lower().encode("latin-1") + b":")
            return None if value is None else value.decode("latin-1")

        r = guard.request
        view = RequestView("GET", r.host, r.path, r.query, r.client_ip, header, r.cookie, r.params)
        out = self.out_head
        if self.method == "HEAD":
            out = b"GET" + out[4:]
        rt = guard.rt

        def done(status: int, response_head: bytes, body: bytes) -> None:
            policies = gw.policies
            stored = status != 0 and policies is not None
            if stored and policies is not None:
                stored = policies.store_for(rt, view, status, response_head, body, gw.loop.time())
            gw.count(rt.name, "cache_refreshed" if stored else "cache_refresh_failed")

        gw.side_request(endpoint, side.close_head(out), route.timeouts.per_try, done)

    def _extra_headers(self, guard: Guard | None, more: bytes = b"") -> bytes:
        parts = [more]
        if guard is not None:
            parts.append(guard.headers)
        if self.request_id:
            parts.append(b"X-Request-Id: " + self.request_id + b"\r\n")
        return b"".join(parts)

    def _refused(self, guard: Guard) -> None:
        close = not self.request_done or not self._keep_alive
        gw = self.gw
        if guard.degrade:
            stale = gw.policies.stale(guard, gw.loop.time()) if gw.policies else None
            if stale is not None:
                extra = self._extra_headers(None, b"X-Cache: STALE\r\n")
                data = render_cached(
                    stale,
                    head_only=self.method == "HEAD",
                    close=close,
                    extra=extra,
                    now=gw.loop.time(),
                )
                self._answer_local(stale.status, data, close, outcome=guard.status)
                return
        if guard.fallback is not None:
            data = render_fallback(
                guard.fallback,
                head_only=self.method == "HEAD",
                close=close,
                extra=self._extra_headers(None),
            )
            self._answer_local(guard.fallback.status, data, close, outcome=guard.status)
            return
        extra = guard.headers
        data = _simple_response(
            guard.status, guard.message, close=close, request_id=self.request_id, extra=extra
        )
        self._answer_local(guard.status, data, close)

    def refused_while_parked(self, guard: Guard) -> None:
        if self.guard is not guard or self.state == _CLOSED:
            return
        self.guard = None
        self.state = self.parked
        self._refused(guard)

    def unpark(self, guard: Guard, now: float) -> None:
        policies = self.gw.policies
        if self.guard is not guard or self.state != _PARKED or policies is None:
            if policies is not None:
                policies.abandon(guard, now)
            return
        self.guard = None
        self.state = self.parked
        self._guarded(policies.resume(guard, now))
        if self.state == _BODY and self.buf:
            self._run()  # body bytes that arrived while the request waited

    def _answer_local(self, status: int, data: bytes, close: bool, outcome: int = 0) -> None:
        """Answer the request from the gateway itself (cache, fallback, refusal)."""
        transport = self.transport
        if transport is None or self.state == _CLOSED:
            return
        self.responded = True
        self._finish(status, self.gw.loop.time(), None, outcome or status)
        transport.write(data)
        if close:
            self._keep_alive = False
            self.close()
        else:
            self._next_request()

    def _finish(self, status: int, now: float, try_latency: float | None, outcome: int) -> None:
        """Account for a request answered with ``status`` (``outcome``: what the upstream
        did, when a fallback or stale entry hid it)."""
        route = self.route
        if route is None:
            return
        if self.adaptive_slot is not None:
            self._adaptive_done(now, sample=try_latency is not None)
        gw = self.gw
        # Exemplars link a latency bucket to a trace only when the trace is being exported.
        exemplar = self.trace_id if gw.recorder is not None else None
        gw.metrics.route(route.name).observe(status, now - self.started, try_latency, exemplar)
        chain = self.chain
        if chain is not None and chain.logs:
            chain.record(
                LogRecord(
                    route.name,
                    self.method,
                    self.plugin_request.host if self.plugin_request is not None else "",
                    self.plugin_request.path if self.plugin_request is not None else "",
                    status,
                    now - self.started,
                    self.request_id.decode("latin-1"),
                    self.peer.decode(),
                )
            )
        guard = self.guard
        if guard is not None:
            self.guard = None
            policies = gw.policies
            if policies is not None:
                capture = self.capture
                if capture is not None:
                    self.capture = None
                    if outcome == status and self.capture_head:
                        policies.store(guard, status, self.capture_head, b"".join(capture), now)
                policies.finish(guard, outcome, now)
                if policies.ready or policies.shed:
                    gw.drain_policies(now)
        recorder = gw.recorder
        if recorder is not None:
            recorder.record(
                (
                    self.trace_id,
                    self.server_span,
                    self.parent_span,
                    self.started,
                    now,
                    self.method,
                    self.host_b,
                    self.path,
                    status,
                    route.name,
                    self.peer,
                    self.request_id,
                    self.tries_log,
                )
            )
            self.tries_log = None

    def _trace_ids(
        self, values: dict[bytes, bytes], trace_id: bytes, ids: bytes, host: bytes, path: str
    ) -> None:
        """Span ids for the recorder: the try's CLIENT span is the id sent in traceparent."""
        self.trace_id = trace_id
        self.try_span = ids[32:]
        self.server_span = self.gw.random_hex(16)
        parent = values.get(b"traceparent")
        self.parent_span = None
        if parent is not None and len(parent) == 55 and parent[3:35] == trace_id:
            self.parent_span = parent[36:52]
        self.tries_log = []
        self.host_b = host
        self.path = path

    def _trace(self, values: dict[bytes, bytes], ids: bytes) -> tuple[bytes, bytes]:
        """The trace id to continue (W3C traceparent, else B3) or a new one; and the flags.

        ``ids`` is 48 random hex digits: the first 32 are the trace id of a new trace."""
        parent = values.get(b"traceparent")
        if parent is not None and len(parent) == 55 and parent[2:3] == b"-":
            trace_id = parent[3:35].lower()
            if trace_id.strip(b"0123456789abcdef") == b"" and trace_id != b"0" * 32:
                return trace_id, b"-" + parent[53:55]
        b3 = values.get(b"x-b3-traceid")
        if b3 is None:
            single = values.get(b"b3")
            if single is not None:
                b3 = single.split(b"-", 1)[0]
        if b3 is not None and len(b3) in (16, 32) and b3.lower().strip(b"0123456789abcdef") == b"":
            return b3.lower().rjust(32, b"0"), b"-01"
        return ids[:32], b"-01"

    def _hash_key(self, pool: Pool) -> bytes | None:
        on = pool.hash_on
        if on is None:
            return None
        if on == "client_ip":
            return self.peer
        if on == "path":
            return self._url.split(b"?", 1)[0]
        kind, _, name = on.partition(":")
        if kind == "header":
            return _value(self._head, self._lower_head(), b"\r\n" + name.lower().encode() + b":")
        cookies = _value(self._head, self._lower_head(), b"\r\ncookie:")
        if cookies is None:
            return None
        for part in cookies.split(b";"):
            key, _, value = part.strip().partition(b"=")
            if key == name.encode():
                return value
        return None

    def _begin_try(self) -> None:
        gw = self.gw
        route = self.route
        assert route is not None
        if route.adaptive is not None and self.adaptive_slot is None and self._adaptive_refused():
            return
        pool = gw.pools.get(self.cluster)
        endpoint = pool.pick(gw.rng, self.hash_key, self.tried) if pool is not None else None
        if pool is None or endpoint is None:
            reason = "no endpoints" if pool is None or not pool.endpoints else "no healthy endpoint"
            self._answer_error(503, f"{reason} for route {route.name}", fallback=True)
            return
        if self.tries_log:  # a retry, recorded: it is a new CLIENT span, so a new id upstream
            old = self.try_span
            self.try_span = gw.random_hex(16)
            self.out_head = self.out_head.replace(b"-" + old + b"-", b"-" + self.try_span + b"-", 1)
        self.pool = pool
        self.endpoint = endpoint
        endpoint.active += 1
        gw.metrics.upstream(endpoint.address).tries += 1
        if self.kept is not None or not self.tried:
            self.tried.append(endpoint.address)
        self.try_started = gw.loop.time()
        self.pending = []
        first = self.out_head
        body = self.kept if self.kept and self.kept_size <= gw.retry_buffer_bytes else None
        conn = pool.take_idle(endpoint)
        self.deadline_kind = _D_UPSTREAM
        if conn is not None:
            self._attach(conn)
            assert conn.transport is not None
            # Head and any kept body in one write: one syscall, one segment.
            conn.transport.write(first + b"".join(body) if body else first)
            self.deadline = min(gw.now + route.timeouts.per_try, self.total_deadline)
        else:
            conn = UpstreamConnection(pool, endpoint)
            self._attach(conn)
            self.pending = [first, *body] if body else [first]
            self.deadline = min(gw.now + route.timeouts.connect, self.total_deadline)
            conn.connect_task = gw.loop.create_task(conn.connect(gw.loop))
        if self.ready_body is not None:  # a validated body: it follows the head
            ready, self.ready_body = self.ready_body, None
            for chunk in ready:
                self._send(chunk)

    def _adaptive_refused(self) -> bool:
        """Take a place in the cluster's gradient limit; True when the limit is reached and
        the request was answered 503 with Retry-After."""
        gw = self.gw
        slot = gw.adaptive.get(self.cluster)
        if slot is None:
            return False
        if slot.limit.admits(slot.in_flight):
            slot.in_flight += 1
            self.adaptive_slot = slot
            self.adaptive_at = gw.loop.time()
            return False
        route = self.route
        assert route is not None
        gw.count(route.name, "adaptive_shed")
        self._finish(503, gw.loop.time(), None, 503)
        self.responded = True
        self._fail(
            503,
            f"route {route.name}: {slot.in_flight} requests in flight to its upstream, at "
            f"its adaptive concurrency limit {int(slot.limit.limit)}",
            close=not self.request_done or not self._keep_alive,
            extra=b"Retry-After: %d\r\n" % slot.settings.retry_after,
        )
        return True

    def _adaptive_done(self, now: float, *, sample: bool) -> None:
        """Leave the gradient limit; ``sample``: an upstream answered, its latency counts."""
        slot = self.adaptive_slot
        assert slot is not None
        self.adaptive_slot = None
        slot.in_flight -= 1
        if sample:
            slot.limit.sample(now - self.adaptive_at, slot.in_flight + 1, now)

    def _attach(self, conn: UpstreamConnection) -> None:
        conn.client = self
        conn.expect_head = True
        conn.head_method = self.method
        self.upstream = conn
        if self.write_paused and conn.transport is not None and not conn.read_paused:
            conn.read_paused = True
            conn.transport.pause_reading()

    def _send(self, chunk: bytes) -> None:
        """A piece of request body: to the upstream, or held until it connects."""
        if self.kept is not None:
            self.kept.append(chunk)
            self.kept_size += len(chunk)
            if self.kept_size > self.gw.retry_buffer_bytes:
                self.kept = None  # too big to replay: no retries for this request
        copy = self.mirror_body
        if copy is not None:
            self.mirror_size += len(chunk)
            route = self.route
            if route is None or route.mirror is None:
                self.mirror_body = None
            elif self.mirror_size > route.mirror.max_body_bytes:
                self.mirror_body = None
                self.gw.count(route.name, "mirror_skipped")
            else:
                copy.append(chunk)
        up = self.upstream
        if up is not None and up.transport is not None and not self.pending:
            up.transport.write(chunk)
        elif up is not None:
            self.pending.append(chunk)

    def upstream_connected(self, conn: UpstreamConnection) -> None:
        assert conn.transport is not None
        if self.pending:
            conn.transport.write(b"".join(self.pending))
            self.pending = []
        route = self.route
        if route is not None:
            self._set_deadline(_D_UPSTREAM, route.timeouts.per_try)

    # --- response path (called by UpstreamConnection) -------------------------------------

    def response_head(self, conn: UpstreamConnection, status: int, head: bytes) -> bool:
        """The upstream's final response head arrived; False means "retrying, drop it"."""
        if status in RETRYABLE_STATUS and self._may_retry(status):
            self.status = status
            self._end_try(conn, "5xx", reusable=False)
            self._retry()
            return False
        self.status = status
        guard = self.guard
        if guard is not None:
            if status >= 500 and self._stale_instead(conn, guard, status):
                return False
            if self.capture is not None:
                framer = conn.framer
                if conn.until_close or status == 101 or (framer is not None and framer.chunked):
                    self.capture = None  # only Content-Length bodies are cached
                else:
                    self.capture_head = head
            if guard.headers:
                head = head[:-2] + guard.headers + b"\r\n"
        chain = self.chain
        if chain is not None and chain.response and self.plugin_request is not None:
            try:
                head = chain.on_response_headers(self.plugin_request, status, head)
            except PluginFailed as failed:
                self._end_try(conn, "ok", reusable=False)
                self.capture = None
                self._plugin_answer(Respond(500, f"plugin {failed.label} failed\n"))
                return False
        self.responded = True
        transport = self.transport
        if transport is None or self.state == _CLOSED:
            return True
        closing = not self._keep_alive or conn.until_close or not self.request_done
        hop = conn.hop
        if hop == _HOP_CUT or (hop == _HOP_KEEP_ALIVE and closing):
            head = _without(head, _line_spans(_RESPONSE_SCAN, head.lower(), _RESPONSE_HOP))
        if closing and status != 101:
            head = head[:-2] + b"Connection: close\r\n\r\n"
            self._keep_alive = False
        self.deadline = math.inf
        self.deadline_kind = _D_NONE
        self.pending_head = head
        return True

    def response_done(self, conn: UpstreamConnection, reusable: bool) -> None:
        gw = self.gw
        now = gw.loop.time()
        status = self.status
        try_latency = now - self.try_started
        self._end_try(
            conn,
            "5xx" if status >= 500 else "ok",
            reusable=reusable and self.request_done,
            latency=try_latency,
        )
        self._finish(status, now, try_latency, status)
        self._next_request()

    def keep(self, data: bytes) -> None:
        """Response body bytes for the cache, up to the route's entry size."""
        capture = self.capture
        guard = self.guard
        if capture is None or guard is None:
            return
        self.capture_size += len(data)
        if self.capture_size > guard.rt.cache_max_entry:
            self.capture = None
        else:
            capture.append(data)

    def _stale_instead(self, conn: UpstreamConnection, guard: Guard, status: int) -> bool:
        """stale-if-error: serve a stale cached entry instead of an upstream 5xx."""
        policies = self.gw.policies
        if policies is None or guard.rt.cache_ttl is None:
            return False
        entry = policies.stale(guard, self.gw.loop.time())
        if entry is None:
            return False
        self._end_try(conn, "5xx", reusable=False)
        self.capture = None
        close = not self.request_done or not self._keep_alive
        extra = self._extra_headers(None, b"X-Cache: STALE\r\n")
        data = render_cached(
            entry,
            head_only=self.method == "HEAD",
            close=close,
            extra=extra,
            now=self.gw.loop.time(),
        )
        self._answer_local(entry.status, data, close, outcome=status)
        return True

    def upstream_failed(self, conn: UpstreamConnection, why: str) -> None:
        """The try failed before any response byte reached the client, or mid-response."""
        if self.upstream is not conn:
            return
        if self.responded:  # the client already has part of a response: cut it off cleanly
            self._end_try(conn, "connect", reusable=False)
            self.close()
            return
        gw = self.gw
        if self.endpoint is not None:
            gw.metrics.upstream(self.endpoint.address).connect_failures += 1
        self._end_try(conn, "connect", reusable=False)
        if self._may_retry(None):
            self._retry()
        elif why == "timeout":
            self._answer_error(504, "upstream timed out")
        else:
            self._answer_error(502, f"upstream {why}")

    def tunnel(self, conn: UpstreamConnection) -> None:
        self.state = _TUNNEL
        self.deadline = math.inf
        self.deadline_kind = _D_NONE
        if self.buf and conn.transport is not None:
            conn.transport.write(bytes(self.buf))
            self.buf.clear()

    def _may_retry(self, status: int | None) -> bool:
        route = self.route
        if route is None or self.kept is None or self.state == _CLOSED:
            return False
        if len(self.tried) > route.retries.attempts:
            return False
        if status is not None and status not in RETRYABLE_STATUS:
            return False
        if self.gw.now >= self.total_deadline:
            return False
        return self.gw.budgets[route.name].try_spend(self.gw.now)

    def _retry(self) -> None:
        route = self.route
        assert route is not None
        self.gw.metrics.route(route.name).retries += 1
        self._begin_try()

    def _end_try(
        self,
        conn: UpstreamConnection,
        outcome: Outcome,
        *,
        reusable: bool,
        latency: float | None = None,
    ) -> None:
        gw = self.gw
        endpoint = self.endpoint
        pool = self.pool
        tries_log = self.tries_log
        if tries_log is not None and endpoint is not None and pool is not None:
            status = 0 if outcome == "connect" else self.status
            tries_log.append(
                (
                    self.try_span,
                    endpoint.address,
                    self.try_started,
                    gw.loop.time(),
                    status,
                    pool.cluster.key,
                )
            )
        if endpoint is not None:
            endpoint.active -= 1
            self.endpoint = None
            if pool is not None and pool.ewma:
                if latency is None:
                    latency = gw.loop.time() - self.try_started
                endpoint.observe(latency, gw.now)
            if pool is not None:
                ejection = pool.outlier.record(endpoint.address, outcome, gw.now)
                if ejection is not None:
                    gw.metrics.upstream(endpoint.address).ejections += 1
                    pool.refresh(gw.now)
                    if gw.on_ejection is not None:
                        gw.on_ejection(pool.cluster.key, endpoint.address, ejection.reason)
        if self.upstream is conn:
            self.upstream = None
        conn.client = None
        if reusable and pool is not None and conn.transport is not None:
            if conn.read_paused:
                conn.read_paused = False
                conn.transport.resume_reading()
            pool.put_idle(conn, gw.now)
        else:
            conn.abort()

    def _next_request(self) -> None:
        if self.special:
            self._reset_special()
        if self.adaptive_slot is not None:  # answered without _finish: leave the limit
            self._adaptive_done(0.0, sample=False)
        if self.state == _CLOSED:
            return
        if not self._keep_alive or not self.request_done:
            self.close()
            return
        self.state = _HEAD
        self.route = None
        if self.read_paused & _READ_BACKLOG:
            self._resume_reading(_READ_BACKLOG)
        if self.buf:
            self._set_deadline(_D_HEADERS, self.gw.header_timeout)
            self._run()
        else:
            self.deadline_kind = _D_IDLE
            self.deadline = self.gw.now + self.gw.idle_timeout

    # --- errors, deadlines, closing -------------------------------------------------------

    def _answer_error(self, status: int, message: str, *, fallback: bool = False) -> None:
        """Answer a request whose tries failed (or never started); ``fallback``: no endpoint
        could take it, so the route's fallback may answer instead."""
        route = self.route
        guard = self.guard
        degradable = guard is not None or (fallback and route is not None and route.fallback)
        if route is not None and degradable and self._degrade(route, guard, status, fallback):
            return
        self._finish(status, self.gw.loop.time(), None, status)
        self.responded = True
        self._fail(status, message, close=not self.request_done or not self._keep_alive)

    def _degrade(
        self, route: CompiledRoute, guard: Guard | None, status: int, fallback: bool
    ) -> bool:
        if self.upstream is not None:
            self._end_try(self.upstream, "ok", reusable=False)
        close = not self.request_done or not self._keep_alive
        head_only = self.method == "HEAD"
        policies = self.gw.policies
        if guard is not None and policies is not None and guard.rt.cache_ttl is not None:
            entry = policies.stale(guard, self.gw.loop.time())
            if entry is not None:
                self.capture = None
                extra = self._extra_headers(None, b"X-Cache: STALE\r\n")
                data = render_cached(
                    entry, head_only=head_only, close=close, extra=extra, now=self.gw.loop.time()
                )
                self._answer_local(entry.status, data, close, outcome=status)
                return True
        if fallback and route.fallback is not None:
            self.capture = None
            data = render_fallback(
                route.fallback, head_only=head_only, close=close, extra=self._extra_headers(None)
            )
            self._answer_local(route.fallback.status, data, close, outcome=status)
            return True
        return False

    def _fail(self, status: int, message: str, *, close: bool = True, extra: bytes = b"") -> None:
        if self.adaptive_slot is not None:
            self._adaptive_done(0.0, sample=False)
        transport = self.transport
        if transport is None or self.state == _CLOSED:
            return
        if self.upstream is not None:
            up = self.upstream
            self._end_try(up, "ok", reusable=False)
        transport.write(
            _simple_response(status, message, close=close, request_id=self.request_id, extra=extra)
        )
        if close:
            self.close()
        else:
            self.request_done = True
            self._next_request()

    def on_deadline(self, now: float) -> None:
        kind = self.deadline_kind
        self.deadline = math.inf
        self.deadline_kind = _D_NONE
        if kind == _D_IDLE:
            self.close()
        elif kind == _D_HEADERS:
            if self.buf or self.state != _HEAD:
                self._fail(408, "request headers not received in time")
            else:
                self.close()
        elif kind == _D_UPSTREAM:
            up = self.upstream
            if up is not None:
                up.cancel_connect()
                self.upstream_failed(up, "timeout")
            elif not self.responded:
                self._fail(504, "upstream timed out")

    def _set_deadline(self, kind: int, seconds: float) -> None:
        self.deadline_kind = kind
        deadline = self.gw.now + seconds
        if kind == _D_UPSTREAM and self.total_deadline < deadline:
            deadline = self.total_deadline
        self.deadline = deadline

    def _pause_reading(self, why: int) -> None:
        if not self.read_paused and self.transport is not None:
            self.transport.pause_reading()
        self.read_paused |= why

    def _resume_reading(self, why: int) -> None:
        if not self.read_paused & why:
            return
        self.read_paused &= ~why
        if not self.read_paused and self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        if self.state != _CLOSED:
            self.state = _CLOSED
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.state = _CLOSED
        if self.transport is not None:
            self.transport.abort()


class UpstreamConnection(asyncio.Protocol):
    """One connection to an upstream endpoint; serves one client request at a time."""

    def __init__(self, pool: Pool, endpoint: Endpoint) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.client: ClientConnection | None = None
        self.connect_task: asyncio.Task[Any] | None = None
        self.buf = b""
        self.expect_head = True
        self.head_method = "GET"
        self.framer: BodyFramer | None = None
        self.until_close = False
        self.keep_alive = True
        self.read_paused = False
        self.idle_since = 0.0
        self.tunneling = False
        self.hop = _HOP_NONE  # the response head's hop-by-hop lines (see _HOP_*)
        self._parser: Any = None

    async def connect(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            await loop.create_connection(lambda: self, self.endpoint.host, self.endpoint.port)
        except asyncio.CancelledError:
            pass
        except OSError as error:
            client = self.client
            if client is not None:
                why = "refused the connection" if "refused" in str(error).lower() else "unreachable"
                client.upstream_failed(self, why)
        finally:
            self.connect_task = None

    def cancel_connect(self) -> None:
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        client = self.client
        if client is None:
            transport.close()
        else:
            client.upstream_connected(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        client = self.client
        if client is None:
            self.pool.forget(self)
            return
        if self.tunneling:
            client.close()
            return
        if not self.expect_head and self.until_close:
            client.response_done(self, reusable=False)
            return
        client.upstream_failed(self, "closed the connection" if exc is None else "reset")

    def pause_writing(self) -> None:
        client = self.client
        if client is not None:
            client._pause_reading(_READ_UPSTREAM)

    def resume_writing(self) -> None:
        client = self.client
        if client is not None:
            client._resume_reading(_READ_UPSTREAM)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None or client.transport is None:
            self.abort()  # bytes nobody asked for: this connection cannot be trusted
            return
        if self.tunneling:
            client.transport.write(data)
            return
        try:
            self._receive(client, client.transport, data)
        except Exception:
            log.exception("gateway: response handling failed")
            client.upstream_failed(self, "sent a response the gateway could not handle")

    def _receive(self, client: ClientConnection, out: asyncio.Transport, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        while self.expect_head:
            end = _head_end(data)
            if end < 0:
                if len(data) > MAX_RESPONSE_HEAD:
                    client.upstream_failed(self, "sent a response head too large")
                else:
                    self.buf = data
                return
            head, data = data[: end + 4], data[end + 4 :]
            # Upstream heads are parsed by hand (status line + the few framing headers): the
            # upstream is ours to trust more than a client, and this is the hot path.
            status = _status_of(head)
            if status < 0:
                client.upstream_failed(self, "sent a malformed response")
                return
            if status == 101:
                self.hop = _HOP_NONE
                if not client.response_head(self, status, head):
                    return
                self.expect_head = False
                self.tunneling = True
                out.write(client.pending_head + data)
                client.tunnel(self)
                return
            if status < 200:  # 1xx interim response: pass it on, the final one follows
                out.write(head)
                continue
            if _compiled_scan is not None:
                caseless, single, hop = _RESPONSE_MASKS
                values, cutting, repeated = _compiled_scan(
                    head, _RESPONSE_NAMES, caseless, single, hop
                )
                if repeated is not None:
                    client.upstream_failed(self, f"sent more than one {repeated.decode()} header")
                    return
            else:
                try:
                    values, cutting = _scan(_RESPONSE_SCAN, head.lower(), _RESPONSE_HOP)
                except _BadHead as error:
                    client.upstream_failed(self, f"sent more than one {error} header")
                    return
            connection = values.get(b"connection")
            if not cutting:
                self.hop = _HOP_NONE
            elif connection == b"keep-alive" and b"keep-alive" not in values:
                self.hop = _HOP_KEEP_ALIVE
            else:
                self.hop = _HOP_CUT
            # ``find``, not ``in``: bytes ``in`` tries the argument as an int first and formats
            # the TypeError it catches (measured: a tenth of a compiled request's instructions).
            # The value is lower-case already (``_CASELESS``).
            if head[7] == 48:  # HTTP/1.0
                self.keep_alive = connection is not None and connection.find(b"keep-alive") >= 0
            else:
                self.keep_alive = connection is None or connection.find(b"close") < 0
            length: int | None = None
            if client.method == "HEAD" or status in (204, 304):
                length = 0
            else:
                te = values.get(b"transfer-encoding")
                cl = values.get(b"content-length")
                if te is not None and te.lower().endswith(b"chunked"):
                    self.framer = BodyFramer(chunked=True)
                elif cl is not None:
                    if not cl.isdigit():
                        client.upstream_failed(self, "sent a bad Content-Length")
                        return
                    length = int(cl)
                else:
                    self.framer = BodyFramer(None)
            if length is not None:
                if length == len(data):
                    # The usual small response: head and whole body in one read. Forward it in
                    # one write and skip the framer.
                    self.until_close = False
                    if not client.response_head(self, status, head):
                        return
                    out.write(client.pending_head + data if data else client.pending_head)
                    if client.capture is not None:
                        client.capture.append(data)
                    if client.chain is not None and client.chain.body and data:
                        client.chain.on_body_chunk(client.plugin_request, data)  # type: ignore[arg-type]  # set with chain
                    client.response_done(self, self.keep_alive)
                    return
                self.framer = BodyFramer(length)
            framer = self.framer
            assert framer is not None
            self.until_close = framer.until_close
            if not client.response_head(self, status, head):
                return
            self.expect_head = False
            head = client.pending_head
            if not data and not framer.done:
                out.write(head)
                return
            self._body(client, out, data, head)
            return
        self._body(client, out, data, b"")

    def _body(
        self, client: ClientConnection, out: asyncio.Transport, data: bytes, head: bytes
    ) -> None:
        framer = self.framer
        assert framer is not None
        n, done = framer.feed(data)
        if client.capture is not None:
            client.keep(data[:n])
        if client.chain is not None and client.chain.body and n:
            client.chain.on_body_chunk(client.plugin_request, data[:n])  # type: ignore[arg-type]  # set with chain
        if n == len(data):
            out.write(head + data if head else data)
        else:
            if head or n:
                out.write(head + data[:n])
            if not done:
                self.buf = data[n:]  # an incomplete chunk-size line
        if done:
            reusable = self.keep_alive and n == len(data)
            self.expect_head = True
            self.framer = None
            client.response_done(self, reusable)

    def close(self) -> None:
        self.client = None
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.client = None
        self.cancel_connect()
        if self.transport is not None:
            self.transport.abort()
