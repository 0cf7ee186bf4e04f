"""From a validated service to what the control plane stores (``corral.model`` records).

A release's spec is the service as the user wrote it after normalization, as JSON: durations
in seconds, sizes in bytes, ``command`` a list, ``depends_on`` a map, every default filled in,
and ``cwd`` made absolute against the manifest's directory (a release must not depend on where
the CLI ran). Secrets stay references (``{"secret": NAME}``): their values live apart from
releases (DESIGN.md, *Security*). ``spec_from_dict`` re-validates a stored spec, so a spec
written by an older Corral is checked by today's rules before it is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.manifest.load import validate_service_data
from corral.manifest.schema import Autoscale, SecretRef, Service
from corral.model import (
    AutoscalePolicy,
    BackoffPolicy,
    Dependency,
    ServiceRecord,
    UpdatePolicy,
)

__all__ = [
    "autoscale_policy",
    "secret_references",
    "service_record",
    "service_spec",
    "spec_from_dict",
]


def service_spec(name: str, service: Service, base_dir: Path) -> dict[str, Any]:
    """The JSON-able release spec of ``service`` (see the module docstring)."""
    del name  # the spec is stored under the service's name; kept for a symmetric signature
    spec = service.model_dump(mode="json")
    spec["cwd"] = str((base_dir / service.cwd if service.cwd else base_dir).resolve())
    return spec


def spec_from_dict(data: Mapping[str, Any], *, name: str = "service") -> Service:
    """A stored spec validated again as a ``Service``; raises ``ManifestError``."""
    return validate_service_data(dict(data), name=name)


def service_record(
    name: str,
    service: Service,
    *,
    release: int,
    base_dir: Path,
    desired: int | None = None,
) -> ServiceRecord:
    """The desired state of ``service`` at ``release``.

    ``desired`` defaults to the service's initial count (``instances: N`` or ``min``); a given
    ``desired`` (a count the user scaled to) is kept, clamped into the new bounds."""
    low, high = service.instance_bounds()
    count = service.initial_instances() if desired is None else min(max(desired, low), high)
    backoff = service.restart.backoff
    return ServiceRecord(
        name=name,
        release=release,
        desired=count,
        min=low,
        max=high,
        mode=service.mode,
        kind="task" if service.kind == "task" else "service",  # kv nodes are services
        depends_on=[
            Dependency(service=dep, condition=condition)
            for dep, condition in service.depends_on.items()
        ],
        backoff=BackoffPolicy(
            initial=backoff.initial,
            max=backoff.max,
            reset_after=backoff.reset_after,
            failed_after=service.restart.failed_after,
        ),
        spec=service_spec(name, service, base_dir),
        update=UpdatePolicy(
            strategy=service.update.strategy,
            max_surge=service.update.max_surge,
            max_unavailable=service.update.max_unavailable,
            min_healthy=service.update.min_healthy,
            healthy_deadline=service.update.healthy_deadline,
            progress_deadline=service.update.progress_deadline,
            auto_rollback=service.update.auto_rollback,
            canary=service.update.canary,
            auto_promote=service.update.auto_promote,
        ),
        disruption=service.disruption.max_unavailable,
        drain=service.stop.drain,
        autoscale=autoscale_policy(service.autoscale),
    )


def autoscale_policy(autoscale: Autoscale | None) -> AutoscalePolicy | None:
    """The stored policy: a cpu target ``"70%"`` becomes the fraction 0.7."""
    if autoscale is None:
        return None
    target = autoscale.target
    value = float(target.rstrip("%")) / 100.0 if isinstance(target, str) else float(target)
    return AutoscalePolicy(
        metric=autoscale.metric,
        target=value,
        period=autoscale.period,
        scale_down_window=autoscale.scale_down_window,
    )


def secret_references(service: Service) -> list[str]:
    """The secret names ``service``'s env refers to, sorted (to check they exist on apply)."""
    return sorted({v.secret for v in service.env.values() if isinstance(v, SecretRef)})
