"""The etcd Store: the control plane on an existing etcd v3 cluster (``etcd://h1:2379,h2:2379``).

It speaks etcd's v3 HTTP/JSON gateway with aiohttp (keys and values base64, int64s as strings):
``/v3/kv/range|txn|compaction``, ``/v3/watch`` (one newline-delimited JSON message per watch
response), ``/v3/lease/grant|keepalive|revoke|leases|timetolive``. The ``etcd3`` PyPI client is
abandoned and clashes with current protobuf, so there is no gRPC here.

Theory of operation:
- **Revisions are etcd's.** Every response header carries the cluster revision; the store
  remembers the highest it has seen, which is what ``watch(prefix, 0)`` starts after (so a
  watch taken before a write always sees that write). etcd bumps the revision once per txn that
  changes something, as the protocol says, and stamps every key of the txn with it.
- **Compares.** Those etcd evaluates exactly as ``base.compare_holds`` does are sent as etcd
  compares (one round trip). etcd fails every ``value`` compare on a missing key, so ``value
  !=`` (true for a missing key here) and type-mismatched compares are evaluated here instead:
  read the compared keys at one revision, decide the branch with ``compare_holds``, and commit
  that branch guarded by ``mod_revision == seen`` on every compared key (0 for a missing key);
  a guard that fails means a concurrent write, so read again. Either way the txn is atomic.
- **Watch** asks etcd from ``start_revision`` with ``prev_kv``; etcd never splits one
  revision's events across messages (no ``fragment``), so after a broken stream the watcher
  reconnects — to the next endpoint — from the revision after the last one it delivered: no gap,
  no duplicate. ``compact_revision`` in a cancel becomes ``Compacted(revision)``.
- **Leases.** etcd counts TTLs in whole seconds (and raises them to its minimum), while the
  protocol's TTLs are floats. So the store keeps each lease's TTL and deadline itself and
  revokes the lease at that deadline (one revision deleting all its keys, sorted, as etcd
  does); the etcd lease, granted at ``ceil(ttl)`` seconds and kept alive with it, is the
  backstop that frees the keys if the control plane dies. When a store opens it keeps alive
  (with etcd's keepalive only) every lease holding keys under ``namespace + "/"``, which
  restarts each at its full TTL (etcd also does so on a leader change); such a lease enters
  the local table, and so can be revoked by this store, only when it is kept alive through
  ``keepalive`` — never another application's lease that merely shares the prefix.
- **Namespace.** ``etcd://host:port/prefix`` prefixes every key with ``/prefix`` so several
  platforms (or other users) can share a cluster; compaction stays cluster-wide, as in etcd.
- **Failover.** Requests go to one endpoint until it fails, then to the next. A request that
  could not connect is retried on the next endpoint until ``timeout`` runs out; one that was
  sent but lost its answer is retried only if it is a read (a write's outcome is unknown, and
  saying so beats applying it twice). Out of endpoints: ``EtcdUnavailable`` with the addresses.
- **Closing** ends every watcher (``StopAsyncIteration``); leases are left to their TTLs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

from corral import clock as _clock
from corral.errors import (
    Compacted,
    CorralError,
    NotFound,
    PlatformUnavailable,
    StoreError,
    UserError,
)
from corral.store.base import (
    Compare,
    Delete,
    DeleteRange,
    KeyValue,
    Op,
    Put,
    RangeResult,
    TxnResult,
    WatchEvent,
    compare_holds,
)
from corral.store.sqlite import validate_txn

SCHEME = "etcd://"
DEFAULT_TIMEOUT = 5.0  # seconds a request keeps trying other endpoints before giving up
# A watch silent this long asks its endpoint a cheap range: an endpoint cut off without a
# reset would otherwise hold the watch forever (etcd's own progress notifications come every
# 10 minutes by default). No answer: the watch resumes on the next endpoint, without a gap.
WATCH_IDLE = 10.0
_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}
_INT_TARGETS = {"create_revision": "CREATE", "mod_revision": "MOD", "version": "VERSION"}
_RETRYABLE_CODES = {4, 14}  # gRPC DeadlineExceeded, Unavailable (no leader, leader changed)
_json = msgspec.json.Decoder()


class EtcdUnavailable(PlatformUnavailable):
    """No listed etcd endpoint answered (or a write's answer was lost)."""

    code = "store_unavailable"


class _Retry(Exception):
    """Internal: this endpoint failed in a way another endpoint may not."""


def parse_url(url: str) -> tuple[list[str], str]:
    """``etcd://h1:2379,h2:2379/prefix`` → (["http://h1:2379", …], "/prefix")."""
    hint = (
        "write the store as etcd://HOST:PORT,HOST:PORT/prefix (more hosts and the prefix optional)"
    )
    if not url.startswith(SCHEME):
        raise UserError(f"store URL {url!r} is not an etcd:// URL", hint)
    parts = urlsplit(url)
    endpoints = []
    for address in parts.netloc.split(","):
        host, sep, port = address.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"store URL {url!r}: {address!r} is not HOST:PORT", hint)
        endpoints.append(f"http://{host}:{int(port)}")
    namespace = parts.path.rstrip("/")
    if parts.query or parts.fragment:
        raise UserError(f"store URL {url!r} has a query or fragment", hint)
    return endpoints, namespace


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _range_end(key: bytes) -> bytes:
    """etcd's prefix end: the key with its last byte below 0xff incremented ("\\0": all)."""
    trimmed = key.rstrip(b"\xff")
    if not trimmed:
        return b"\0"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _native(cmp: Compare) -> bool:
    """Whether etcd evaluates ``cmp`` exactly as ``compare_holds`` does."""
    if cmp.target == "exists":
        return isinstance(cmp.value, bool) and cmp.op in ("==", "!=")
    if cmp.target == "value":
        return isinstance(cmp.value, bytes) and cmp.op != "!="
    return isinstance(cmp.value, int) and not isinstance(cmp.value, bool)


