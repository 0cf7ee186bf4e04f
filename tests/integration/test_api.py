"""The HTTP API in process: tokens, error bodies, validation, secrets never leaving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from corral.api.server import Api
from corral.errors import Compacted
from corral.home import Home
from corral.store.base import WatchEvent
from corral.store.sqlite import SQLiteStore

MANIFEST = {
    "services": {
        "web": {
            "command": "python3 -m http.server",
            "instances": {"min": 1, "max": 3},
            "env": {"DB_PASSWORD": {"secret": "db-password"}, "MODE": "prod"},
        }
    }
}


class Ctx:
    def __init__(
        self, client: TestClient[Any, Any], tokens: dict[str, str], store: SQLiteStore
    ) -> None:
        self.client = client
        self.tokens = tokens
        self.store = store

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Ctx]:
    home = Home(tmp_path / "home")
    home.create()
    tokens = home.ensure_tokens()
    store = await SQLiteStore.open(home.store_path)
    server = TestServer(Api(store, home, tokens).app())
    client: TestClient[Any, Any] = TestClient(server)
    await client.start_server()
    try:
        yield Ctx(client, tokens, store)
    finally:
        await client.close()
        await store.close()


async def test_calls_without_a_token_get_401_with_a_hint(api: Ctx) -> None:
    response = await api.client.get("/api/v1/services")
    assert response.status == 401
    body = await response.json()
    assert body["code"] == "unauthorized" and "Bearer" in body["hint"]


async def test_the_read_token_reads_but_cannot_change_anything(api: Ctx) -> None:
    assert (await api.client.get("/api/v1/services", headers=api.auth("read"))).status == 200
    response = await api.client.post(
        "/api/v1/apply", json={"manifest": MANIFEST}, headers=api.auth("read")
    )
    assert response.status == 403
    assert (await response.json())["code"] == "forbidden"
    ingest = await api.client.get("/api/v1/services", headers=api.auth("ingest"))
    assert ingest.status == 403


async def test_health_and_openapi_answer_without_a_token(api: Ctx) -> None:
    assert (await api.client.get("/api/v1/health")).status == 200
    doc = await (await api.client.get("/api/v1/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert "/api/v1/services/{name}/scale" in doc["paths"]


async def test_a_malformed_body_gets_400_not_a_traceback(api: Ctx) -> None:
    response = await api.client.post(
        "/api/v1/apply",
        data=b"{not json",
        headers={**api.auth(), "Content-Type": "application/json"},
    )
    assert response.status == 400
    body = await response.json()
    assert set(body) == {"code", "message", "hint"} and "JSON" in body["message"]
    response = await api.client.post("/api/v1/apply", json=[1, 2], headers=api.auth())
    assert response.status == 400


async def test_an_invalid_manifest_is_refused_whole_with_every_problem(api: Ctx) -> None:
    bad = {"services": {"web": {"comand": "x", "instances": {"min": 3, "max": 1}}}}
    response = await api.client.post("/api/v1/apply", json={"manifest": bad}, headers=api.auth())
    assert response.status == 422
    body = await response.json()
    paths = {p["path"] for p in body["problems"]}
    assert "services.web.comand" in paths and "services.web.instances" in paths
    services = await (await api.client.get("/api/v1/services", headers=api.auth())).json()
    assert services == []  # nothing half-applied


async def test_apply_twice_is_a_noop_and_a_change_makes_a_new_release(api: Ctx) -> None:
    first = await api.client.post("/api/v1/apply", json={"manifest": MANIFEST}, headers=api.auth())
    assert (await first.json())["changes"] == {"web": "created"}
    again = await api.client.post("/api/v1/apply", json={"manifest": MANIFEST}, headers=api.auth())
    assert (await again.json())["changes"] == {"web": "unchanged"}
    changed = {"services": {"web": {**MANIFEST["services"]["web"], "version": "2"}}}
    third = await api.client.post("/api/v1/apply", json={"manifest": changed}, headers=api.auth())
    assert (await third.json())["changes"] == {"web": "updated"}
    [web] = await (await api.client.get("/api/v1/services", headers=api.auth())).json()
    assert web["release"] == 2


async def test_scale_outside_the_declared_bounds_names_the_path(api: Ctx) -> None:
    await api.client.post("/api/v1/apply", json={"manifest": MANIFEST}, headers=api.auth())
    response = await api.client.post(
        "/api/v1/services/web/scale", json={"instances": 7}, headers=api.auth()
    )
    assert response.status == 400
    body = await response.json()
    assert "services.web.instances" in body["message"] and "[1, 3]" in body["message"]
    ok = await api.client.post(
        "/api/v1/services/web/scale", json={"instances": 3}, headers=api.auth()
    )
    assert (await ok.json()) == {"service": "web", "from": 1, "to": 3}
    missing = await api.client.post(
        "/api/v1/services/nope/scale", json={"instances": 1}, headers=api.auth()
    )
    assert missing.status == 404 and "web" in (await missing.json())["hint"]


async def test_secret_values_never_appear_in_any_response(api: Ctx) -> None:
    value = "s3cr3t-Value-42"
    put = await api.client.put(
        "/api/v1/secrets/db-password", json={"value": value}, headers=api.auth()
    )
    assert put.status == 200
    await api.client.post("/api/v1/apply", json={"manifest": MANIFEST}, headers=api.auth())
    for path in ("/api/v1/secrets", "/api/v1/services", "/api/v1/events", "/api/v1/instances"):
        text = await (await api.client.get(path, headers=api.auth())).text()
        assert value not in text, path
    names = await (await api.client.get("/api/v1/secrets", headers=api.auth())).json()
    assert names == ["db-password"]


async def test_metrics_answer_on_loopback_without_a_token_in_prometheus_text(api: Ctx) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    await api.client.post("/api/v1/apply", json={"manifest": MANIFEST}, headers=api.auth())
    await api.client.get("/api/v1/services")  # a 401, counted too
    response = await api.client.get("/metrics")
    assert response.status == 200
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["corral_api_requests"].samples
        if s.name == "corral_api_requests_total"
    }
    assert requests[("/api/v1/apply", "200")] == 1
    assert requests[("/api/v1/services", "401")] == 1
    assert families["corral_store_revision"].samples[0].value > 1


async def test_an_idle_store_watch_sends_heartbeats_then_the_change(
    api: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher cut off from a node notices missing heartbeats (it cannot notice silence)."""
    from corral.api import server

    monkeypatch.setattr(server, "WATCH_HEARTBEAT", 0.05)
    response = await api.client.get(
        "/api/v1/store/watch", params={"prefix": "/corral/services/"}, headers=api.auth("read")
    )
    assert response.status == 200
    lines: list[str] = []
    while lines.count(": ping") < 2:
        lines.append((await response.content.readline()).decode().rstrip("\n"))
    await api.client.post("/api/v1/apply", json={"manifest": MANIFEST}, headers=api.auth())
    while not any(line.startswith("data: ") for line in lines):
        lines.append((await response.content.readline()).decode().rstrip("\n"))
    assert '"key": "/corral/services/web"' in next(x for x in lines if x.startswith("data: "))
    response.close()


