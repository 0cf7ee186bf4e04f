"""Turn one span into the rollup dimensions it feeds: endpoint, peer, SQL fingerprint.

Theory of operation. Rollups are keyed by names, so every name must have bounded cardinality
whatever the traffic: an id in a URL or a literal in SQL must never make a new key (the most
common SkyWalking complaint). Hence:

- *endpoint*: ``METHOD route``. The route is ``http.route`` when the instrumentation knows it;
  otherwise the path (from ``url.path``/``http.target``/``url.full``/``http.url``, query
  dropped) with every id-like segment replaced by ``{id}``: all digits, UUIDs, hex ids of 8+
  characters that contain a digit, and long tokens (16+ characters mixing letters and digits).
  Spans without HTTP attributes keep their name, with the same rule applied to path-like words.
- *fingerprint*: a SQL statement with comments dropped, whitespace collapsed, string/number/hex
  literals replaced by ``?`` and ``IN (…)`` / multi-row ``VALUES`` lists collapsed to one item.
- *peer*: who a CLIENT/PRODUCER span talked to, for callees that send no spans themselves
  (Zipkin's remoteEndpoint is never set by the OpenTelemetry exporter, so attributes decide):
  ``peer.service``, then the Zipkin remote service, then ``db.system`` (with the server
  address), ``messaging.system`` with its destination, then ``server.address``/``net.peer.name``
  (with the port), the host of the URL, and the remote ip:port.

Old and new OpenTelemetry semantic-convention names are both accepted. Everything here is a
pure function of the span; callers may memoise (`Normalizer` does, with bounded caches).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from corral.telemetry.model import CALLER_KINDS, Facts, Span

METHOD_KEYS = ("http.request.method", "http.method")
ROUTE_KEYS = ("http.route",)
PATH_KEYS = ("url.path", "http.target")
URL_KEYS = ("url.full", "http.url")
STATEMENT_KEYS = ("db.query.text", "db.statement")
ADDRESS_KEYS = ("server.address", "net.peer.name", "net.sock.peer.addr", "network.peer.address")
PORT_KEYS = ("server.port", "net.peer.port", "net.sock.peer.port", "network.peer.port")

_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_HEX = re.compile(r"^(?=[^/]*\d)[0-9a-fA-F]{8,}$")
_TOKEN = re.compile(r"^(?=[^/]*\d)(?=[^/]*[A-Za-z])[A-Za-z0-9_\-=.~]{16,}$")
_NUMBER = re.compile(r"^[-+]?\d+(\.\d+)?$")

_SQL_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_SQL_STRING = re.compile(r"'(?:[^']|'')*'")
_SQL_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b|\bx'[0-9a-fA-F]*'")
_SQL_NUMBER = re.compile(r"(?<![\w$.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")
_SQL_IN_LIST = re.compile(r"\bIN\s*\(\s*\?(?:\s*,\s*\?)*\s*\)", re.I)
_SQL_VALUES = re.compile(r"\bVALUES\s*(\([?,\s]*\))(?:\s*,\s*\([?,\s]*\))+", re.I)
_SQL_PARAM = re.compile(r"\$\d+|:\w+|%\(\w+\)s|%s")


def first(attrs: Mapping[str, str], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = attrs.get(key)
        if value:
            return value
    return ""


def is_id_segment(segment: str) -> bool:
    if not segment:
        return False
    if segment.isdigit():
        return True
    return bool(
        _NUMBER.match(segment)
        or _UUID.match(segment)
        or _HEX.match(segment)
        or _TOKEN.match(segment)
    )


def normalize_path(path: str) -> str:
    """``/orders/123/items/9f1c2e3d4b5a6978`` → ``/orders/{id}/items/{id}``."""
    path = path.split("?", 1)[0].split("#", 1)[0] or "/"
    return "/".join("{id}" if is_id_segment(part) else part for part in path.split("/"))


def path_of_url(url: str) -> str:
    rest = url.split("://", 1)[1] if "://" in url else url
    slash = rest.find("/")
    return rest[slash:] if slash >= 0 else "/"


def host_of_url(url: str) -> str:
    if "://" not in url:
        return ""
    rest = url.split("://", 1)[1]
    host = rest.split("/", 1)[0].split("?", 1)[0]
    return host.rsplit("@", 1)[-1]


def normalize_name(name: str, norm: Callable[[str], str] = normalize_path) -> str:
    """A span name like ``GET /orders/123`` keeps its shape with ids replaced."""
    if "/" not in name:
        return name
    return " ".join(norm(word) if "/" in word else word for word in name.split(" "))


def endpoint(span: Span, norm: Callable[[str], str] = normalize_path) -> str:
    attrs = span.attributes
    method = first(attrs, METHOD_KEYS).upper()
    route = first(attrs, ROUTE_KEYS)
    if route:
        route = norm(route)  # some frameworks report the raw path as the route
    else:
        path = first(attrs, PATH_KEYS)
        if not path:
            url = first(attrs, URL_KEYS)
            path = path_of_url(url) if url else ""
        route = norm(path) if path else ""
    if method and route:
        return f"{method} {route}"
    if route:
        return route
    name = normalize_name(span.name, norm)
    if method and not name.upper().startswith(method):
        return f"{method} {name}"
    return name


def sql_fingerprint(statement: str) -> str:
    """``SELECT * FROM t WHERE id IN (1, 2, 3) AND name = 'x'`` →
    ``SELECT * FROM t WHERE id IN (?) AND name = ?``."""
    # Each pass is skipped when a substring it needs is absent: same result, and most
    # statements need only the number and whitespace passes.
    text = statement
    if "--" in text or "/*" in text:
        text = _SQL_COMMENT.sub(" ", text)
    if "'" in text:
        text = _SQL_STRING.sub("?", text)
    if "0x" in text or "x'" in text:
        text = _SQL_HEX.sub("?", text)
    text = _SQL_NUMBER.sub("?", text)
    if "$" in text or ":" in text or "%" in text:
        text = _SQL_PARAM.sub("?", text)
    text = " ".join(text.split()).rstrip(";").strip()  # whitespace runs → one space
    if "(" in text:
        if "?" in text:
            text = _SQL_IN_LIST.sub("IN (?)", text)
        if "," in text:
            text = _SQL_VALUES.sub(lambda m: "VALUES " + re.sub(r"\s+", "", m.group(1)), text)
    return text


def peer(span: Span) -> str:
    """The remote side of a CLIENT/PRODUCER span, named for the dependency map ("" if none)."""
    if span.kind not in CALLER_KINDS:
        return ""
    attrs = span.attributes
    named = attrs.get("peer.service") or span.remote_service
    if named:
        return named
    address = first(attrs, ADDRESS_KEYS)
    port = first(attrs, PORT_KEYS)
    if address and port:
        address = f"{address}:{port}"
    db = attrs.get("db.system.name") or attrs.get("db.system")
    if db:
        return f"{db}@{address}" if address else db
    messaging = attrs.get("messaging.system")
    if messaging:
        dest = attrs.get("messaging.destination.name") or attrs.get("messaging.destination", "")
        return f"{messaging}:{dest}" if dest else messaging
    if address:
        return address
    url = first(attrs, URL_KEYS)
    host = host_of_url(url) if url else ""
    return host or span.peer


def statement(span: Span) -> str:
    return first(span.attributes, STATEMENT_KEYS)


def facts(span: Span) -> Facts:
    sql = statement(span)
    return Facts(endpoint(span), peer(span), sql_fingerprint(sql) if sql else "")


class Normalizer:
    """`facts` with bounded memo tables: paths and statements repeat, regexes are costly."""

    def __init__(self, cache_size: int = 50_000) -> None:
        self.cache_size = cache_size
        self._paths: dict[str, str] = {}
        self._segments: dict[str, str] = {}
        self._sql: dict[str, str] = {}
        self._endpoints: dict[tuple[str, int, str], str] = {}

    def _path(self, path: str) -> str:
        done = self._paths.get(path)
        if done is None:
            if len(self._paths) >= self.cache_size:
                self._paths.clear()
            done = self._paths[path] = self._normalize_path(path)
        return done

    def _normalize_path(self, path: str) -> str:
        """`normalize_path`, with each segment's verdict memoised: paths with ids rarely
        repeat, but their words do, and each word costs four regex matches."""
        path = path.split("?", 1)[0].split("#", 1)[0] or "/"
        segments = self._segments
        out = []
        for part in path.split("/"):
            if part.isdigit():
                out.append("{id}")
                continue
            done = segments.get(part)
            if done is None:
                if len(segments) >= self.cache_size:
                    segments.clear()
                done = segments[part] = "{id}" if is_id_segment(part) else part
            out.append(done)
        return "/".join(out)

    def _fingerprint(self, sql: str) -> str:
        done = self._sql.get(sql)
        if done is None:
            if len(self._sql) >= self.cache_size:
                self._sql.clear()
            done = self._sql[sql] = sql_fingerprint(sql)
        return done

    def facts(self, span: Span) -> Facts:
        """Equal to `facts(span)`, faster: the endpoint is memoised by exactly the inputs
        `endpoint` reads (method, then the first of route / path / URL / name present)."""
        attrs = span.attributes
        get = attrs.get
        method = get("http.request.method") or get("http.method") or ""
        source = get("http.route") or get("url.path") or get("http.target") or ""
        which = 1
        if not source:
            source = get("url.full") or get("http.url") or ""
            which = 2 if source else 3
            if not source:
                source = span.name
        if get("http.route"):
            which = 0
        memo = (method, which, source)
        done = self._endpoints.get(memo)
        if done is None:
            if len(self._endpoints) >= self.cache_size:
                self._endpoints.clear()
            done = self._endpoints[memo] = endpoint(span, self._path)
        sql = get("db.query.text") or get("db.statement")
        fingerprint = self._fingerprint(sql) if sql else ""
        return Facts(done, _peer(span, get) if span.kind in CALLER_KINDS else "", fingerprint)


def _peer(span: Span, get: Callable[[str], str | None]) -> str:
    """`peer` for a CLIENT/PRODUCER span, with the key lists unrolled (once per such span)."""
    named = get("peer.service") or span.remote_service
    if named:
        return named
    address = (
        get("server.address")
        or get("net.peer.name")
        or get("net.sock.peer.addr")
        or get("network.peer.address")
    )
    if address:
        port = (
            get("server.port")
            or get("net.peer.port")
            or get("net.sock.peer.port")
            or get("network.peer.port")
        )
        if port:
            address = f"{address}:{port}"
    db = get("db.system.name") or get("db.system")
    if db:
        return f"{db}@{address}" if address else db
    messaging = get("messaging.system")
    if messaging:
        dest = get("messaging.destination.name") or get("messaging.destination")
        return f"{messaging}:{dest}" if dest else messaging
    if address:
        return address
    url = get("url.full") or get("http.url")
    host = host_of_url(url) if url else ""
    return host or span.peer