class EtcdStore:
    """The Store protocol on etcd v3. Open with ``await EtcdStore.open("etcd://…")``."""

    def __init__(
        self,
        endpoints: list[str],
        namespace: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: _clock.Clock = _clock.SYSTEM,
    ) -> None:
        self.endpoints = endpoints
        self.namespace = namespace
        self._ns = namespace.encode()
        self._timeout = timeout
        self.watch_idle = WATCH_IDLE
        self._clock = clock
        self._current = 0
        self._revision = 0
        self._closed = False
        self._session: aiohttp.ClientSession | None = None
        self._leases: dict[int, tuple[float, float]] = {}  # id → (ttl, monotonic deadline)
        self._lease_wake = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        self._streams: set[aiohttp.StreamReader] = set()  # open watch streams, broken by close()
        self._jitter = random.Random()

    @classmethod
    async def open(
        cls, url: str, *, timeout: float = DEFAULT_TIMEOUT, clock: _clock.Clock = _clock.SYSTEM
    ) -> EtcdStore:
        endpoints, namespace = parse_url(url)
        store = cls(endpoints, namespace, timeout=timeout, clock=clock)
        store._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout)
        )
        try:
            await store.range("", limit=1)  # reachable, and the current revision
            await store._adopt_leases()
        except BaseException:
            await store._session.close()
            raise
        store._reaper = asyncio.get_running_loop().create_task(
            store._reap_leases(), name=f"etcd lease expiry {url}"
        )
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for stream in list(self._streams):
            # Closing the session does not wake a pending read; this does. Watchers see closed.
            stream.set_exception(aiohttp.ClientConnectionError("the store was closed"))
        if self._session is not None:
            await self._session.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def revision(self) -> int:
        """The highest cluster revision this store has seen."""
        return self._revision

    @property
    def address(self) -> str:
        return ",".join(e.removeprefix("http://") for e in self.endpoints) + self.namespace

    # -- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        reply = await self._call("/v3/kv/range", {"key": _b64(self._key(key))}, read=True)
        kvs = reply.get("kvs") or []
        return self._kv(kvs[0]) if kvs else None

    async def range(self, prefix: str, limit: int = 0) -> RangeResult:
        if limit < 0:
            raise UserError(f"range limit must be >= 0, got {limit}", "0 means no limit")
        reply = await self._call("/v3/kv/range", self._span(prefix) | {"limit": limit}, read=True)
        kvs = [self._kv(kv) for kv in reply.get("kvs") or []]
        return RangeResult(kvs, self._header_revision(reply), bool(reply.get("more")))

    # -- writes --------------------------------------------------------------------------

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[Op],
        on_failure: Sequence[Op] = (),
    ) -> TxnResult:
        validate_txn(compares, on_success, on_failure)
        if all(_native(c) for c in compares):
            body = {
                "compare": [self._compare(c) for c in compares],
                "success": [self._op(op) for op in on_success],
                "failure": [self._op(op) for op in on_failure],
            }
            reply = await self._call("/v3/kv/txn", body)
            return TxnResult(bool(reply.get("succeeded")), self._header_revision(reply))
        return await self._guarded_txn(compares, on_success, on_failure)

    async def _guarded_txn(
        self, compares: Sequence[Compare], on_success: Sequence[Op], on_failure: Sequence[Op]
    ) -> TxnResult:
        keys = sorted({c.key for c in compares})
        deadline = self._clock.monotonic() + self._timeout
        while True:
            reads = [{"request_range": {"key": _b64(self._key(k))}} for k in keys]
            snapshot = await self._call("/v3/kv/txn", {"success": reads}, read=True)
            seen: dict[str, KeyValue] = {}
            for response in snapshot.get("responses") or []:
                for raw in response.get("response_range", {}).get("kvs") or []:
                    kv = self._kv(raw)
                    seen[kv.key] = kv
            decision = all(compare_holds(c, seen.get(c.key)) for c in compares)
            guard = [
                {
                    "key": _b64(self._key(k)),
                    "target": "MOD",
                    "result": "EQUAL",
                    "mod_revision": seen[k].mod_revision if k in seen else 0,
                }
                for k in keys
            ]
            ops = [self._op(op) for op in (on_success if decision else on_failure)]
            reply = await self._call("/v3/kv/txn", {"compare": guard, "success": ops})
            if reply.get("succeeded"):
                return TxnResult(decision, self._header_revision(reply))
            if self._clock.monotonic() > deadline:
                raise StoreError(
                    f"etcd at {self.address}: a txn on {', '.join(keys)} kept losing to "
                    f"concurrent writers for {self._timeout:g}s",
                    "retry later; something rewrites these keys continuously",
                    code="store_contended",
                )

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (cluster-wide). Compacting to or below an earlier
        compaction is a no-op; compacting past the current revision is refused."""
        try:
            await self._call("/v3/kv/compaction", {"revision": revision})
        except StoreError as exc:
            if "has been compacted" in exc.message:
                return
            if "future revision" in exc.message:
                raise UserError(
                    f"cannot compact to revision {revision}: etcd at {self.address} is at "
                    f"{self._revision}",
                    "compact to a revision the store has reached",
                    code="future_revision",
                ) from exc
            raise

    # -- watch ---------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        """Every change under ``prefix`` with revision >= ``start_revision`` (0: after the
        latest revision this store has seen), then live changes. Ends with
        ``StopAsyncIteration`` when the store closes."""
        self._check_open()
        if start_revision < 0:
            raise UserError(f"watch start_revision must be >= 0, got {start_revision}", "")
        return self._follow(prefix, start_revision or self._revision + 1)

    async def _follow(self, prefix: str, start: int) -> AsyncIterator[WatchEvent]:
        next_revision = start
        failed_since: float | None = None
        while not self._closed:
            endpoint = self.endpoints[self._current]
            create = self._span(prefix) | {"start_revision": next_revision, "prev_kv": True}
            request = {"create_request": create}
            try:
                async with self._client().post(f"{endpoint}/v3/watch", json=request) as response:
                    if response.status != 200:
                        self._raise_error(endpoint, await response.read())
                    if self.closed:
                        return
                    failed_since = None
                    buffer = b""
                    self._streams.add(response.content)
                    try:
                        while True:
                            try:
                                async with asyncio.timeout(self.watch_idle):
                                    chunk = await response.content.readany()
                            except TimeoutError:
                                if await self._answers(endpoint):
                                    continue  # only quiet
                                raise _Retry(f"{endpoint} stopped answering") from None
                            if not chunk:
                                break
                            buffer += chunk
                            *lines, buffer = buffer.split(b"\n")
                            for line in lines:
                                events = self._watch_message(line, next_revision)
                                if events:
                                    next_revision = events[-1].kv.mod_revision + 1
                                    for event in events:
                                        yield event
                    finally:
                        self._streams.discard(response.content)
            except (aiohttp.ClientError, OSError, TimeoutError, _Retry) as exc:
                if self.closed:  # close() broke the stream
                    return
                now = self._clock.monotonic()
                failed_since = failed_since if failed_since is not None else now
                if now - failed_since > self._timeout:
                    raise self._unavailable(exc) from exc
                self._failover(endpoint)
                await asyncio.sleep(self._backoff(now - failed_since))
            else:
                # etcd ended the stream (it is shutting down): resume on the next endpoint.
                self._failover(endpoint)
                await asyncio.sleep(self._backoff(0.0))

    async def _answers(self, endpoint: str) -> bool:
        try:
            async with self._client().post(
                f"{endpoint}/v3/kv/range",
                json={"key": "AA=="},
                timeout=aiohttp.ClientTimeout(total=min(2.0, self._timeout)),
            ) as response:
                await response.read()  # a whole answer, not only its headers
                return response.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    def _watch_message(self, line: bytes, next_revision: int) -> list[WatchEvent]:
        if not line.strip():
            return []
        message = _json.decode(line)
        if "error" in message:
            error = message["error"]
            raise _Retry(error.get("message", str(error)) if isinstance(error, dict) else error)
        result = message.get("result") or {}
        self._header_revision(result)
        compacted = int(result.get("compact_revision", 0))
        if compacted:
            raise Compacted(compacted, next_revision)
        if result.get("canceled"):
            raise _Retry(result.get("cancel_reason") or "etcd cancelled the watch")
        events = []
        for raw in result.get("events") or []:
            kv = self._kv(raw["kv"])
            prev = self._kv(raw["prev_kv"]) if raw.get("prev_kv") else None
            if raw.get("type") == "DELETE":
                events.append(WatchEvent("delete", kv, prev))
            else:
                events.append(WatchEvent("put", kv, prev))
        return events

    # -- leases --------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
            raise UserError(f"lease ttl must be a positive number of seconds, got {ttl!r}", "")
        reply = await self._call("/v3/lease/grant", {"TTL": max(1, math.ceil(ttl))})
        lease_id = int(reply["ID"])
        self._leases[lease_id] = (float(ttl), self._clock.monotonic() + ttl)
        self._lease_wake.set()
        return lease_id

    async def keepalive(self, lease_id: int) -> float:
        """Restart the lease's timer at its full TTL and return the TTL."""
        self._check_open()
        entry = self._leases.get(lease_id)
        granted = 0
        if entry is not None and entry[1] <= self._clock.monotonic():
            await self._expire(lease_id)  # due, and the reaper has not run yet
        else:
            reply = await self._call("/v3/lease/keepalive", {"ID": lease_id}, read=True)
            granted = int((reply.get("result") or {}).get("TTL", 0))
        if not granted:
            self._leases.pop(lease_id, None)
            raise NotFound(
                f"lease {lease_id} does not exist or has expired (etcd at {self.address})",
                "grant a new lease and put its keys again",
            )
        ttl = entry[0] if entry is not None else float(granted)
        self._leases[lease_id] = (ttl, self._clock.monotonic() + ttl)
        self._lease_wake.set()
        return ttl

    async def revoke(self, lease_id: int) -> None:
        self._leases.pop(lease_id, None)
        await self._call("/v3/lease/revoke", {"ID": lease_id})

    async def _expire(self, lease_id: int) -> None:
        self._leases.pop(lease_id, None)
        with contextlib.suppress(NotFound):  # etcd's own timer may have been first
            await self._call("/v3/lease/revoke", {"ID": lease_id})

    async def _adopt_leases(self) -> None:
        """Restart every lease that holds keys in this namespace at its full TTL.

        Only etcd's own keepalive: an adopted lease never enters ``self._leases``, so the
        reaper never revokes it. A lease that merely looks like ours (another application's
        under a sibling prefix, or any lease when there is no namespace) must not lose its
        keys here; ours come back into the table when their holder keeps them alive."""
        listing = await self._call("/v3/lease/leases", {}, read=True)
        mine = self._ns + b"/"
        for entry in listing.get("leases") or []:
            lease_id = int(entry["ID"])
            info = await self._call(
                "/v3/lease/timetolive", {"ID": lease_id, "keys": True}, read=True
            )
            keys = [_unb64(k) for k in info.get("keys") or []]
            granted = int(info.get("grantedTTL", 0))
            if granted <= 0 or not any(k.startswith(mine) for k in keys):
                continue
            with contextlib.suppress(NotFound):
                await self._call("/v3/lease/keepalive", {"ID": lease_id}, read=True)

    async def _reap_leases(self) -> None:
        while True:
            self._lease_wake.clear()
            now = self._clock.monotonic()
            due = sorted(lid for lid, (_, deadline) in self._leases.items() if deadline <= now)
            for lease_id in due:
                try:
                    await self._expire(lease_id)
                except CorralError:
                    # etcd is unreachable: its own timer will free the keys; try again soon.
                    self._leases[lease_id] = (self._leases.get(lease_id, (1.0, 0.0))[0], now + 1)
            deadlines = [deadline for _, deadline in self._leases.values()]
            wait = min(deadlines) - self._clock.monotonic() if deadlines else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_wake.wait(), wait)

    # -- the wire ------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        self._check_open()
        assert self._session is not None, "use EtcdStore.open()"
        return self._session

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the etcd store ({self.address}) is closed", "open it again")

    async def _call(self, path: str, body: dict[str, Any], *, read: bool = False) -> Any:
        """POST ``body`` to the current endpoint, failing over as the module docstring says."""
        session = self._client()
        started = self._clock.monotonic()
        last: BaseException | None = None
        while True:
            endpoint = self.endpoints[self._current]
            try:
                async with session.post(
                    endpoint + path, json=body, timeout=aiohttp.ClientTimeout(total=self._timeout)
                ) as response:
                    data = await response.read()
                    if response.status != 200:
                        self._raise_error(endpoint, data, retry=read)
                    reply = _json.decode(data)
                    self._header_revision(reply)
                    return reply
            except aiohttp.ClientConnectorError as exc:  # never reached etcd: safe to retry
                last = exc
            except _Retry as exc:
                last = exc
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if self._closed:
                    raise StoreError(f"the etcd store ({self.address}) is closed", "") from exc
                if not read:
                    raise EtcdUnavailable(
                        f"etcd at {endpoint} lost the answer to {path} ({exc!r}); the write "
                        "may or may not have been applied",
                        "read the keys back before retrying",
                    ) from exc
                last = exc
            elapsed = self._clock.monotonic() - started
            if elapsed > self._timeout:
                raise self._unavailable(last)
            self._failover(endpoint)
            if self._current == 0:  # a whole round failed: back off before the next
                await asyncio.sleep(self._backoff(elapsed))

    def _raise_error(self, endpoint: str, data: bytes, *, retry: bool = True) -> None:
        try:
            error = _json.decode(data)
            code, message = int(error.get("code", 2)), str(error.get("message", data[:200]))
        except (msgspec.DecodeError, AttributeError, ValueError):
            code, message = 2, data[:200].decode(errors="replace")
        if code in _RETRYABLE_CODES and (retry or "no leader" in message):
            raise _Retry(f"{endpoint}: {message}")
        where = f"etcd at {endpoint}"
        if code == 5:
            raise NotFound(f"{where}: {message}", "grant a new lease and put its keys again")
        if code == 3 and "too many operations" in message:
            raise UserError(
                f"{where} refused a txn with more ops than its --max-txn-ops allows",
                "start etcd with --max-txn-ops=1024 (its default, 128, is too small for Corral)",
                code="txn_too_large",
            )
        if code == 3:
            raise UserError(f"{where} refused the request: {message}", "check keys and values")
        raise StoreError(f"{where}: {message}", "see etcd's log", code="etcd_error")

    def _unavailable(self, cause: BaseException | None) -> EtcdUnavailable:
        return EtcdUnavailable(
            f"etcd is unreachable at {', '.join(self.endpoints)} ({cause})",
            "start etcd, or list its client URLs in --store / CORRAL_STORE "
            "(etcd://HOST:PORT,HOST:PORT/prefix)",
        )

    def _failover(self, failed: str) -> None:
        if self.endpoints[self._current] == failed:
            self._current = (self._current + 1) % len(self.endpoints)

    def _backoff(self, elapsed: float) -> float:
        return min(0.5, 0.05 * 2 ** min(elapsed, 4.0)) * (0.5 + self._jitter.random())

    def _header_revision(self, reply: dict[str, Any]) -> int:
        revision = int((reply.get("header") or {}).get("revision", 0))
        self._revision = max(self._revision, revision)
        return revision

    # -- encoding ------------------------------------------------------------------------

    def _key(self, key: str) -> bytes:
        return self._ns + key.encode()

    def _span(self, prefix: str) -> dict[str, Any]:
        key = self._key(prefix)
        return {"key": _b64(key or b"\0"), "range_end": _b64(_range_end(key))}

    def _kv(self, raw: dict[str, Any]) -> KeyValue:
        return KeyValue(
            key=_unb64(raw.get("key"))[len(self._ns) :].decode(),
            value=_unb64(raw.get("value")),
            create_revision=int(raw.get("create_revision", 0)),
            mod_revision=int(raw.get("mod_revision", 0)),
            version=int(raw.get("version", 0)),
            lease=int(raw.get("lease", 0)),
        )

    def _compare(self, cmp: Compare) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(self._key(cmp.key))}
        if cmp.target == "exists":
            # exists == True ⇔ create_revision > 0; a missing key has create_revision 0.
            wants = (cmp.op == "==") == bool(cmp.value)
            result = "GREATER" if wants else "EQUAL"
            return body | {"target": "CREATE", "result": result, "create_revision": 0}
        if cmp.target == "value":
            assert isinstance(cmp.value, bytes)
            return body | {"target": "VALUE", "result": _RESULTS[cmp.op], "value": _b64(cmp.value)}
        target = _INT_TARGETS[cmp.target]
        return body | {"target": target, "result": _RESULTS[cmp.op], cmp.target: cmp.value}

    def _op(self, op: Op) -> dict[str, Any]:
        if isinstance(op, Put):
            put = {"key": _b64(self._key(op.key)), "value": _b64(op.value), "lease": op.lease}
            return {"request_put": put}
        if isinstance(op, Delete):
            return {"request_delete_range": {"key": _b64(self._key(op.key))}}
        assert isinstance(op, DeleteRange)
        return {"request_delete_range": self._span(op.prefix)}