async def test_a_store_watch_from_a_compacted_revision_answers_event_compacted(
    tmp_path: Path,
) -> None:
    class CompactedAtOnce(SQLiteStore):
        # a backend whose watch() refuses a compacted start before it returns an iterator
        def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
            raise Compacted(7, start_revision)

    home = Home(tmp_path / "home")
    home.create()
    tokens = home.ensure_tokens()
    store = await CompactedAtOnce.open(home.store_path)
    client: TestClient[Any, Any] = TestClient(TestServer(Api(store, home, tokens).app()))
    await client.start_server()
    try:
        response = await client.get(
            "/api/v1/store/watch",
            params={"prefix": "/corral/services/", "start_revision": "2"},
            headers={"Authorization": f"Bearer {tokens['read']}"},
        )
        assert response.status == 200
        assert "event: compacted\ndata: 7\n" in await response.text()
    finally:
        await client.close()
        await store.close()


async def test_the_remote_store_never_hands_out_the_alerting_config(api: Ctx) -> None:
    # webhook URLs carry their receivers' credentials
    for path in ("/api/v1/store/range", "/api/v1/store/watch"):
        for prefix in ("/corral/alerts/config", "/corral/alerts/"):
            response = await api.client.get(
                path, params={"prefix": prefix}, headers=api.auth("read")
            )
            assert response.status == 403, (path, prefix)
    ok = await api.client.get(
        "/api/v1/store/range", params={"prefix": "/corral/alerts/state"}, headers=api.auth("read")
    )
    assert ok.status == 200


async def test_alert_rules_and_dashboard_settings_are_applied_with_the_services_in_one_revision(
    api: Ctx,
) -> None:
    """A manifest is applied whole: no window where the services are new and the rest old."""
    from corral.control.alerter import CONFIG_KEY
    from corral.dashboard.public import KEY as DASHBOARD_KEY

    manifest = {
        **MANIFEST,
        "alerts": {"rules": [{"name": "errors", "kind": "error_rate", "threshold": 0.05}]},
        "dashboard": {"public": True},
    }
    await api.client.put("/api/v1/secrets/db-password", json={"value": "pw"}, headers=api.auth())
    response = await api.client.post(
        "/api/v1/apply", json={"manifest": manifest}, headers=api.auth()
    )
    assert response.status == 200, await response.text()
    revision = (await response.json())["revision"]

    async def mod_revision(key: str) -> int:
        kv = await api.store.get(key)
        assert kv is not None, key
        return kv.mod_revision

    assert await mod_revision("/corral/services/web") == revision
    assert await mod_revision(DASHBOARD_KEY) == revision
    assert await mod_revision(CONFIG_KEY) == revision
    again = await api.client.post("/api/v1/apply", json={"manifest": manifest}, headers=api.auth())
    assert again.status == 200
    for key in ("/corral/services/web", DASHBOARD_KEY, CONFIG_KEY):  # unchanged: not rewritten
        assert await mod_revision(key) == revision
