"""Scenario transcripts: each file in ``scenarios/`` is a Raft conversation and its trace.

A file is a sequence of blocks — ``# comments``, a command line, ``----``, the expected output —
separated by blank lines. Each file cites the paper section it checks. Regenerate every
expectation with ``REWRITE=1 pytest tests/consensus/test_scenarios.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.consensus.harness import Harness

SCENARIOS = Path(__file__).parent / "scenarios"


def run_transcript(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """Run a transcript; return the rewritten text and (command, expected, actual) triples."""
    harness = Harness()
    lines = text.splitlines()
    out: list[str] = []
    results: list[tuple[str, str, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            out.append(line)
            i += 1
            continue
        command = line
        i += 1
        assert i < len(lines) and lines[i] == "----", f"line {i}: expected ---- after {command!r}"
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        actual = harness.run(command)
        results.append((command, "\n".join(expected), actual))
        out.extend([command, "----", actual])
    return "\n".join(out) + "\n", results


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.txt")), ids=lambda p: p.stem)
def test_scenario_transcript_matches_its_expected_trace(path: Path) -> None:
    text = path.read_text()
    assert "§" in text.split("\n", 1)[0] or "check-quorum" in text.split("\n", 1)[0], (
        f"{path.name}: the first line must cite the paper section it checks"
    )
    rewritten, results = run_transcript(text)
    if os.environ.get("REWRITE") == "1":
        path.write_text(rewritten)
        return
    for command, expected, actual in results:
        assert actual == expected, (
            f"{path.name}: `{command}` produced a different trace "
            "(REWRITE=1 regenerates; review the diff)"
            f"\n--- expected\n{expected}\n--- actual\n{actual}"
        )
