"""The dashboard's browser session: a cookie that stands for the read token.

Theory of operation: `/?token=READ_TOKEN` proves the holder may read; the server answers with
a cookie whose value is an HMAC of the read token (never the token itself), so it needs no
server-side session table, survives a control-plane restart, and stops working the moment the
read token is rotated. The cookie grants exactly the read role, and only for GET/HEAD: it is
`SameSite=Strict` and `HttpOnly`, and a cross-site page can neither send it nor read it.
Comparisons are constant-time. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

COOKIE = "corral_session"
_CONTEXT = b"corral dashboard session v1"
READ_ROLES = ("read", "admin")


def cookie_value(tokens: Mapping[str, str]) -> str | None:
    """The session cookie's value for these tokens (None when there is no read token)."""
    read = tokens.get("read")
    if not read:
        return None
    return hmac.new(read.encode(), _CONTEXT, hashlib.sha256).hexdigest()


def grants_read(cookie: str | None, tokens: Mapping[str, str]) -> bool:
    """Whether a request's session cookie stands for the current read token."""
    expected = cookie_value(tokens)
    if not cookie or expected is None:
        return False
    return hmac.compare_digest(cookie.encode(), expected.encode())


def token_role(token: str, tokens: Mapping[str, str]) -> str | None:
    """The role a token offered in `?token=` has, if it may sign in (read or admin)."""
    found = None
    for role, known in sorted(tokens.items()):
        if known and hmac.compare_digest(token.encode(), known.encode()):
            found = role
    return found if found in READ_ROLES else None
