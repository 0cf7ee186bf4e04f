"""`kind: kv` services on a real platform: the AP store's nodes run as pets, dependants find
them through CARTS_URL and $CORRAL_ENDPOINTS, and a killed node comes back with its own data."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from corral.errors import ManifestError
from corral.kv.client import KvClient
from corral.manifest import Service, validate_manifest_data
from corral.testing import Platform, wait_for

pytestmark = pytest.mark.timeout(120)


def _carts(**fields: Any) -> Service:
    data = {"services": {"carts": {"kind": "kv", "instances": 3, **fields}}}
    return validate_manifest_data(data, source="m.yaml", base_dir=Path()).manifest.services["carts"]


def test_kv_service_runs_pets_with_http_then_peer_ports_and_readiness_on_health() -> None:
    carts = _carts(kv={"n": 3, "r": 1, "w": 3, "conflicts": "lww"})
    assert carts.mode == "pet"
    assert list(carts.ports) == ["http", "peer"]  # http first: it is CARTS_URL
    assert carts.health.readiness is not None and carts.health.readiness.http == "/health"
    command = " ".join(carts.command)
    assert "-m corral.cli.kv serve --name ${CORRAL_INSTANCE}" in command
    assert "--join ${PEERS_PEER} --data ${DATA_DIR}" in command
    assert "--n 3 --r 1 --w 3 --vnodes 256 --conflicts lww" in command
    assert carts.kv is not None and carts.kv.warning() == ""


@pytest.mark.parametrize(
    ("fields", "where", "what"),
    [
        ({"kv": {"n": 4}}, "services.carts.kv:", "n (4) is more than instances (3)"),
        ({"kv": {"r": 4}}, "services.carts.kv.r:", "r (4) is more than n (3)"),
        ({"kv": {"w": 0}}, "services.carts.kv.w:", ""),
        ({"kv": {"conflicts": "newest"}}, "services.carts.kv.conflicts:", "'siblings' or 'lww'"),
        ({"mode": "cattle"}, "services.carts.kv:", "runs pets"),
    ],
)
def test_kv_settings_that_cannot_work_are_refused_at_their_path(
    fields: dict[str, Any], where: str, what: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        _carts(**fields)
    assert where in str(caught.value) and what in str(caught.value)


def test_kv_quorum_without_overlap_is_allowed_with_a_not_read_your_writes_warning() -> None:
    carts = _carts(kv={"n": 3, "r": 1, "w": 2})
    assert carts.kv is not None and "not read-your-writes" in carts.kv.warning()


def test_kv_settings_on_an_ordinary_service_are_refused() -> None:
    data = {"services": {"web": {"command": "x", "kv": {"n": 1}}}}
    with pytest.raises(ManifestError, match="kv settings apply to kind: kv only"):
        validate_manifest_data(data, source="m.yaml", base_dir=Path())


# A dependant app: writes and reads a cart through the address the platform gave it.
SHOP = textwrap.dedent(
    """
    import json, os, sys, time
    from corral.kv.client import KvClient
    from corral.errors import CorralError

    url = os.environ["CARTS_URL"]
    endpoints = json.load(open(os.environ["CORRAL_ENDPOINTS"])).get("carts", [])
    deadline = time.monotonic() + 30
    with KvClient(url.removeprefix("http://")) as kv:
        while True:  # the first ready node may not see the others yet: W=2 needs two
            try:
                kv.put("carts", "alice", b"apples")
                break
            except CorralError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        value = kv.get("carts", "alice").value
    with open(os.environ["OUT"], "w") as out:
        json.dump({"url": url, "endpoints": endpoints, "value": value.decode()}, out)
    """
)


def _manifest(tmp_path: Path) -> str:
    (tmp_path / "shop.py").write_text(SHOP)
    return textwrap.dedent(
        f"""
        services:
          carts:
            kind: kv
            instances: 3
            kv: {{n: 3, r: 2, w: 2, vnodes: 64}}
          shop:
            kind: task
            command: [{json.dumps(sys.executable)}, {json.dumps(str(tmp_path / "shop.py"))}]
            depends_on: [carts]
            env: {{OUT: {json.dumps(str(tmp_path / "shop.json"))}}}
        """
    )


def _status(address: str) -> dict[str, Any]:
    with KvClient(address, timeout=2.0) as kv:
        return kv.status()


def _sees_alive(address: str, count: int) -> bool:
    alive: int = sum(m["state"] == "alive" for m in _status(address)["members"])
    return alive == count


def _http(instance: dict[str, Any]) -> str:
    return f"127.0.0.1:{instance['ports']['http']}"


def test_kv_service_serves_dependants_and_a_killed_node_restarts_in_place_with_its_data(
    tmp_path: Path,
) -> None:
    with Platform.start(tmp_path / "home") as platform:
        platform.apply_text(_manifest(tmp_path))
        platform.wait_for(lambda: platform.ready("carts") == 3, 40, "3 carts nodes in run")
        nodes = {i["id"]: i for i in platform.running("carts")}
        assert sorted(nodes) == ["carts-0", "carts-1", "carts-2"]

        # The dependant wrote and read through the URL the platform handed it.
        out = tmp_path / "shop.json"
        wait_for(out.exists, 30, what="the shop task to finish")
        shop = json.loads(out.read_text())
        assert shop["value"] == "apples"
        assert shop["url"].removeprefix("http://") in {_http(i) for i in nodes.values()}

        # Every node sees the other two (they joined through the platform's PEERS_PEER).
        for instance in nodes.values():
            wait_for(
                partial(_sees_alive, _http(instance), 3),
                20,
                what=f"{instance['id']} to see 3 alive members",
            )

        with KvClient([_http(i) for i in nodes.values()]) as kv:
            for k in range(5):  # on every replica, durable, before the kill
                kv.put("carts", f"bob-{k}", f"pears-{k}".encode(), w=3)
        victim = nodes["carts-0"]
        keys_before = _status(_http(victim))["keys"]
        assert keys_before >= 6

        os.kill(victim["pid"], signal.SIGKILL)

        def back() -> dict[str, Any] | None:
            for i in platform.running("carts"):
                if i["id"] == "carts-0" and i["pid"] != victim["pid"]:
                    return i
            return None

        revived = platform.wait_for(back, 30, "carts-0 restarted in place")
        assert revived["ports"] == victim["ports"]  # same identity: name, ports, DATA_DIR
        status = _status(_http(revived))
        assert status["name"] == "carts-0"
        # Its own data dir still holds every key (no handoff or repair had time to refill it).
        assert status["keys"] >= keys_before
        with KvClient(_http(revived)) as kv:
            assert kv.get("carts", "bob-3").value == b"pears-3"
            assert kv.get("carts", "alice").value == b"apples"
