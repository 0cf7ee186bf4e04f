"""Public mode: `dashboard: {public: true}` in the manifest opens the read-only views to anyone
who can reach the API's address, without the read token.

What it opens: the dashboard's pages and the GET endpoints their scripts read (`PUBLIC_READS`:
services, instances, events, releases and rollouts, gateway routes, telemetry queries). What
stays closed: every change (POST/PUT/DELETE need the admin token as always), and the reads
that were never views — logs (applications print secrets by accident), backups (the whole
Store), the remote Store, secret names, `/metrics` off loopback.

Where it lives: one Store key written by every apply (the manifest is the source of truth: a
manifest without the section closes the dashboard again). The API reads it only for a request
that carries no credentials and asks for a public read, so signed-in traffic costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from corral import model
from corral.dashboard import session
from corral.store.base import Delete, Op, Put, Store

KEY = model.PREFIX + "dashboard/settings"

# Path patterns (under /api/v1) that the dashboard's pages read.
PUBLIC_READS = re.compile(
    r"^/api/v1/("
    r"services|services/[^/]+|services/[^/]+/(releases|rollout)|instances|"
    r"events|events/stream|gateway/config|gateway/routes|gateway/routes/[^/]+|telemetry/.+"
    r")$"
)


class Settings(msgspec.Struct, frozen=True):
    public: bool = False


def opens(method: str, path: str) -> bool:
    """Whether public mode opens this API request (a read the dashboard's views make)."""
    return method in ("GET", "HEAD") and PUBLIC_READS.match(path) is not None


async def lets_through(
    store: Store,
    method: str,
    path: str,
    header: str | None,
    cookie: str | None,
    tokens: Mapping[str, str],
) -> bool:
    """Whether an API request without usable credentials may read `path` because the
    dashboard is public. Only such a request pays for reading the setting."""
    if header is not None or not opens(method, path) or session.grants_read(cookie, tokens):
        return False
    return (await read(store)).public


async def read(store: Store) -> Settings:
    kv = await store.get(KEY)
    if kv is None:
        return Settings()
    return msgspec.json.decode(kv.value, type=Settings)


def write_op(settings: Settings) -> Op:
    """The Store operation that records `settings` (a delete for the defaults)."""
    if settings == Settings():
        return Delete(KEY)
    return Put(KEY, msgspec.json.encode(settings))


async def change_ops(store: Store, settings: Settings) -> list[Op]:
    """``write_op`` when ``settings`` differ from the stored ones, else nothing."""
    return [] if await read(store) == settings else [write_op(settings)]


def from_manifest(section: object) -> Settings:
    """The settings a validated manifest's `dashboard` section asks for (None: defaults)."""
    return Settings(public=bool(getattr(section, "public", False)))
