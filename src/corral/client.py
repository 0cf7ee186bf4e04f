"""A small synchronous client of the Corral API (stdlib ``http.client``), used by the CLI and
tests. Errors come back as the same ``corral.errors`` classes the server raised."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlencode, urlsplit

from corral import errors
from corral.home import Home

_BY_CODE: dict[str, type[errors.CorralError]] = {
    "invalid_manifest": errors.UserError,
    "not_found": errors.NotFound,
    "conflict": errors.Conflict,
    "unauthorized": errors.Unauthorized,
    "forbidden": errors.Forbidden,
    "unavailable": errors.PlatformUnavailable,
    "already_running": errors.AlreadyRunning,
    "no_quorum": errors.PlatformUnavailable,
}
CONNECT_TIMEOUT = 2.0  # seconds to wait for a node to accept: a dead one is skipped quickly
_FAILOVER_CODES = {"no_quorum", "unavailable"}  # a 503 another node may not give


class Client:
    """A client of one control plane, or of a cluster's nodes: ``base_url`` may be a list of
    URLs. A node that refuses the connection is skipped for the next (and the client stays
    with the one that answered); a 307/308 redirect (a follower pointing at the leader) is
    followed with the same method and body. A request that reached a node and then failed, or
    was answered 503 ``no_quorum``/``unavailable``, is retried elsewhere only when it is a
    read: a write's outcome would be unknown."""

    def __init__(
        self, base_url: str | Sequence[str], token: str | None, timeout: float = 30.0
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise errors.PlatformUnavailable("no control plane URL to talk to", "corral up")
        self.urls = [url.rstrip("/") for url in urls]
        self.token = token
        self.timeout = timeout
        self._use(self.urls[0])

    def _use(self, url: str) -> None:
        parts = urlsplit(url)
        self.base_url = url.rstrip("/")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80

    @classmethod
    def for_home(cls, home: Home, timeout: float = 30.0) -> Client:
        urls = home.api_urls()
        if not urls:
            raise errors.PlatformUnavailable(
                f"no control plane is running for {home.path}",
                "start one with `corral up FILE -d` (or `corral server`); "
                "CORRAL_HOME selects the platform",
            )
        return cls(urls, home.token("admin"), timeout)

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        connect = CONNECT_TIMEOUT if timeout is None else min(timeout, CONNECT_TIMEOUT)
        return http.client.HTTPConnection(self.host, self.port, timeout=connect)

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        """A connection to the current URL, or to the next one that accepts."""
        start = self.urls.index(self.base_url) if self.base_url in self.urls else 0
        order = [self.base_url] + [
            self.urls[(start + i) % len(self.urls)] for i in range(1, len(self.urls))
        ]
        failures: list[str] = []
        for url in dict.fromkeys(order):
            self._use(url)
            conn = self._connection(timeout)
            try:
                conn.connect()
                assert conn.sock is not None  # connect() set it
                conn.sock.settimeout(timeout)  # the whole request's, not the connect timeout
                return conn
            except OSError as exc:
                conn.close()
                failures.append(f"{url} ({exc})")
        raise errors.PlatformUnavailable(
            "no control plane answers: " + ", ".join(failures),
            "is it running? `corral up FILE -d` starts it; see $CORRAL_HOME/server.log",
        )

    def _headers(self, body: bytes | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        target = "/api/v1" + path + (("?" + urlencode(query)) if query else "")
        payload = None if body is None else json.dumps(body).encode()
        tries = len(self.urls) if method in ("GET", "HEAD") else 1
        redirects = 0
        while True:
            conn = self._connect(timeout or self.timeout)
            try:
                conn.request(method, target, body=payload, headers=self._headers(payload))
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                tries -= 1
                if tries > 0:
                    self._skip()
                    continue
                raise errors.PlatformUnavailable(
                    f"the control plane at {self.base_url} does not answer ({exc})",
                    "is it running? `corral up FILE -d` starts it; see $CORRAL_HOME/server.log",
                ) from None
            finally:
                conn.close()
            if response.status == 503 and tries > 1:
                failure = _error(response.status, data)
                if failure.code in _FAILOVER_CODES:
                    tries -= 1
                    self._skip()
                    continue
            location = response.getheader("Location")
            if response.status in (307, 308) and location and redirects < 3:
                redirects += 1
                parts = urlsplit(location)
                self._use(f"{parts.scheme}://{parts.netloc}")
                target = parts.path + (f"?{parts.query}" if parts.query else "")
                continue
            break
        if response.status >= 400:
            raise _error(response.status, data)
        if response.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(data) if data else None
        return data

    def _skip(self) -> None:
        if self.base_url in self.urls and len(self.urls) > 1:
            self._use(self.urls[(self.urls.index(self.base_url) + 1) % len(self.urls)])

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[str]:
        """Yield lines of a streaming response (logs -f, server-sent events) until it ends."""
        target = "/api/v1" + path + (("?" + urlencode(query)) if query else "")
        conn = self._connect(None)
        try:
            conn.request("GET", target, headers=self._headers(None))
            response = conn.getresponse()
            if response.status >= 400:
                raise _error(response.status, response.read())
            while True:
                line = response.readline()
                if not line:
                    return
                yield line.decode("utf-8", "replace").rstrip("\n")
        except (OSError, http.client.HTTPException) as exc:
            raise errors.PlatformUnavailable(
                f"lost the control plane at {self.base_url} ({exc})",
                "see $CORRAL_HOME/server.log",
            ) from None
        finally:
            conn.close()

    def healthy(self) -> bool:
        try:
            self.request("GET", "/health", timeout=2.0)
        except errors.CorralError:
            return False
        return True


def _error(status: int, data: bytes) -> errors.CorralError:
    try:
        body = json.loads(data)
        code, message, hint = body["code"], body["message"], body.get("hint", "")
    except (ValueError, KeyError, TypeError):
        return errors.PlatformUnavailable(
            f"the control plane answered HTTP {status}", "see $CORRAL_HOME/server.log"
        )
    if code == "invalid_manifest" and isinstance(body.get("problems"), list):
        problems = [
            errors.Problem(p.get("path", ""), p.get("message", ""), p.get("hint", ""))
            for p in body["problems"]
        ]
        return errors.ManifestError(problems)
    cls = _BY_CODE.get(code)
    if cls is None:
        cls = errors.UserError if 400 <= status < 500 else errors.PlatformUnavailable
    err = cls(message, hint, code=code)
    err.status = status
    return err
