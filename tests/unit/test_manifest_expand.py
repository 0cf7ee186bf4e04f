"""``${VAR}`` in command and env expands from the instance's environment at launch."""

from __future__ import annotations

import pytest

from corral.manifest.expand import expand, referenced_variables, unclosed_reference

ENV = {"PORT": "8080", "DATA_DIR": "/var/lib/db", "EMPTY": ""}


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("--port ${PORT}", "--port 8080"),
        ("${DATA_DIR}/db.sqlite", "/var/lib/db/db.sqlite"),
        ("${PORT}${PORT}", "80808080"),
        ("${MISSING}", ""),
        ("${MISSING:-9000}", "9000"),
        ("${EMPTY:-fallback}", "fallback"),
        ("${PORT:-9000}", "8080"),
        ("costs $$5", "costs $5"),
        ("$${PORT}", "${PORT}"),
        ("echo $1 $HOME", "echo $1 $HOME"),
        ("trailing $", "trailing $"),
        ("no variables", "no variables"),
    ],
)
def test_references_expand_like_a_shell(text: str, result: str) -> None:
    assert expand(text, ENV) == result


def test_referenced_variables_are_listed_once_in_order() -> None:
    assert referenced_variables("${B} ${A} ${B} $$C ${D:-x}") == ["B", "A", "D"]


@pytest.mark.parametrize(("text", "index"), [("${PORT", 0), ("a ${1X}", 2), ("${}", 0)])
def test_malformed_references_are_found(text: str, index: int) -> None:
    assert unclosed_reference(text) == index


@pytest.mark.parametrize("text", ["${PORT}", "$$", "$1", "plain", "$", "${A:-b}"])
def test_well_formed_text_has_no_malformed_reference(text: str) -> None:
    assert unclosed_reference(text) is None
