"""The read side of the Store over the HTTP API, for platform processes that do not own the
Store (gateway workers, the collector, agents on other nodes): ``range``, ``get`` and
``watch`` with the same semantics as a local Store (revision order, no gaps, ``Compacted``).
Writes go through the API's own endpoints, never through this client.

A cluster's nodes all serve these reads (followers through ReadIndex, watches from their own
copy of the history, whose revisions are the same on every node), so the client takes every
URL of ``$CORRAL_HOME/api`` and fails over like ``corral.client.Client``: a node that refuses,
drops the connection or answers ``unavailable``/``no_quorum`` is skipped for the next, and the
URL list is re-read from the api file (the nodes keep it current, leader first) before each
new round. A watch that loses its node resumes on another from the last revision it
delivered, skipping the events of that revision it already delivered (one transaction may
change several keys at one revision): no gap, no duplicate; ``Compacted`` if that node has
compacted past it. A watch "from now" (``start_revision`` 0) resolves now to a revision with
a range first, so a failover before its first event resumes from that revision, not from the
next node's now. Nodes that accept the watch and end it at once ``MAX_EMPTY_WATCHES`` times in
a row raise ``PlatformUnavailable`` rather than loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import aiohttp

from corral.errors import Compacted, PlatformUnavailable, StoreError
from corral.home import Home
from corral.store.base import Compare, KeyValue, Op, RangeResult, TxnResult, WatchEvent

# Answers that mean "this node cannot serve it now, another may": fail over on them.
_TRANSIENT_STATUS = frozenset({502, 503, 504})
CONNECT_TIMEOUT = 2.0  # a node partitioned away must not hold a failover for long
READ_TIMEOUT = 15.0  # a range on a node that lost quorum answers no_quorum well before this
# The API sends a ": ping" every 5 s on an idle watch: three missed mean the node is gone.
WATCH_SILENCE = 15.0
RETRY_PAUSE = 0.05  # between reconnects of a watch whose node closed it at once
# Watches in a row that a node accepted and ended without an event: past this, something is
# wrong with the nodes (not a failover in progress), and looping on would hide it.
MAX_EMPTY_WATCHES = 40


class _Unreachable(Exception):
    """This node did not serve the request; try the next (carries why, for the message)."""


class RemoteStore:
    def __init__(
        self, base_url: str | Sequence[str], token: str | None, home: Home | None = None
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        self.urls = [url.rstrip("/") for url in urls]
        self.base_url = self.urls[0] if self.urls else ""
        self.home = home
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_home(cls, home: Home, role: str = "read") -> RemoteStore:
        urls = home.api_urls()
        if not urls:
            raise PlatformUnavailable(
                f"no control plane is running for {home.path}",
                "start one with `corral up FILE -d` (or `corral server`)",
            )
        return cls(urls, home.token(role), home)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # -- failover -----------------------------------------------------------------------------

    def _round(self) -> list[str]:
        """The URLs to try, the current one first, then the others in the api file's order
        (re-read: a cluster's nodes rewrite it with the new leader first)."""
        if self.home is not None:
            fresh = [url.rstrip("/") for url in self.home.api_urls()]
            if fresh:
                self.urls = fresh
        if not self.urls:
            raise PlatformUnavailable(
                "no control plane URL to read the Store from", "is the control plane running?"
            )
        rest = [url for url in self.urls if url != self.base_url]
        return [self.base_url, *rest] if self.base_url in self.urls else rest

    def _rotate(self, url: str) -> None:
        if url in self.urls:
            self.base_url = self.urls[(self.urls.index(url) + 1) % len(self.urls)]

    def _unavailable(self, failures: list[str]) -> PlatformUnavailable:
        return PlatformUnavailable(
            "no control plane node serves the Store: " + "; ".join(failures),
            "is the control plane running, with a majority of its nodes? "
            "`corral cluster status` shows them",
        )

    async def range(self, prefix: str, limit: int = 0) -> RangeResult:
        failures: list[str] = []
        for url in self._round():
            try:
                body = await self._range_on(url, prefix, limit)
            except _Unreachable as exc:
                failures.append(f"{url}: {exc}")
                continue
            self.base_url = url
            return RangeResult([_kv(d) for d in body["kvs"]], body["revision"], body["more"])
        raise self._unavailable(failures)

    async def _range_on(self, url: str, prefix: str, limit: int) -> dict[str, Any]:
        params = {"prefix": prefix, "limit": str(limit)}
        try:
            async with self._client().get(
                f"{url}/api/v1/store/range",
                params=params,
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
                ),
            ) as response:
                body: dict[str, Any] = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise _Unreachable(str(exc) or type(exc).__name__) from None
        if response.status == 200:
            return body
        message = body.get("message", f"HTTP {response.status}")
        if response.status in _TRANSIENT_STATUS or body.get("code") in ("unavailable", "no_quorum"):
            raise _Unreachable(message)
        raise StoreError(f"range {prefix!r} on {url}: {message}", body.get("hint", ""))

    async def get(self, key: str) -> KeyValue | None:
        listing = await self.range(key)
        return next((kv for kv in listing.kvs if kv.key == key), None)

    async def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        start = start_revision
        if not start:
            # "from now" must mean the same now on every node: a failover before the first
            # event would otherwise restart at the next node's now and skip what came between
            start = (await self.range(prefix, limit=1)).revision + 1
        # the last revision delivered, and how many of its events were (see the docstring)
        last_revision, delivered_at_last = 0, 0
        failures: list[str] = []
        empty = 0  # watches in a row that ended without delivering an event
        while True:
            urls = self._round()
            for url in urls:
                if last_revision:
                    start = last_revision
                skip = delivered_at_last if last_revision else 0
                established = delivered = False
                try:
                    async with contextlib.aclosing(self._watch_on(url, prefix, start)) as events:
                        async for event in events:
                            if not established:
                                established, failures = True, []
                                self.base_url = url
                            if event is None:
                                continue
                            revision = event.kv.mod_revision
                            if revision == last_revision and skip:
                                skip -= 1
                                continue
                            if revision == last_revision:
                                delivered_at_last += 1
                            else:
                                last_revision, delivered_at_last = revision, 1
                            delivered = True
                            yield event
                    failures.append(f"{url}: the watch ended")
                except _Unreachable as exc:
                    failures.append(f"{url}: {exc}")
                if established:
                    empty = 0 if delivered else empty + 1
                    if empty >= MAX_EMPTY_WATCHES:
                        raise self._unavailable(
                            [f"{MAX_EMPTY_WATCHES} watches in a row ended at once", *failures[-3:]]
                        )
                    # a new round, from the freshest URL list, starting after the node that
                    # ended the watch (it may be shutting down and accepting still)
                    self._rotate(url)
                    await asyncio.sleep(RETRY_PAUSE)
                    break
            else:
                raise self._unavailable(failures[-len(urls) :])

    async def _watch_on(
        self, url: str, prefix: str, start: int
    ) -> AsyncGenerator[WatchEvent | None, None]:
        """The events of one node's watch; ``None`` first, once the node accepted it."""
        params = {"prefix": prefix, "start_revision": str(start)}
        try:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=CONNECT_TIMEOUT, sock_read=WATCH_SILENCE
            )
            watch_url = f"{url}/api/v1/store/watch"
            async with self._client().get(watch_url, params=params, timeout=timeout) as response:
                if response.status != 200:
                    if response.status in _TRANSIENT_STATUS:
                        raise _Unreachable(f"HTTP {response.status}")
                    raise StoreError(f"watch {prefix!r} on {url}: HTTP {response.status}")
                yield None
                event = ""
                async for raw in response.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
                        if event == "compacted":
                            raise Compacted(int(data), start)
                        change = json.loads(data)
                        yield WatchEvent(change["type"], _kv(change["kv"]))
                        event = ""
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _Unreachable(str(exc) or type(exc).__name__) from None

    async def txn(
        self, compares: Sequence[Compare], on_success: Sequence[Op], on_failure: Sequence[Op] = ()
    ) -> TxnResult:
        raise StoreError("the remote Store is read-only", "write through the API's endpoints")

    async def compact(self, revision: int) -> None:
        raise StoreError("the remote Store is read-only")

    async def grant(self, ttl: float) -> int:
        raise StoreError("the remote Store is read-only")

    async def keepalive(self, lease_id: int) -> float:
        raise StoreError("the remote Store is read-only")

    async def revoke(self, lease_id: int) -> None:
        raise StoreError("the remote Store is read-only")


def _kv(d: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=d["key"],
        value=d["value"].encode(),
        create_revision=d["create_revision"],
        mod_revision=d["mod_revision"],
        version=d["version"],
    )
