"""The compiled build is used only while it was made from the sources as they are now
(corral/compiled.py): an edited module must never be shadowed by a stale build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral import compiled


def _overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manifest: object) -> Path:
    overlay = tmp_path / "corral-compiled"
    (overlay / "corral" / "gateway").mkdir(parents=True)
    (overlay / compiled.MANIFEST).write_text(json.dumps(manifest))
    monkeypatch.setattr(compiled, "OVERLAY", overlay)
    monkeypatch.delenv("CORRAL_COMPILED", raising=False)
    return overlay


def test_a_build_of_the_current_sources_goes_first_on_the_package_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overlay = _overlay(tmp_path, monkeypatch, compiled.current_manifest("1.0"))
    path = ["/src/corral/gateway"]
    assert compiled.use_compiled("corral.gateway", path)
    assert path == [str(overlay / "corral" / "gateway"), "/src/corral/gateway"]


def test_a_build_of_an_older_source_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = compiled.current_manifest("1.0")
    sources = stale["sources"]
    assert isinstance(sources, dict)
    sources["corral.gateway.proxy"] = "0" * 64  # proxy.py edited since the build
    _overlay(tmp_path, monkeypatch, stale)
    path = ["/src/corral/gateway"]
    assert not compiled.use_compiled("corral.gateway", path)
    assert path == ["/src/corral/gateway"]


def test_corral_compiled_off_runs_the_interpreted_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _overlay(tmp_path, monkeypatch, compiled.current_manifest("1.0"))
    monkeypatch.setenv("CORRAL_COMPILED", "off")
    path: list[str] = []
    assert not compiled.use_compiled("corral.gateway", path) and path == []


def test_no_build_or_an_unreadable_manifest_runs_the_interpreted_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled, "OVERLAY", tmp_path / "absent")
    assert not compiled.use_compiled("corral.gateway", [])
    overlay = _overlay(tmp_path, monkeypatch, {})
    (overlay / compiled.MANIFEST).write_text("{not json")
    assert not compiled.use_compiled("corral.gateway", [])
