"""Read models the API returns: services and instances as users see them in `status` / `ps`."""

from __future__ import annotations

from typing import Any

from corral import model
from corral.control import backoff
from corral.control.state import load_instances, load_services

__all__ = ["instance_view", "load_instances", "load_services", "service_view"]


def instance_view(
    spec: model.InstanceSpec,
    status: model.InstanceStatus | None,
    service: model.ServiceRecord | None,
    now: float,
) -> dict[str, Any]:
    st = status or model.InstanceStatus(id=spec.id)
    next_restart_in: float | None = None
    if (
        spec.desired == "running"
        and not st.alive
        and st.exit is not None
        and not st.exit.requested
        and st.restart_at is not None
    ):
        next_restart_in = max(0.0, st.restart_at - now)
    elif (
        service is not None
        and not st.alive
        and st.exit is not None
        and st.restart_at is None
        and st.consecutive_crashes
        and not st.exit.requested
    ):
        due = backoff.restart_due(service.backoff, st.exit.at, st.consecutive_crashes, spec.id)
        next_restart_in = max(0.0, due - now)
    return {
        "id": spec.id,
        "service": spec.service,
        "phase": st.phase if status else "provision",
        "reason": st.reason,
        "pid": st.pid if st.alive else None,
        "port": next(iter(spec.ports.values()), None),
        "ports": spec.ports,
        "node": spec.node,
        "release": spec.release,
        "restarts": st.restarts,
        "consecutive_crashes": st.consecutive_crashes,
        "started_at": st.started_at,
        "age": (now - st.started_at) if st.started_at and st.alive else None,
        "last_exit": st.exit.reason if st.exit else None,
        "last_exit_at": st.exit.at if st.exit else None,
        "next_restart_in": next_restart_in,
        "desired": spec.desired,
        "ordinal": spec.ordinal,
        "mode": "pet" if spec.ordinal is not None else "cattle",
        "system": spec.system,
    }


def service_view(
    record: model.ServiceRecord,
    status: model.ServiceStatus | None,
    instances: list[dict[str, Any]],
) -> dict[str, Any]:
    ready = sum(1 for i in instances if i["phase"] == "run")
    return {
        "name": record.name,
        "state": status.state if status else ("destroy" if record.stopping else "provision"),
        "reason": status.reason if status else "",
        "desired": record.desired,
        "ready": ready,
        "instances": len(instances),
        "release": record.release,
        "version": record.spec.get("version"),
        "mode": record.mode,
        "kind": record.kind,
        "min": record.min,
        "max": record.max,
        "depends_on": {d.service: d.condition for d in record.depends_on},
        "stopping": record.stopping,
        "system": record.system,
    }
