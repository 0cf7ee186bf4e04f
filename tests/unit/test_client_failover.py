"""The API client across a cluster's nodes: which failures move a request to the next node
and which become a ``CorralError`` (never a traceback)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from corral.client import Client
from corral.errors import PlatformUnavailable

Answer = Callable[[BaseHTTPRequestHandler], None]


def _json(status: int, body: dict[str, Any]) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return answer


def _dies_mid_response(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "1000")
    handler.end_headers()
    handler.wfile.write(b'{"partial": ')
    handler.wfile.flush()
    handler.close_connection = True


def _stream_dies(handler: BaseHTTPRequestHandler) -> None:
    handler.protocol_version = "HTTP/1.1"
    handler.send_response(200)
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    handler.wfile.write(b"6\r\nline1\n\r\n10\r\nlin")  # the second chunk is cut off
    handler.wfile.flush()
    handler.close_connection = True


NO_QUORUM = _json(503, {"code": "no_quorum", "message": "no quorum: no leader", "hint": "wait"})


@contextmanager
def node(answer: Answer) -> Iterator[str]:
    """A fake control-plane node on a free loopback port, answering every request alike."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer(self)

        def do_POST(self) -> None:
            answer(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_read_answered_no_quorum_is_served_by_the_next_node() -> None:
    with node(NO_QUORUM) as lost, node(_json(200, {"ok": True})) as healthy:
        assert Client([lost, healthy], None).request("GET", "/services") == {"ok": True}


def test_a_write_answered_no_quorum_is_not_repeated_elsewhere() -> None:
    with (
        node(NO_QUORUM) as lost,
        node(_json(200, {"ok": True})) as healthy,
        pytest.raises(PlatformUnavailable) as caught,
    ):
        Client([lost, healthy], None).request("POST", "/apply", {})
    assert "no quorum" in caught.value.message


def test_a_node_dying_mid_response_is_a_platform_unavailable_error() -> None:
    with node(_dies_mid_response) as dying, pytest.raises(PlatformUnavailable):
        Client(dying, None, timeout=5.0).request("GET", "/services")
    with node(_stream_dies) as dying:
        lines = []
        with pytest.raises(PlatformUnavailable):
            for line in Client(dying, None, timeout=5.0).stream("/logs"):
                lines.append(line)
        assert lines == ["line1"]


def test_a_node_that_does_not_accept_is_skipped_after_a_short_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waited: list[float | None] = []
    real = socket.create_connection

    def create_connection(address: tuple[str, int], timeout: Any = None, *rest: Any) -> Any:
        if address[1] == 9:  # the black-holed node: record how long we would have waited
            waited.append(timeout)
            raise TimeoutError("timed out")
        return real(address, timeout, *rest)

    # http.client connects through socket.create_connection
    monkeypatch.setattr(socket, "create_connection", create_connection)
    with node(_json(200, {"ok": True})) as healthy:
        client = Client(["http://127.0.0.1:9", healthy], None, timeout=30.0)
        assert client.request("GET", "/services") == {"ok": True}
    assert waited and all(t is not None and t <= 2.0 for t in waited)
