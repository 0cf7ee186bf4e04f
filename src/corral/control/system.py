"""The platform's own services, run by the agent like any instance and shown by
``ps --system``: the telemetry collector (always) and the gateway (when configured, see
``control.gateway_config``). Their records are written here, at control-plane start, so a
changed Corral (a new command line) rolls them like any release."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from corral import clock, model
from corral.control.rollout import template_digest
from corral.store.base import Compare, Put, Store

COLLECTOR = "corral-collector"


def collector_spec(home: Path) -> dict[str, Any]:
    return {
        "mode": "cattle",
        "kind": "service",
        "command": [
            sys.executable,
            "-m",
            "corral.telemetry.collector",
            "--home",
            str(home),
            "--port",
            "${PORT}",
        ],
        "cwd": str(home),
        "env": {"CORRAL_HOME": str(home)},
        "ports": {"http": "auto"},
        "health": {"readiness": {"http": "/health", "port": "http", "period": 0.5}},
        "stop": {"signal": "SIGTERM", "grace": 10.0, "drain": 0.0},
        "restart": {"backoff": {"initial": 0.5, "max": 10.0, "reset_after": 600.0}},
    }


async def ensure_collector(store: Store, home: Path) -> None:
    spec = collector_spec(home)
    digest = template_digest(spec)
    key = model.SERVICES + COLLECTOR
    kv = await store.get(key)
    old = model.decode(kv.value, model.ServiceRecord) if kv else None
    if old is not None and old.digest == digest and not old.stopping:
        return
    release = (old.release if old else 0) + 1
    record = model.ServiceRecord(
        name=COLLECTOR,
        release=release,
        desired=1,
        min=1,
        max=1,
        system=True,
        spec=spec,
        digest=digest,
        drain=0.0,
        update=model.UpdatePolicy(strategy="recreate", min_healthy=0.0),
    )
    release_record = model.Release(
        service=COLLECTOR,
        number=release,
        spec=spec,
        created_at=clock.wall(),
        digest=digest,
        message="telemetry collector",
    )
    await store.txn(
        [Compare(key, "mod_revision", "==", kv.mod_revision if kv else 0)],
        [
            Put(key, model.encode(record)),
            Put(model.release_key(COLLECTOR, release), model.encode(release_record)),
        ],
    )
