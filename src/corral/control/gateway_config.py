"""The gateway's live configuration in the Store: numbered versions, one writer path.

The manifest's ``gateway:`` section is the declared config; the admin API edits the live
config. Every change — an apply or an API edit — writes a new numbered version (kept in
``/corral/gateway/versions/``) in one transaction with the live record, validated whole
first, so a bad route is refused with its path and nothing changes. ``corral apply``
replaces the live config with the manifest's and reports which live edits that discards.

The gateway itself runs as the platform's own service ``corral-gateway`` (a system service,
shown by ``ps --system``), supervised by the agent like any instance; it follows the live
config and the services' ``run`` instances through the API's remote Store.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec

from corral import clock, model
from corral.control import events
from corral.control.system import record_ops, system_record
from corral.errors import Conflict, NotFound, Problem, UserError
from corral.gateway.config import GatewayConfig, parse_address, validate_gateway_data
from corral.store.base import Compare, Delete, Op, Put, Store

GATEWAY = model.PREFIX + "gateway/"
CONFIG_KEY = GATEWAY + "config"
VERSIONS = GATEWAY + "versions/"
SERVICE = "corral-gateway"
VERSIONS_KEPT = 20


class GatewayRecord(msgspec.Struct):
    version: int
    config: dict[str, Any]
    source: str  # "manifest" or "api"
    updated_at: float
    message: str = ""
    previous: int = 0


def version_key(version: int) -> str:
    return f"{VERSIONS}{version:08d}"


async def read(store: Store) -> tuple[int, GatewayRecord | None]:
    kv = await store.get(CONFIG_KEY)
    if kv is None:
        return 0, None
    return kv.mod_revision, model.decode(kv.value, GatewayRecord)


def validate(data: object, services: set[str], source: str = "gateway") -> GatewayConfig:
    """The platform-mode config, plus the check only the platform can make: every route's
    service exists."""
    config = validate_gateway_data(data, source=source, mode="platform")
    problems = [
        Problem(
            f"gateway.routes[{i}].service",
            f"route {route.name!r} targets unknown service {route.service!r}",
            "known services: " + (", ".join(sorted(services)) or "none"),
        )
        for i, route in enumerate(config.routes)
        if route.service is not None and route.service not in services
    ]
    if problems:
        from corral.errors import ManifestError

        raise ManifestError(problems, source)
    return config


def normalized(config: GatewayConfig) -> dict[str, Any]:
    data: dict[str, Any] = config.model_dump(mode="json", exclude_defaults=True)
    data.setdefault("listen", config.listen)
    return data


def system_service(config: GatewayConfig, home: Path, release: int) -> model.ServiceRecord:
    """The record of the platform's own gateway process for ``config``."""
    _host, port = parse_address(config.listen)
    spec: dict[str, Any] = {
        "mode": "cattle",
        "kind": "service",
        "command": [sys.executable, "-m", "corral.gateway.platform"],
        "cwd": str(home),
        "env": {"CORRAL_HOME": str(home)},
        "ports": {"http": port} if port else {},  # declared, so no instance is given it
        "health": {"readiness": {"tcp": port, "period": 0.5, "timeout": 1.0}} if port else {},
        "stop": {"signal": "SIGTERM", "grace": 15.0, "drain": 0.0},
        "restart": {"backoff": {"initial": 0.5, "max": 10.0, "reset_after": 600.0}},
    }
    return system_record(SERVICE, spec, release)


