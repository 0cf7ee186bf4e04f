"""The read side of the Store over the HTTP API, for platform processes that do not own the
Store (gateway workers, the collector, agents on other nodes): ``range``, ``get`` and
``watch`` with the same semantics as a local Store (revision order, no gaps, ``Compacted``).
Writes go through the API's own endpoints, never through this client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp

from corral.errors import Compacted, PlatformUnavailable, StoreError
from corral.home import Home
from corral.store.base import Compare, KeyValue, Op, RangeResult, TxnResult, WatchEvent


class RemoteStore:
    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_home(cls, home: Home, role: str = "read") -> RemoteStore:
        url = home.api_url()
        if url is None:
            raise PlatformUnavailable(f"no control plane is running for {home.path}")
        return cls(url, home.token(role))

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self.headers, timeout=aiohttp.ClientTimeout(total=None, connect=5)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def range(self, prefix: str, limit: int = 0) -> RangeResult:
        url = f"{self.base_url}/api/v1/store/range"
        try:
            async with self._client().get(
                url, params={"prefix": prefix, "limit": str(limit)}
            ) as response:
                body = await response.json()
                if response.status != 200:
                    raise StoreError(body.get("message", f"HTTP {response.status}"))
        except aiohttp.ClientError as exc:
            raise PlatformUnavailable(f"the control plane at {self.base_url}: {exc}") from None
        return RangeResult([_kv(d) for d in body["kvs"]], body["revision"], body["more"])

    async def get(self, key: str) -> KeyValue | None:
        listing = await self.range(key)
        return next((kv for kv in listing.kvs if kv.key == key), None)

    async def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        url = f"{self.base_url}/api/v1/store/watch"
        params = {"prefix": prefix, "start_revision": str(start_revision)}
        try:
            async with self._client().get(url, params=params) as response:
                if response.status != 200:
                    raise StoreError(f"watch {prefix}: HTTP {response.status}")
                event = ""
                async for raw in response.content:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
                        if event == "compacted":
                            raise Compacted(int(data), start_revision)
                        change = json.loads(data)
                        yield WatchEvent(change["type"], _kv(change["kv"]))
                        event = ""
        except aiohttp.ClientError as exc:
            raise PlatformUnavailable(f"lost the watch on {self.base_url}: {exc}") from None

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
