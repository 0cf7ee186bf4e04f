"""The two changes the dashboard asks of `corral.api` (see the dashboard report), applied by
patching until they are in the API itself; each step checks first and becomes a no-op once
the API has it. Run as a module to start a control plane with the dashboard:
``python -m tests.dashboard.hook server`` (the same arguments as ``corral``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

from aiohttp import web

from corral.api import auth
from corral.api import server as api_server
from corral.dashboard import app as dashboard
from corral.dashboard import session
from corral.errors import Forbidden, Unauthorized


def required_role(method: str, path: str) -> str | None:
    if path in auth.OPEN_PATHS or not path.startswith("/api/"):
        # The dashboard's pages check the session themselves so a browser gets a sign-in
        # page rather than JSON (corral.dashboard.app); its static files hold no data.
        return None
    if method in ("GET", "HEAD"):
        return "read"
    return "admin"


def authorize(
    method: str,
    path: str,
    header: str | None,
    tokens: Mapping[str, str],
    cookie: str | None = None,
) -> None:
    need = required_role(method, path)
    if need is None:
        return
    role = auth.role_of(header, tokens)
    if role is None and method in ("GET", "HEAD") and session.grants_read(cookie, tokens):
        role = "read"  # the dashboard's session cookie reads, and never writes
    if role is None:
        raise Unauthorized(
            "missing or unknown API token",
            "send `Authorization: Bearer $(cat $CORRAL_HOME/token)`; the CLI does this for you",
        )
    if auth.ROLE_RANK[role] < auth.ROLE_RANK[need]:
        raise Forbidden(
            f"the {role} token cannot call {method} {path}",
            f"this call needs the {need} token",
        )


@web.middleware
async def _auth(
    self: api_server.Api, request: web.Request, handler: api_server.Handler
) -> web.StreamResponse:
    check: Callable[..., None] = auth.authorize  # with the `cookie` argument the lead adds
    check(
        request.method,
        request.path,
        request.headers.get("Authorization"),
        self.tokens,
        request.cookies.get(session.COOKIE),
    )
    return await handler(request)


def install() -> None:
    if "cookie" not in inspect.signature(auth.authorize).parameters:
        auth.required_role = required_role
        auth.authorize = authorize  # adds the cookie argument (a compatible signature)
        api_server.Api._auth = _auth  # type: ignore[method-assign]  # passes the cookie
    original = api_server.Api.app
    if getattr(original, "_with_dashboard", False):
        return

    def app(self: api_server.Api) -> web.Application:
        application = original(self)
        dashboard.setup(application, self)  # idempotent: a no-op once Api.app calls it
        return application

    app._with_dashboard = True  # type: ignore[attr-defined]  # marks the wrapper
    api_server.Api.app = app  # type: ignore[method-assign]  # the lead's one-line hook


if __name__ == "__main__":
    install()
    from corral.cli.main import main

    main()
