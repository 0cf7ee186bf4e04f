"""A small synchronous client of the AP store's HTTP API (stdlib ``http.client``).

    kv = KvClient("127.0.0.1:8500")
    obj = kv.get("carts", "alice")            # obj.values: [] (absent), [v], or siblings
    kv.put("carts", "alice", b"...", obj.context)   # supersedes exactly what obj showed
    kv.delete("carts", "alice", obj.context)

Keep the ``context`` of the last read (or write) of a key and pass it to the next write of that
key: a write without one is concurrent with everything and may add a sibling. With several
node addresses, a request that cannot connect to one node goes to the next; a read that fails
later is retried there too, a write is not (it may have landed: ``NoQuorum`` says so).
"""

from __future__ import annotations

import base64
import http.client
import json
import select
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from corral import errors
from corral.kv.coordinator import InvalidQuorum
from corral.kv.wire import CONTEXT_HEADER, BadContext, NoQuorum

_BY_CODE: dict[str, type[errors.CorralError]] = {
    "no_quorum": NoQuorum,
    "bad_context": BadContext,
    "invalid_quorum": InvalidQuorum,
    "bad_request": errors.UserError,
}


@dataclass(frozen=True)
class KvObject:
    values: list[bytes] = field(default_factory=list)
    context: str = ""  # opaque: send it back with the next write of this key

    @property
    def found(self) -> bool:
        return bool(self.values)

    @property
    def siblings(self) -> bool:
        return len(self.values) > 1

    @property
    def value(self) -> bytes | None:
        """The one value, or None if absent; ``Conflict`` when there are siblings."""
        if len(self.values) > 1:
            raise errors.Conflict(
                f"this key has {len(self.values)} siblings (concurrent writes)",
                "read .values, write the resolved value with this object's context",
            )
        return self.values[0] if self.values else None


class KvClient:
    def __init__(self, addresses: str | Sequence[str], timeout: float = 10.0) -> None:
        self.addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        if not self.addresses:
            raise errors.UserError("kv client: no node address", "pass host:port of a node")
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._current = 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> KvClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ operations

    def get(self, bucket: str, key: str, r: int | None = None) -> KvObject:
        status, headers, body = self._request("GET", _path(bucket, key, "r", r))
        if status == 404:
            return KvObject([], headers.get(CONTEXT_HEADER.lower(), ""))
        return self._object(status, headers, body)

    def put(
        self, bucket: str, key: str, value: bytes, context: str = "", w: int | None = None
    ) -> KvObject:
        status, headers, body = self._request("PUT", _path(bucket, key, "w", w), value, context)
        return self._object(status, headers, body, written=value)

    def delete(self, bucket: str, key: str, context: str = "", w: int | None = None) -> KvObject:
        status, headers, body = self._request("DELETE", _path(bucket, key, "w", w), None, context)
        return self._object(status, headers, body)

    def status(self) -> dict[str, Any]:
        _status, _headers, body = self._request("GET", "/kv-admin/status")
        result: dict[str, Any] = json.loads(body)
        return result

    # ------------------------------------------------------------------ plumbing

    def _object(
        self, status: int, headers: dict[str, str], body: bytes, written: bytes | None = None
    ) -> KvObject:
        context = headers.get(CONTEXT_HEADER.lower(), "")
        if status == 300:
            values = [base64.b64decode(v) for v in json.loads(body)["siblings"]]
            return KvObject(values, context)
        if status == 204:
            return KvObject([written] if written is not None else [], context)
        return KvObject([body], context)

    def _request(
        self, method: str, path: str, body: bytes | None = None, context: str = ""
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {CONTEXT_HEADER: context} if context else {}
        last: Exception | None = None
        for _ in range(len(self.addresses)):
            address = self.addresses[self._current]
            try:
                conn = self._connection()
            except OSError as exc:  # nothing was sent: any request may go to the next node
                last = exc
                self._next_node()
                continue
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                last = exc
                self._next_node()
                if method == "GET":
                    continue
                # The node may have stored it: resending with the same context would make
                # the write concurrent with itself, a spurious sibling.
                raise NoQuorum(
                    f"kv client: {method} {path} to {address} failed after it was sent: {exc}; "
                    "the write may have landed",
                    "read the key, then write again with the context of that read",
                ) from None
            got = {k.lower(): v for k, v in response.getheaders()}
            if response.status >= 400 and response.status != 404:
                raise _error(response.status, data)
            return response.status, got, data
        raise NoQuorum(
            f"kv client: no node answered ({', '.join(self.addresses)}): {last}",
            "check that the nodes run (`corral kv serve`) and the addresses are their --listen",
        )

    def _next_node(self) -> None:
        self.close()
        self._current = (self._current + 1) % len(self.addresses)

    def _connection(self) -> http.client.HTTPConnection:
        """A connected connection to the current node: connecting here, not inside
        ``request``, tells a failed connect (safe to retry anywhere) from a failed request."""
        if self._conn is not None and _dropped(self._conn):
            self.close()  # the node closed it (e.g. it restarted): reconnect, nothing was sent
        if self._conn is None:
            host, _, port = self.addresses[self._current].rpartition(":")
            conn = http.client.HTTPConnection(host or "127.0.0.1", int(port), self.timeout)
            try:
                conn.connect()
            except OSError:
                conn.close()
                raise
            self._conn = conn
        return self._conn


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """True when an idle kept-alive connection was closed by the node: readable means EOF
    (or a stray byte), since no request is outstanding."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _path(bucket: str, key: str, name: str, value: int | None) -> str:
    path = f"/kv/{quote(bucket, safe='')}/{quote(key, safe='')}"
    return f"{path}?{name}={value}" if value is not None else path


def _error(status: int, data: bytes) -> errors.CorralError:
    try:
        info = json.loads(data)
        code, message, hint = info["code"], info["message"], info.get("hint", "")
    except (ValueError, KeyError, TypeError):
        return errors.CorralError(f"kv node answered {status}: {data[:200]!r}")
    cls = _BY_CODE.get(code, errors.CorralError)
    error = cls(message, hint)
    error.code = code
    return error