async def change_ops(
    store: Store,
    config: GatewayConfig | None,
    *,
    source: str,
    home: Path,
    message: str = "",
) -> tuple[list[Compare], list[Op], GatewayRecord | None]:
    """Compares and ops that make ``config`` live (None: no gateway), with the platform's
    gateway service kept in step. Empty ops when nothing changes."""
    revision, current = await read(store)
    compares: list[Compare] = [Compare(CONFIG_KEY, "mod_revision", "==", revision)]
    ops: list[Op] = []
    now = clock.wall()
    svc_kv = await store.get(model.SERVICES + SERVICE)
    svc = model.decode(svc_kv.value, model.ServiceRecord) if svc_kv else None
    compares.append(
        Compare(
            model.SERVICES + SERVICE, "mod_revision", "==", svc_kv.mod_revision if svc_kv else 0
        )
    )
    if config is None:
        if current is not None:
            ops.append(Delete(CONFIG_KEY))
        if svc is not None and not svc.stopping:
            svc.stopping = True
            ops.append(Put(model.SERVICES + SERVICE, model.encode(svc)))
        return compares, ops, None
    data = normalized(config)
    if current is not None and model.encode_value(current.config) == model.encode_value(data):
        record = current
    else:
        version = (current.version if current else 0) + 1
        record = GatewayRecord(
            version=version,
            config=data,
            source=source,
            updated_at=now,
            message=message,
            previous=current.version if current else 0,
        )
        ops.append(Put(CONFIG_KEY, model.encode(record)))
        ops.append(Put(version_key(version), model.encode(record)))
        if version > VERSIONS_KEPT:
            ops.append(Delete(version_key(version - VERSIONS_KEPT)))
        event = events.make(
            "gateway",
            "platform",
            f"gateway config v{version} ({source})" + (f": {message}" if message else ""),
        )
        ops.append(Put(events.event_key(event.at), model.encode(event)))
    wanted = system_service(config, home, (svc.release if svc else 0) + 1)
    if svc is None or svc.stopping or svc.digest != wanted.digest:
        if svc is not None and svc.digest == wanted.digest:
            wanted.release = svc.release
        ops += record_ops(wanted, "gateway listener")
    return compares, ops, record


async def live_edits_discarded(store: Store, new: dict[str, Any] | None) -> list[str]:
    """Routes the admin API changed since the manifest last set the config, that an apply of
    ``new`` would discard or overwrite (named, for `apply` to show first)."""
    _, current = await read(store)
    if current is None or current.source != "api":
        return []
    live = {r["name"]: r for r in current.config.get("routes", [])}
    declared = {r["name"]: r for r in (new or {}).get("routes", [])}
    names = [
        n
        for n in sorted(live)
        if model.encode_value(live[n]) != model.encode_value(declared.get(n))
    ]
    return names


async def edit(
    store: Store,
    services: set[str],
    home: Path,
    change: Any,
    *,
    message: str,
    dry_run: bool = False,
) -> tuple[GatewayRecord | None, GatewayConfig]:
    """Apply ``change(config_dict) -> config_dict`` to the live config as a new version."""
    for _attempt in range(5):
        _, current = await read(store)
        base: dict[str, Any] = dict(current.config) if current else {"listen": "127.0.0.1:8080"}
        base["routes"] = [dict(r) for r in base.get("routes", [])]
        config = validate(change(base), services)
        if dry_run:
            return current, config
        compares, ops, record = await change_ops(
            store, config, source="api", home=home, message=message
        )
        if not ops:
            return record, config
        txn = await store.txn(compares, ops)
        if txn.succeeded:
            return record, config
    raise Conflict("the gateway config kept changing during the edit", "try again")


def route_index(config: dict[str, Any], name: str) -> int:
    for i, route in enumerate(config.get("routes", [])):
        if route.get("name") == name:
            return i
    raise NotFound(
        f"no route named {name!r}",
        "`corral routes` lists them: "
        + (", ".join(r.get("name", "?") for r in config.get("routes", [])) or "none yet"),
    )


async def previous_version(store: Store) -> GatewayRecord:
    _, current = await read(store)
    if current is None or not current.previous:
        raise UserError("the gateway config has no earlier version", "nothing to roll back to")
    kv = await store.get(version_key(current.previous))
    if kv is None:
        raise NotFound(f"gateway config v{current.previous} is no longer kept")
    return model.decode(kv.value, GatewayRecord)
