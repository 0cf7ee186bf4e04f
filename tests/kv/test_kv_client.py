"""The AP store's HTTP client fails over between nodes without duplicating a write (issue 9
review): only a request that never reached a node goes to the next one."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from corral.kv.client import KvClient
from corral.kv.wire import NoQuorum
from corral.testing import free_ports


class _Answering(BaseHTTPRequestHandler):
    """A node that stores nothing: it answers every request 204 and counts them."""

    seen: list[str]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append(self.command)  # type: ignore[attr-defined]  # set below
        self.send_response(204)
        self.send_header("X-Kv-Context", "")
        self.end_headers()

    do_GET = do_PUT = do_DELETE = _answer

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[tuple[str, list[str]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answering)
    seen: list[str] = []
    server.seen = seen  # type: ignore[attr-defined]  # read by the handler
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def silent() -> Iterator[str]:
    """A node that takes connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_a_write_whose_node_went_silent_is_not_resent_to_another_node(
    silent: str, answering: tuple[str, list[str]]
) -> None:
    address, seen = answering
    with KvClient([silent, address], timeout=0.3) as kv:
        with pytest.raises(NoQuorum, match="may have landed") as caught:
            kv.put("carts", "alice", b"3 apples", "ctx")
        assert "read the key" in caught.value.hint
        with pytest.raises(NoQuorum, match="may have landed"):
            KvClient([silent, address], timeout=0.3).delete("carts", "alice")
    assert seen == []  # a second copy would be concurrent with the first: a sibling


def test_a_read_whose_node_went_silent_is_answered_by_the_next_node(
    silent: str, answering: tuple[str, list[str]]
) -> None:
    address, seen = answering
    with KvClient([silent, address], timeout=0.3) as kv:
        kv.get("carts", "alice")
    assert seen == ["GET"]


def test_a_write_to_a_node_that_refuses_connections_goes_to_the_next_node(
    answering: tuple[str, list[str]],
) -> None:
    address, seen = answering
    with KvClient([f"127.0.0.1:{free_ports(1)[0]}", address], timeout=2) as kv:
        kv.put("carts", "alice", b"3 apples")
        kv.put("carts", "alice", b"4 apples")  # after the node closed the connection
    assert seen == ["PUT", "PUT"]
