"""Files in $CORRAL_HOME that several processes rewrite (a cluster's nodes share one home)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WRITER = """
import sys
from pathlib import Path
from corral.home import Home
home = Home(Path(sys.argv[1]))
for i in range(300):
    home.write_atomic("api", f"{sys.argv[2]} {i}\\n")
"""


def test_nodes_rewriting_a_shared_home_file_at_once_never_crash(tmp_path: Path) -> None:
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(n)], stderr=subprocess.PIPE
        )
        for n in range(3)
    ]
    errors = [w.communicate(timeout=60)[1].decode() for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0], errors
    assert (tmp_path / "api").read_text().endswith(" 299\n")  # always one writer's whole line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api"]  # no temp file left behind
