"""Tokens and roles for the API (DESIGN.md *Security*).

``admin`` may do everything, ``read`` may call GET endpoints (and open the dashboard),
``ingest`` may only post telemetry. Tokens come in ``Authorization: Bearer …``; comparisons
are constant-time. Which role a route needs is decided here, once.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from corral.dashboard import session
from corral.errors import Forbidden, Unauthorized

ROLE_RANK = {"ingest": 0, "read": 1, "admin": 2}
OPEN_PATHS = frozenset({"/api/v1/health", "/api/v1/openapi.json"})


def role_of(header: str | None, tokens: Mapping[str, str]) -> str | None:
    if not header or not header.startswith("Bearer "):
        return None
    offered = header[len("Bearer ") :].strip().encode()
    found = None
    for role, token in sorted(tokens.items()):
        if hmac.compare_digest(offered, token.encode()):
            found = role
    return found


def required_role(method: str, path: str) -> str | None:
    if path in OPEN_PATHS or not path.startswith("/api/"):
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
    public: bool = False,
) -> None:
    """Raise unless the request may go on. `public`: the dashboard is public and this is an
    anonymous read of one of its views (`corral.dashboard.public.opens`)."""
    need = required_role(method, path)
    if need is None or (public and need == "read"):
        return
    role = role_of(header, tokens)
    if role is None and method in ("GET", "HEAD") and session.grants_read(cookie, tokens):
        role = "read"  # the dashboard's session cookie reads, and never writes
    if role is None:
        raise Unauthorized(
            "missing or unknown API token",
            "send `Authorization: Bearer $(cat $CORRAL_HOME/token)`; the CLI does this for you",
        )
    if ROLE_RANK[role] < ROLE_RANK[need]:
        raise Forbidden(
            f"the {role} token cannot call {method} {path}",
            f"this call needs the {need} token",
        )
