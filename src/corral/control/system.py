"""The platform's own services, run by the agent like any instance and shown by
``ps --system``: the telemetry collector (always) and the gateway (when configured, see
``control.gateway_config``). Their records are written here, at control-plane start, so a
changed Corral (a new command line) rolls them like any release.

The manifest's ``metrics.retention`` reaches the collector as ``--metrics-retention``: apply
stores it (``/corral/collector/metrics-retention``) and rewrites the collector's record, so a
changed retention restarts the collector (its time series stays on disk; the new tiers apply
from its next maintenance pass);
a control-plane start reuses the stored value, so a restart alone never rolls the collector."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from corral import clock, model
from corral.control.rollout import template_digest
from corral.store.base import Compare, Op, Put, Store
from corral.telemetry import retention

COLLECTOR = "corral-collector"
METRICS_RETENTION_KEY = model.PREFIX + "collector/metrics-retention"


def collector_spec(home: Path, metrics_retention: str = "") -> dict[str, Any]:
    """The collector's template; ``metrics_retention`` ("" the defaults) as the manifest says
    it, e.g. ``10s:24h,1m:7d,1h:90d``."""
    spec: dict[str, Any] = {
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
    if metrics_retention:
        spec["command"] += ["--metrics-retention", metrics_retention]
    return spec


def retention_argument(manifest_retention: str) -> str:
    """The manifest's retention as the collector's argument: "" when it is the default, so a
    manifest that does not set it leaves the collector's command line as it always was."""
    tiers = retention.parse_tiers(manifest_retention)
    return "" if tiers == retention.DEFAULT_TIERS else retention.format_tiers(tiers)


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


async def ensure_collector(store: Store, home: Path, metrics_retention: str | None = None) -> None:
    """Write the collector's record when it is missing or its template changed.
    ``metrics_retention`` None (a control-plane start) keeps the one the last apply stored."""
    ops: list[Op] = []
    stored = await store.get(METRICS_RETENTION_KEY)
    stored_value = stored.value.decode() if stored else ""
    if metrics_retention is None:
        metrics_retention = stored_value
    elif metrics_retention != stored_value:
        ops.append(Put(METRICS_RETENTION_KEY, metrics_retention.encode()))
    key = model.SERVICES + COLLECTOR
    kv = await store.get(key)
    old = model.decode(kv.value, model.ServiceRecord) if kv else None
    spec = collector_spec(home, metrics_retention)
    record = system_record(COLLECTOR, spec, (old.release if old else 0) + 1)
    if old is not None and old.digest == record.digest and not old.stopping:
        if ops:
            await store.txn([], ops)
        return
    message = "telemetry collector"
    if metrics_retention:
        message += f" (metrics retention {metrics_retention})"
    await store.txn(
        [Compare(key, "mod_revision", "==", kv.mod_revision if kv else 0)],
        record_ops(record, message) + ops,
    )
