"""Shared fixtures: every test gets its own CORRAL_HOME and never touches the user's."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def corral_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    old = os.environ.get("CORRAL_HOME")
    os.environ["CORRAL_HOME"] = str(home)
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("CORRAL_HOME", None)
        else:
            os.environ["CORRAL_HOME"] = old
