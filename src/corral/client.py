"""A small synchronous client of the Corral API (stdlib ``http.client``), used by the CLI and
tests. Errors come back as the same ``corral.errors`` classes the server raised."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
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
}


class Client:
    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.token = token
        self.timeout = timeout

    @classmethod
    def for_home(cls, home: Home, timeout: float = 30.0) -> Client:
        url = home.api_url()
        if url is None:
            raise errors.PlatformUnavailable(
                f"no control plane is running for {home.path}",
                "start one with `corral up FILE -d` (or `corral server`); "
                "CORRAL_HOME selects the platform",
            )
        return cls(url, home.token("admin"), timeout)

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

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
        conn = self._connection(timeout or self.timeout)
        try:
            conn.request(method, target, body=payload, headers=self._headers(payload))
            response = conn.getresponse()
            data = response.read()
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise errors.PlatformUnavailable(
                f"the control plane at {self.base_url} does not answer ({exc})",
                "is it running? `corral up FILE -d` starts it; see $CORRAL_HOME/server.log",
            ) from None
        finally:
            conn.close()
        if response.status >= 400:
            raise _error(response.status, data)
        if response.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(data) if data else None
        return data

    def stream(self, path: str, query: dict[str, Any] | None = None) -> Iterator[str]:
        """Yield lines of a streaming response (logs -f, server-sent events) until it ends."""
        target = "/api/v1" + path + (("?" + urlencode(query)) if query else "")
        conn = self._connection(None)
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
        except (ConnectionError, OSError) as exc:
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
