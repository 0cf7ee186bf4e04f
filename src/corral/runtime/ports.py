"""TCP ports for instances: pick a free one, or tell whether one is taken."""

from __future__ import annotations

import errno
import socket


def allocate_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "0.0.0.0") -> bool:
    """Whether an app could not bind ``port`` now.

    Binding the wildcard address conflicts with a listener on any address, and SO_REUSEADDR
    (which servers set) keeps sockets in TIME_WAIT from counting as "in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
        return False
