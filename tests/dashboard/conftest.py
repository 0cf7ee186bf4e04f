"""What every browser test of the dashboard shares: a fresh Chromium profile per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.dashboard.browser import Browser, chromium


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Browser]:
    executable = chromium()
    if executable is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    b = await Browser.launch(executable, tmp_path / "profile")
    try:
        yield b
    finally:
        await b.close()
