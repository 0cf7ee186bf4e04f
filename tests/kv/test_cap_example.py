"""examples/cap/run.py, as a user runs it: the same 3 | 2 partition refused by the Raft store's
minority and accepted on both sides by the AP store, whose versions come back as siblings."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import netns

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not netns.available()[0], reason=netns.available()[1]),
]

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "cap" / "run.py"


def test_cap_example_shows_raft_refusing_the_minority_and_kv_keeping_both_sides_writes() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        # SIGINT, not SIGKILL: the script removes its namespaces and nodes on the way out.
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "refused: no quorum" in out
    assert "siblings: milk, bread | milk, eggs" in out
    assert "Raft chose consistency, kv chose availability" in out
