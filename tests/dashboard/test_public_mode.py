"""`dashboard: {public: true}`: the read-only views open without a token; changes, logs,
backups and the raw Store still need one; a manifest without the section closes them again.
In-process: the API's own application, as the control plane serves it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from corral.api.server import Api
from corral.home import Home
from corral.store.sqlite import SQLiteStore

TOKENS = {"admin": "admin-secret", "read": "read-secret", "ingest": "ingest-secret"}
ADMIN = {"Authorization": "Bearer admin-secret"}
Client = TestClient[web.Request, web.Application]


def manifest(public: bool | None) -> dict[str, object]:
    body: dict[str, object] = {"services": {"web": {"command": "python3 -m http.server $PORT"}}}
    if public is not None:
        body["dashboard"] = {"public": public}
    return body


async def apply(client: Client, tmp_path: Path, public: bool | None) -> None:
    response = await client.post(
        "/api/v1/apply",
        json={"manifest": manifest(public), "base_dir": str(tmp_path), "source": "test"},
        headers=ADMIN,
    )
    assert response.status == 200, await response.text()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    store = await SQLiteStore.open(tmp_path / "store.db")
    api = Api(store, Home(tmp_path), dict(TOKENS))
    async with TestClient(TestServer(api.app())) as test_client:
        yield test_client
    await api.close()
    await store.close()


async def test_a_public_dashboard_opens_its_pages_and_reads_without_a_token(
    client: Client, tmp_path: Path
) -> None:
    assert (await client.get("/")).status == 401
    await apply(client, tmp_path, public=True)
    for page in ("/", "/services/web", "/slo", "/hosts", "/impact", "/topology"):
        response = await client.get(page)
        assert response.status == 200, page
        assert "Sign in" not in await response.text()
    services = await client.get("/api/v1/services")
    assert services.status == 200
    assert [s["name"] for s in await services.json()] == ["web"]
    for path in ("/api/v1/instances", "/api/v1/events", "/api/v1/services/web/releases"):
        assert (await client.get(path)).status == 200, path
    changes = await client.get("/services/web/changes")
    assert [c["kind"] for c in await changes.json()] == ["release"]


async def test_a_public_dashboard_still_needs_tokens_for_changes_logs_and_backups(
    client: Client, tmp_path: Path
) -> None:
    await apply(client, tmp_path, public=True)
    scale = await client.post("/api/v1/services/web/scale", json={"instances": 3})
    assert scale.status == 401
    for path in (
        "/api/v1/logs/web",
        "/api/v1/backup",
        "/api/v1/secrets",
        "/api/v1/store/range?prefix=/corral/services/",
    ):
        assert (await client.get(path)).status == 401, path
    wrong = await client.get("/api/v1/services", headers={"Authorization": "Bearer guess"})
    assert wrong.status == 401, "a wrong token is refused, not treated as anonymous"


async def test_a_manifest_without_the_section_closes_the_dashboard_again(
    client: Client, tmp_path: Path
) -> None:
    await apply(client, tmp_path, public=True)
    assert (await client.get("/slo")).status == 200
    await apply(client, tmp_path, public=None)
    assert (await client.get("/slo")).status == 401
    assert (await client.get("/api/v1/services")).status == 401
