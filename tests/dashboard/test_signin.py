"""Signing a browser in: `/?token=READ_TOKEN` sets an HttpOnly session cookie and drops the
token from the address; the cookie reads the API and never writes it. In-process (no browser):
the API's own application with the dashboard added, as the control plane serves it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from corral.api.server import Api
from corral.dashboard import session
from corral.home import Home
from corral.store.sqlite import SQLiteStore

TOKENS = {"admin": "admin-secret", "read": "read-secret", "ingest": "ingest-secret"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    store = await SQLiteStore.open(tmp_path / "store.db")
    api = Api(store, Home(tmp_path), dict(TOKENS))
    application = api.app()
    async with TestClient(TestServer(application)) as test_client:
        yield test_client
    await api.close()
    await store.close()


async def test_token_in_the_address_signs_in_with_an_httponly_cookie_and_is_dropped(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/services/web?token=read-secret&x=1", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/services/web?x=1"
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{session.COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "read-secret" not in cookie

    overview = await client.get("/")
    assert overview.status == 200
    assert "<h1>Services</h1>" in await overview.text()


async def test_a_browser_that_is_not_signed_in_gets_a_sign_in_page_not_json(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/topology")
    assert response.status == 401
    assert response.content_type == "text/html"
    assert "corral dashboard" in await response.text()


async def test_the_ingest_token_or_a_wrong_one_does_not_sign_in(
    client: TestClient[web.Request, web.Application],
) -> None:
    for token in ("ingest-secret", "guess"):
        response = await client.get(f"/?token={token}", allow_redirects=False)
        assert response.status == 401
        assert "Set-Cookie" not in response.headers


async def test_the_session_cookie_reads_the_api_but_cannot_change_anything(
    client: TestClient[web.Request, web.Application],
) -> None:
    assert (await client.get("/api/v1/services")).status == 401
    await client.get("/?token=read-secret", allow_redirects=False)
    assert (await client.get("/api/v1/services")).status == 200
    scale = await client.post("/api/v1/services/web/scale", json={"instances": 2})
    assert scale.status == 401


async def test_a_rotated_read_token_ends_the_session(tmp_path: Path) -> None:
    old = session.cookie_value(TOKENS)
    assert session.grants_read(old, TOKENS)
    assert not session.grants_read(old, {**TOKENS, "read": "rotated"})
    assert not session.grants_read(None, TOKENS)


async def test_static_files_are_served_and_missing_chart_libraries_are_explained(
    client: TestClient[web.Request, web.Application],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = await client.get("/static/overview.js")
    assert script.status == 200
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert (await client.get("/static/../app.py")).status == 404

    monkeypatch.setenv("CORRAL_DASHBOARD_VENDOR", str(tmp_path / "nowhere"))
    missing = await client.get("/static/vendor/uPlot.esm.js")
    assert missing.status == 404
    assert "bootstrap" in await missing.text()
    await client.get("/?token=read-secret", allow_redirects=False)
    page = await (await client.get("/topology")).text()
    assert "not installed" in page and 'data-charts="missing"' in page
