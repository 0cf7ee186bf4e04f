"""Applying a manifest to the Store: new releases only where a service's spec changed.

One transaction writes every changed service and its release, guarded by compares on every
service key read, so a concurrent apply or scale makes this one fail cleanly (and retry) rather
than half-apply. Services missing from the manifest are marked ``stopping``; the reconciler
stops them in reverse dependency order and then forgets them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral import clock, model
from corral.control import artifacts, events, gateway_config, releases
from corral.control.rollout import template_digest
from corral.errors import Conflict
from corral.gateway.config import GatewayConfig
from corral.manifest import LoadedManifest, service_record
from corral.store.base import Compare, Op, Put, Store


@dataclass
class ApplyResult:
    changes: dict[str, str] = field(default_factory=dict)  # service → created/updated/…
    revision: int = 0
    gateway: str = ""  # "", "created", "updated", "unchanged", "removed"
    discarded_live_edits: list[str] = field(default_factory=list)  # route names


def _desired(new: model.ServiceRecord, old: model.ServiceRecord | None) -> int:
    if old is None or old.stopping:
        return new.desired
    if new.min == new.max:
        return new.desired
    # A range keeps the current scale (moved by `corral scale`) clamped into the new bounds.
    return max(new.min, min(new.max, old.desired))


async def apply_manifest(
    store: Store,
    loaded: LoadedManifest,
    message: str = "",
    user: str = "",
    home: Path | None = None,
    also: Sequence[Op] = (),
) -> ApplyResult:
    """``also``: other sections' writes (alert config, dashboard settings), committed in the
    same transaction as the services, so a manifest is applied whole or not at all."""
    # The gateway section is checked whole before anything changes, like the services.
    gateway = None
    if loaded.manifest.gateway is not None:
        gateway = gateway_config.validate(
            loaded.manifest.gateway, set(loaded.manifest.services), loaded.source
        )
    for _attempt in range(5):
        result = await _apply_once(store, loaded, message, user, gateway, home or Path.cwd(), also)
        if result is not None:
            return result
    raise Conflict(
        "the services changed while applying the manifest (5 attempts)",
        "try again; if it keeps failing, something is writing services in a loop",
    )


async def _apply_once(
    store: Store,
    loaded: LoadedManifest,
    message: str,
    user: str,
    gateway: GatewayConfig | None,
    home: Path,
    also: Sequence[Op],
) -> ApplyResult | None:
    listing = await store.range(model.SERVICES)
    current = {
        kv.key[len(model.SERVICES) :]: (kv, model.decode(kv.value, model.ServiceRecord))
        for kv in listing.kvs
    }
    compares: list[Compare] = []
    ops: list[Op] = []
    result = ApplyResult()
    now = clock.wall()
    new_events: list[model.Event] = []
    names = sorted(loaded.manifest.services)
    for name in names:
        service = loaded.manifest.services[name]
        key = model.SERVICES + name
        old_kv, old = current.get(name, (None, None))
        compares.append(Compare(key, "mod_revision", "==", old_kv.mod_revision if old_kv else 0))
        release = (old.release + 1) if old else 1
        old_stable = await _stable_release(store, name)
        record = service_record(name, service, release=release, base_dir=loaded.base_dir)
        if service.source is not None:
            attach_artifact(record.spec, service.source, service.cwd, loaded.base_dir, home)
        record.restart_generation = old.restart_generation if old else 0
        record.digest = template_digest(record.spec, record.restart_generation)
        if old is not None and _same_spec(old.spec, record.spec):
            if not old.stopping and _same_policy(old, record):
                result.changes[name] = "unchanged"
                continue
            # Same template (only how it is run changed, or it was being removed): no release.
            record.release, record.digest = old.release, old.digest
            result.changes[name] = "restored" if old.stopping else "updated"
        else:
            result.changes[name] = "updated" if old is not None else "created"
            ops.append(
                Put(
                    model.release_key(name, record.release),
                    model.encode(
                        model.Release(
                            service=name,
                            number=record.release,
                            spec=record.spec,
                            created_at=now,
                            message=message,
                            user=user,
                            digest=record.digest,
                        )
                    ),
                )
            )
            ops += await releases.prune_ops(store, name, _history_of(record) - 1, {old_stable})
        if old is None or old.digest != record.digest:
            rollout_kv = await store.get(releases.rollout_key(name))
            previous = model.decode(rollout_kv.value, model.Rollout) if rollout_kv else None
            compares.append(
                Compare(
                    releases.rollout_key(name),
                    "mod_revision",
                    "==",
                    rollout_kv.mod_revision if rollout_kv else 0,
                )
            )
            serving_now = await releases.serving(store, old)
            rollout = releases.start_rollout("update", old, record, previous, now, serving_now)
            ops.append(Put(releases.rollout_key(name), model.encode(rollout)))
            ops += await releases.supersede_ops(store, previous, serving_now, record.release)
        record.desired = _desired(record, old)
        ops.append(Put(key, model.encode(record)))
        verb = result.changes[name]
        new_events.append(
            events.make(
                name,
                "service",
                f"{verb}: release v{record.release}, {record.desired} instance(s)"
                + (f" — {message}" if message else ""),
                service=name,
                at=now,
            )
        )
    for name in sorted(set(current) - set(names)):
        old_kv, old = current[name]
        if old.stopping or old.system:
            continue
        compares.append(Compare(old_kv.key, "mod_revision", "==", old_kv.mod_revision))
        old.stopping = True
        ops.append(Put(old_kv.key, model.encode(old)))
        result.changes[name] = "removed"
        new_events.append(
            events.make(name, "service", "removed from the manifest: stopping", service=name)
        )
    declared = gateway_config.normalized(gateway) if gateway is not None else None
    result.discarded_live_edits = await gateway_config.live_edits_discarded(store, declared)
    _, live_gw = await gateway_config.read(store)
    gw_compares, gw_ops, gw_record = await gateway_config.change_ops(
        store, gateway, source="manifest", home=home, message=message
    )
    compares += gw_compares
    ops += gw_ops
    if gateway is None:
        result.gateway = "removed" if live_gw is not None else ""
    elif live_gw is None:
        result.gateway = "created"
    else:
        changed = gw_record is not None and gw_record.version != live_gw.version
        result.gateway = "updated" if changed else "unchanged"
    ops += also
    if not ops:
        result.revision = listing.revision
        return result
    for event in new_events:
        ops.append(Put(events.event_key(event.at), model.encode(event)))
    txn = await store.txn(compares, ops)
    if not txn.succeeded:
        return None
    result.revision = txn.revision
    return result


# How many instances run is desired state, not a release: scaling in the manifest changes it
# without a new release (how a rollout runs is part of a release but not of the template:
# see `rollout.template_of`).
NOT_RELEASED = frozenset({"instances"})


def _same_spec(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def released(spec: dict[str, Any]) -> bytes:
        return model.encode_value({k: v for k, v in spec.items() if k not in NOT_RELEASED})

    return released(a) == released(b)


def attach_artifact(
    spec: dict[str, Any],
    source: str,
    cwd: str | None,
    base_dir: Path,
    home: Path,
    *,
    copy: bool = True,
) -> None:
    """Point ``spec`` at the snapshot of its ``source:`` — taken now, or with ``copy=False``
    only computed (``diff`` shows what apply would do without storing anything)."""
    root = (base_dir / source).resolve()
    if copy:
        digest, path = artifacts.snapshot(root, home)
    else:
        digest = artifacts.digest_of(root)
        path = home / "artifacts" / digest
    spec["artifact"] = digest
    spec["cwd"] = str((path / (cwd or ".")).resolve())


def _same_policy(a: model.ServiceRecord, b: model.ServiceRecord) -> bool:
    def policy(r: model.ServiceRecord) -> tuple[object, ...]:
        return (r.min, r.max, r.update, r.disruption, r.drain, r.autoscale)

    return policy(a) == policy(b)


async def _stable_release(store: Store, name: str) -> int:
    _, rollout = await releases.read_rollout(store, name)
    if rollout is None:
        return 0
    return rollout.to_release if rollout.state == "complete" else rollout.stable_release


def _history_of(record: model.ServiceRecord) -> int:
    value = record.spec.get("history", 10)
    return int(value) if isinstance(value, int) else 10


async def stop_all(store: Store) -> list[str]:
    """Mark every service stopping (``corral down``); returns their names."""
    listing = await store.range(model.SERVICES)
    ops: list[Op] = []
    compares: list[Compare] = []
    names: list[str] = []
    for kv in listing.kvs:
        record = model.decode(kv.value, model.ServiceRecord)
        names.append(record.name)
        if record.stopping:
            continue
        record.stopping = True
        compares.append(Compare(kv.key, "mod_revision", "==", kv.mod_revision))
        ops.append(Put(kv.key, model.encode(record)))
    if ops:
        event = events.make("platform", "platform", "down: stopping every service")
        ops.append(Put(events.event_key(event.at), model.encode(event)))
        txn = await store.txn(compares, ops)
        if not txn.succeeded:
            return await stop_all(store)
    return names


def base_dir_of(source: str | None) -> Path:
    return Path(source).parent if source else Path.cwd()
