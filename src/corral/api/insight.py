"""The API's alert, "what changed" and capacity views (``/api/v1/alerts|changes|capacity``).

Alerts are read from the state the alerter commits (`control.alerter`); changes from the event
log classified by `telemetry.changes`, beside per-minute error and latency points of the
services concerned (from the collector); capacity from instance usage sampled on this node
(`control.usage_sampler`) against each service's limits, and the hosts' latest samples.
When the collector does not answer, the telemetry parts are empty and ``telemetry`` says why.
"""

from __future__ import annotations

from typing import Any

import msgspec

from corral import clock, model
from corral.control import events
from corral.control.alerter import Alerter
from corral.control.state import load_instances, load_services
from corral.control.usage_sampler import UsageSampler
from corral.errors import UserError
from corral.store.base import Store
from corral.telemetry import capacity, changes, signals


def _json(data: object) -> Any:
    return msgspec.to_builtins(data)


async def alerts_view(alerter: Alerter) -> dict[str, Any]:
    state = await alerter.state()
    active = sorted(state.active.values(), key=lambda a: (a.fired_at or a.since, a.id))
    return {
        "evaluated_at": alerter.evaluated_at or state.evaluated_at,
        "firing": _json([a for a in active if a.state in ("firing", "resolving")]),
        "pending": _json([a for a in active if a.state == "pending"]),
        "resolved": _json(state.resolved),
        "inputs": state.inputs,
    }


def _since(text: str) -> float:
    from corral.manifest.units import UnitError, parse_duration

    try:
        return parse_duration(text)
    except UnitError as exc:
        raise UserError(f"since={text!r}: {exc.message}", exc.hint or "e.g. since=1h") from None


async def changes_view(
    store: Store, alerter: Alerter, service: str, since: str, end: float | None = None
) -> dict[str, Any]:
    end = clock.wall() if end is None else end
    start = end - _since(since or "1h")
    listing = await store.range(model.EVENTS)
    views = [events.as_dict(model.decode(kv.value, model.Event)) for kv in listing.kvs]
    rows = changes.changes(views, start, end + 1e-6, service)
    wanted = sorted({service} if service else {r.service for r in rows if r.service})
    series: dict[str, Any] = {}
    problem = ""
    minutes = max(1, int((end - start) // 60) + 1)
    for name in wanted:
        query = {
            "minutes": str(minutes),
            "service": name,
            "slo": "0",
            "end": str(int(end * 1_000_000)),
        }
        try:
            found = signals.decode(await alerter.collector_get("/telemetry/signals", query))
        except Exception as exc:  # the changes stand without their curves
            problem = str(exc) or type(exc).__name__
            break
        minutes_rows = [(m.minute, m.calls, m.errors, m.hist) for m in found.services.get(name, [])]
        series[name] = _json(changes.points(minutes_rows))
    return {
        "start": start,
        "end": end,
        "changes": _json(rows),
        "series": series,
        "series_fields": ["at", "calls", "errors", "error_rate", "p50_ms", "p95_ms"],
        "telemetry": problem,
    }


async def capacity_view(
    store: Store, alerter: Alerter, sampler: UsageSampler, near: float
) -> dict[str, Any]:
    services = await load_services(store)
    limits = {}
    for name, record in services.items():
        resources = record.spec.get("resources") or {}
        limits[name] = capacity.Limits(resources.get("cpu"), resources.get("memory"))
    running = [
        (spec.id, spec.service)
        for spec, status in await load_instances(store)
        if status is not None and status.alive and spec.service in services
    ]
    usage = await sampler.sample(running)
    hosts: list[capacity.HostCapacity] = []
    problem = ""
    try:
        query = {"minutes": "1", "slo": "0"}
        found = signals.decode(await alerter.collector_get("/telemetry/signals", query))
        for name, h in sorted((found.hosts or {}).items()):
            disk = (h.disk_used, h.disk_total)
            hosts.append(capacity.host(name, h.cpu_ratio, (h.mem_used, h.mem_total), disk, near))
    except Exception as exc:  # services still have their figures
        problem = str(exc) or type(exc).__name__
    return {
        "near": near,
        "services": _json(capacity.services(usage, limits, near)),
        "hosts": _json(hosts),
        "telemetry": problem,
    }
