"""Response cache decisions: what may be cached, under which key, how long it stays fresh,
and a byte-bounded LRU to hold it.

Theory of operation (RFC 9111 for a shared cache, RFC 5861 for the stale extensions).

- **Requests** ``GET`` and ``HEAD`` may be served from the cache (a HEAD is answered from the
  GET entry); a request with ``Cache-Control: no-store`` or ``no-cache`` bypasses it (and a
  no-cache request refreshes the entry — revalidation is a refetch, no conditional requests).
  Requests with ``Authorization`` bypass it (RFC 9111 §3.5: a shared cache must not reuse them
  without ``public``/``s-maxage``, which this cache does not try to honour).
- **Responses** are stored when the status is heuristically cacheable (200, 203, 204, 300,
  301, 404, 405, 410, 414, 501), ``Cache-Control`` has no ``no-store``/``private``/
  ``no-cache``, ``Vary`` is not ``*``, there is no ``Set-Cookie``, and a lifetime exists:
  ``s-maxage``, else ``max-age``, else the route's ``ttl`` (``Expires`` is not read).
- **Key**: method (HEAD → GET), lower-case host, path, query string as sent, and — once the
  first response told us its ``Vary`` — the values of those request headers. The primary key
  maps to the ``Vary`` list last seen for it, so a lookup costs one or two dict probes.
- **Freshness**: an entry is ``fresh`` until stored + lifetime; then ``stale`` but servable
  while revalidating until + ``stale-while-revalidate`` (the proxy serves it and refreshes in
  the background: ``Lookup.revalidate`` is true for **one** lookup per entry, so a burst of
  requests starts one refresh, not one each; when no fresh entry was stored within
  ``refresh_timeout`` — the refresh failed — the next lookup starts another); and servable
  instead of an error (``lookup_on_error``: an upstream failure, a 5xx, an open breaker)
  until + ``stale-if-error``. Past both it is gone.
- **Size**: entries are kept in LRU order and evicted oldest-first until the bodies and
  headers total at most ``max_bytes``; an entry larger than ``max_entry_bytes`` is not stored.
  ``purge(route=…, prefix=…)`` drops entries for the admin API.

Pure: ``now`` is passed in; storing and lookup never read a clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

__all__ = [
    "CACHEABLE_STATUS",
    "CacheControl",
    "CachedResponse",
    "Lookup",
    "ResponseCache",
    "parse_cache_control",
    "request_bypasses_cache",
]

CACHEABLE_STATUS = frozenset({200, 203, 204, 300, 301, 404, 405, 410, 414, 501})
HeaderLookup = Callable[[str], "str | None"]
Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class CacheControl:
    no_store: bool = False
    no_cache: bool = False
    private: bool = False
    max_age: float | None = None
    s_maxage: float | None = None
    stale_while_revalidate: float = 0.0
    stale_if_error: float = 0.0


_NONE = CacheControl()


def parse_cache_control(value: str | None) -> CacheControl:
    """Parse a ``Cache-Control`` value; unknown directives and bad numbers are ignored
    (a bad ``max-age`` counts as 0, as RFC 9111 §4.2.1 asks)."""
    if not value:
        return _NONE
    flags: dict[str, bool] = {}
    numbers: dict[str, float] = {}
    for part in value.split(","):
        name, sep, arg = part.strip().partition("=")
        name = name.strip().lower()
        if not sep:
            flags[name] = True
            continue
        arg = arg.strip().strip('"')
        try:
            numbers[name] = max(0.0, float(int(arg)))
        except ValueError:
            numbers[name] = 0.0
    return CacheControl(
        no_store=flags.get("no-store", False),
        no_cache=flags.get("no-cache", False) or "no-cache" in numbers,
        private=flags.get("private", False) or "private" in numbers,
        max_age=numbers.get("max-age"),
        s_maxage=numbers.get("s-maxage"),
        stale_while_revalidate=numbers.get("stale-while-revalidate", 0.0),
        stale_if_error=numbers.get("stale-if-error", 0.0),
    )


def request_bypasses_cache(method: str, header: HeaderLookup) -> bool:
    """Whether a request must go upstream without reading the cache."""
    if method != "GET" and method != "HEAD":
        return True
    if header("authorization") is not None:
        return True
    control = header("cache-control")
    if control is None:
        return False
    parsed = parse_cache_control(control)
    return parsed.no_store or parsed.no_cache


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    stored_at: float
    fresh_until: float
    revalidate_until: float
    error_until: float
    route: str
    path: str
    size: int

    def age(self, now: float) -> int:
        """The ``Age`` header value (whole seconds)."""
        return max(0, int(now - self.stored_at))


class Lookup(NamedTuple):
    """``state`` fresh (serve), stale (serve; refresh in the background when ``revalidate``)
    or miss."""

    state: Literal["fresh", "stale", "miss"]
    entry: CachedResponse | None = None
    revalidate: bool = False


_MISS = Lookup("miss")
_PrimaryKey = tuple[str, str, str]
_Key = tuple[str, str, str, tuple[str, ...]]


def _vary_names(headers: Headers) -> tuple[str, ...] | None:
    """Sorted lower-case ``Vary`` names; None for ``Vary: *`` (never cacheable)."""
    names: list[str] = []
    for name, value in headers:
        if name.lower() == b"vary":
            for item in value.decode("latin-1").split(","):
                item = item.strip().lower()
                if item == "*":
                    return None
                if item and item not in names:
                    names.append(item)
    return tuple(sorted(names))


class _Variants:
    __slots__ = ("count", "names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.count = 0


class ResponseCache:
    """A byte-bounded LRU of responses for one gateway worker."""

    __slots__ = (
        "_entries",
        "_refreshing",
        "_vary",
        "max_bytes",
        "max_entry_bytes",
        "refresh_timeout",
        "size",
    )

    def __init__(
        self,
        max_bytes: int = 64 << 20,
        max_entry_bytes: int = 1 << 20,
        refresh_timeout: float = 10.0,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.refresh_timeout = refresh_timeout
        self.size = 0
        # Entries being refreshed in the background → when that refresh is given up on.
        self._refreshing: dict[_Key, float] = {}
        self._entries: OrderedDict[_Key, CachedResponse] = OrderedDict()
        # primary key → [Vary names, entries stored under it]; gone with its last entry.
        self._vary: dict[_PrimaryKey, _Variants] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _primary(host: str, path: str, query: str) -> _PrimaryKey:
        return (host.lower(), path, query)

    def _names(self, primary: _PrimaryKey) -> tuple[str, ...]:
        known = self._vary.get(primary)
        return () if known is None else known.names

    def _key(self, primary: _PrimaryKey, header: HeaderLookup) -> _Key:
        names = self._names(primary)
        if not names:
            return (*primary, ())
        return (*primary, tuple(header(n) or "" for n in names))

    def lookup(
        self, method: str, host: str, path: str, query: str, header: HeaderLookup, now: float
    ) -> Lookup:
        """The cached response for a GET/HEAD request, if one may be served now."""
        if method != "GET" and method != "HEAD":
            return _MISS
        key = self._key((host.lower(), path, query), header)
        entry = self._entries.get(key)
        if entry is None:
            return _MISS
        if now < entry.fresh_until:
            self._entries.move_to_end(key)
            return Lookup("fresh", entry)
        if now < entry.revalidate_until:
            self._entries.move_to_end(key)
            until = self._refreshing.get(key)
            if until is not None and now < until:
                return Lookup("stale", entry)
            self._refreshing[key] = now + self.refresh_timeout
            return Lookup("stale", entry, revalidate=True)
        if now >= entry.error_until:
            self._drop(key)
        return _MISS

    def lookup_on_error(
        self, method: str, host: str, path: str, query: str, header: HeaderLookup, now: float
    ) -> CachedResponse | None:
        """The stale entry to serve instead of an upstream failure (stale-if-error), if any."""
        if method != "GET" and method != "HEAD":
            return None
        key = self._key((host.lower(), path, query), header)
        entry = self._entries.get(key)
        if entry is None or now >= max(entry.error_until, entry.revalidate_until):
            return None
        return entry

    def store(
        self,
        *,
        method: str,
        host: str,
        path: str,
        query: str,
        header: HeaderLookup,
        status: int,
        headers: Headers,
        body: bytes,
        now: float,
        default_ttl: float = 0.0,
        route: str = "",
    ) -> CachedResponse | None:
        """Store a response if it may be cached; returns the entry or None (and why not is in
        the module docstring)."""
        if method != "GET" or status not in CACHEABLE_STATUS:
            return None
        control_text: str | None = None
        for name, value in headers:
            lower = name.lower()
            if lower == b"set-cookie":
                return None
            if lower == b"cache-control":
                text = value.decode("latin-1")
                control_text = text if control_text is None else f"{control_text},{text}"
        control = parse_cache_control(control_text)
        if control.no_store or control.private or control.no_cache:
            return None
        vary = _vary_names(headers)
        if vary is None:
            return None
        lifetime = control.s_maxage if control.s_maxage is not None else control.max_age
        if lifetime is None:
            lifetime = default_ttl
        if lifetime <= 0 and control.stale_if_error <= 0 and control.stale_while_revalidate <= 0:
            return None  # (max-age=0 with stale-while-revalidate: always refreshed behind)
        size = len(body) + sum(len(n) + len(v) + 4 for n, v in headers) + len(path) + 64
        if size > self.max_entry_bytes or size > self.max_bytes:
            return None
        primary = self._primary(host, path, query)
        if primary in self._vary and self._names(primary) != vary:
            self.purge_key(primary)
        key = (*primary, tuple(header(n) or "" for n in vary))
        fresh_until = now + lifetime
        entry = CachedResponse(
            status=status,
            headers=tuple(headers),
            body=body,
            stored_at=now,
            fresh_until=fresh_until,
            revalidate_until=fresh_until + control.stale_while_revalidate,
            error_until=fresh_until + control.stale_if_error,
            route=route,
            path=path,
            size=size,
        )
        if key in self._entries:
            self._drop(key)
        self._refreshing.pop(key, None)
        self._entries[key] = entry
        known = self._vary.get(primary)
        if known is None:
            known = self._vary[primary] = _Variants(vary)
        known.count += 1
        self.size += size
        while self.size > self.max_bytes:
            old_key, old = self._entries.popitem(last=False)
            self._refreshing.pop(old_key, None)
            self.size -= old.size
            self._forget_vary(old_key)
        return entry

    def _drop(self, key: _Key) -> None:
        self._refreshing.pop(key, None)
        entry = self._entries.pop(key)
        self.size -= entry.size
        self._forget_vary(key)

    def _forget_vary(self, key: _Key) -> None:
        primary = (key[0], key[1], key[2])
        known = self._vary.get(primary)
        if known is not None:
            known.count -= 1
            if known.count == 0:
                del self._vary[primary]

    def purge_key(self, primary: _PrimaryKey) -> int:
        """Drop every variant of one (host, path, query)."""
        keys = [k for k in self._entries if (k[0], k[1], k[2]) == primary]
        for key in keys:
            self._drop(key)
        self._vary.pop(primary, None)
        return len(keys)

    def purge(self, *, route: str | None = None, prefix: str | None = None) -> int:
        """Drop entries of ``route`` and/or whose path starts with ``prefix`` (admin API)."""
        keys = [
            key
            for key, entry in self._entries.items()
            if (route is None or entry.route == route)
            and (prefix is None or entry.path.startswith(prefix))
        ]
        for key in keys:
            self._drop(key)
        return len(keys)
