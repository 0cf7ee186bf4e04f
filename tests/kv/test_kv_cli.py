"""`python -m corral.cli.kv serve` (how the platform runs kv nodes) reports a node that cannot
start as error and hint, never a traceback (issue 9 review)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from corral.kv.storage import KvStorage
from corral.kv.testing import free_port
from corral.testing import free_ports

pytestmark = pytest.mark.timeout(60)


def _serve(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "corral.cli.kv", "serve", "--membership", "test"]
    return subprocess.Popen(
        [*command, "--listen", f"127.0.0.1:{free_ports(1)[0]}", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_node_that_cannot_start_prints_error_and_hint_and_exits_nonzero(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    held = KvStorage(tmp_path / "held", "other")  # another node's data directory
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        peer = f"127.0.0.1:{free_port()}"
        # All at once: each start costs an interpreter start.
        started = {
            "r must be between 1 and n": (
                _serve("--data", str(tmp_path / "a"), "--peer", peer, "--r", "5"),
                2,
            ),
            "cannot create its data directory": (
                _serve("--data", str(not_a_dir), "--peer", peer),
                1,
            ),
            "in use by another process": (
                _serve("--data", str(tmp_path / "held"), "--peer", peer),
                1,
            ),
            "cannot start": (
                _serve("--data", str(tmp_path / "b"), "--peer", f"127.0.0.1:{busy}"),
                1,
            ),
        }
        try:
            for says, (proc, code) in started.items():
                _out, err = proc.communicate(timeout=30)
                assert proc.returncode == code, err
                assert says in err and "hint:" in err, err
                assert "Traceback" not in err, err
        finally:
            for proc, _code in started.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            held.close()
