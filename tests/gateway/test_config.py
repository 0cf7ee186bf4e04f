"""Gateway config validation: every problem at its path, with a hint."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ManifestError, NotFound
from corral.gateway.config import load_gateway_config, parse_gateway_config


def problems(text: str, mode: str = "standalone") -> dict[str, str]:
    with pytest.raises(ManifestError) as caught:
        parse_gateway_config(text, source="gw.yaml", mode=mode)
    return {p.path: p.message for p in caught.value.problems}


def test_every_problem_is_reported_at_its_path_at_once() -> None:
    found = problems(
        """
listen: nowhere
workers: 0
routes:
  - name: a
    match: {path: /x, path_prefix: /y}
    upstreams: [127.0.0.1:9001]
  - name: a
    upstreams: [127.0.0.1:99999]
    lb: {policy: ring_hash}
  - name: c
    timeouts: {connect: soon}
    match: {methods: [GTE]}
"""
    )
    assert "listen" in found
    assert "workers" in found
    assert "routes[2].match.methods[0]" in found
    assert "routes[0].match" in found and "one kind of path" in found["routes[0].match"]
    assert "already used" in found["routes[1].name"]
    assert "routes[1].upstreams[0].address" in found
    assert "hash_on" in found["routes[1].lb"]
    assert "routes[2].timeouts.connect" in found
    assert found["routes[2]"] == "has no target"


def test_unknown_keys_get_a_did_you_mean() -> None:
    with pytest.raises(ManifestError) as caught:
        parse_gateway_config("routes:\n  - name: a\n    upstream: [x:1]\n", source="gw")
    hints = {p.path: p.hint for p in caught.value.problems}
    assert "upstreams" in hints["routes[0].upstream"]


def test_standalone_mode_refuses_service_targets() -> None:
    found = problems("routes:\n  - name: a\n    service: shop\n")
    assert "routes[0].service" in found


def test_platform_mode_accepts_service_targets() -> None:
    config = parse_gateway_config(
        "routes:\n  - {name: a, service: shop}\n", source="m", mode="platform"
    )
    assert config.routes[0].service == "shop"


def test_a_manifest_gateway_section_loads_as_is_with_tls_paths_beside_the_file(
    tmp_path: Path,
) -> None:
    file = tmp_path / "gw.yaml"
    file.write_text(
        "gateway:\n  listen: 127.0.0.1:0\n  tls: {cert: c.pem, key: k.pem}\n"
        "  routes:\n    - name: a\n"
        "      upstreams: ['127.0.0.1:1', {address: '127.0.0.1:2', weight: 3}]\n"
    )
    config = load_gateway_config(file)
    assert config.tls is not None and config.tls.cert == str(tmp_path / "c.pem")
    assert [(u.address, u.weight) for u in config.routes[0].upstreams] == [
        ("127.0.0.1:1", 1),
        ("127.0.0.1:2", 3),
    ]


def test_a_wrapped_section_reports_paths_under_gateway() -> None:
    found = problems("gateway:\n  workers: many\n")
    assert "gateway.workers" in found


def test_missing_file_says_so() -> None:
    with pytest.raises(NotFound):
        load_gateway_config("/nonexistent/gw.yaml")


def test_yaml_syntax_errors_give_line_and_column() -> None:
    found = problems("routes: [\n")
    assert any("line" in m for m in found.values())
