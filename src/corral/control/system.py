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
from corral.store.base import Compare, Op, Put, Store

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


def system_record(name: str, spec: dict[str, Any], release: int) -> model.ServiceRecord:
    """A platform service: one instance, replaced (not surged) when its template changes."""
    return model.ServiceRecord(
        name=name,
        release=release,
        desired=1,
        min=1,
        max=1,
        system=True,
        spec=spec,
        digest=template_digest(spec),
        drain=0.0,
        update=model.UpdatePolicy(strategy="recreate", min_healthy=0.0),
    )


def record_ops(record: model.ServiceRecord, message: str) -> list[Op]:
    """Write ``record`` and its release."""
    release = model.Release(
        service=record.name,
        number=record.release,
        spec=record.spec,
        created_at=clock.wall(),
        digest=record.digest,
        message=message,
    )
    return [
        Put(model.SERVICES + record.name, model.encode(record)),
        Put(model.release_key(record.name, record.release), model.encode(release)),
    ]


async def ensure_collector(store: Store, home: Path) -> None:
    key = model.SERVICES + COLLECTOR
    kv = await store.get(key)
    old = model.decode(kv.value, model.ServiceRecord) if kv else None
    record = system_record(COLLECTOR, collector_spec(home), (old.release if old else 0) + 1)
    if old is not None and old.digest == record.digest and not old.stopping:
        return
    await store.txn(
        [Compare(key, "mod_revision", "==", kv.mod_revision if kv else 0)],
        record_ops(record, "telemetry collector"),
    )
