"""Releases and rollouts in the Store: starting a rollout, rolling back, keeping history.

A release is immutable but for its ``outcome``. Every change of a service's template (a new
release from ``apply``, a rollback, a ``corral restart``) starts a ``Rollout`` record in the same
transaction as the service record, so the reconciler always finds the two consistent. A
rollback is a new release that copies an old one, and it changes the desired state too: the
service record now holds the old spec, so a later ``apply`` of the newer file is a visible
change (a new release), never silently fought.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral import clock, model
from corral.control import events, state
from corral.control.rollout import template_digest
from corral.errors import Conflict, NotFound, UserError
from corral.manifest.records import service_record, spec_from_dict
from corral.store.base import Compare, Delete, Op, Put, Store


def rollout_key(service: str) -> str:
    return model.ROLLOUTS + service


def start_rollout(
    kind: str,
    old: model.ServiceRecord | None,
    new: model.ServiceRecord,
    previous: model.Rollout | None,
    now: float,
    previous_serving: bool = False,
) -> model.Rollout:
    """The rollout that takes ``new``'s template live. Its stable release — where an automatic
    rollback returns — is the last release that was fully healthy: the previous rollout's
    target if it completed, or if every desired instance of it is serving right now
    (``previous_serving``: superseded just before ``min_healthy`` elapsed)."""
    stable_release, stable_digest = 0, ""
    if previous is not None:
        if previous.state == "complete" or (previous_serving and previous.state != "failed"):
            stable_release, stable_digest = previous.to_release, previous.to_digest
        else:
            stable_release, stable_digest = previous.stable_release, previous.stable_digest
    return model.Rollout(
        service=new.name,
        kind=kind,  # type: ignore[arg-type]  # callers pass update / rollback / restart
        from_release=old.release if old else 0,
        to_release=new.release,
        to_digest=new.digest,
        started_at=now,
        stable_release=stable_release,
        stable_digest=stable_digest,
        last_progress_at=now,
    )


async def serving(store: Store, record: model.ServiceRecord | None) -> bool:
    """Whether every desired instance of ``record``'s template is in ``run`` now."""
    if record is None:
        return False
    count = 0
    for spec, status in await state.load_instances(store):
        if (
            spec.service == record.name
            and spec.digest == record.digest
            and status is not None
            and status.alive
            and status.phase == "run"
        ):
            count += 1
    return count >= max(1, record.desired)


async def supersede_ops(
    store: Store, previous: model.Rollout | None, serving_now: bool, by: int
) -> list[Op]:
    """Record the outcome of a rollout that a new one replaces before it finished."""
    if previous is None or previous.state not in ("progressing", "paused"):
        return []
    outcome = "complete" if serving_now else f"superseded by v{by}"
    return await set_outcome(store, previous.service, previous.to_release, outcome)


async def read_rollout(store: Store, service: str) -> tuple[int, model.Rollout | None]:
    kv = await store.get(rollout_key(service))
    if kv is None:
        return 0, None
    return kv.mod_revision, model.decode(kv.value, model.Rollout)


async def read_release(store: Store, service: str, number: int) -> model.Release:
    kv = await store.get(model.release_key(service, number))
    if kv is None:
        raise NotFound(
            f"service {service!r} has no release v{number}",
            f"`corral releases {service}` lists the releases kept",
        )
    return model.decode(kv.value, model.Release)


async def list_releases(store: Store, service: str) -> list[model.Release]:
    listing = await store.range(f"{model.RELEASES}{service}/")
    return [model.decode(kv.value, model.Release) for kv in listing.kvs]


async def prune_ops(store: Store, service: str, keep: int, protect: set[int]) -> list[Op]:
    """Deletes of the releases beyond the newest ``keep`` (never one in ``protect``)."""
    listing = await store.range(f"{model.RELEASES}{service}/")
    numbers = [int(kv.key.rsplit("/", 1)[1]) for kv in listing.kvs]
    excess = sorted(numbers)[: max(0, len(numbers) - keep)]
    return [Delete(model.release_key(service, n)) for n in excess if n not in protect]


async def rollback(
    store: Store,
    service: str,
    to: int | None = None,
    *,
    user: str = "",
    message: str = "",
    automatic: bool = False,
) -> model.Release:
    """Make a new release that copies release ``to`` (default: the last stable one, else the
    one before the current) and roll out to it."""
    for _attempt in range(5):
        kv = await store.get(model.SERVICES + service)
        if kv is None:
            raise NotFound(f"no service named {service!r}", "`corral status` lists services")
        record = model.decode(kv.value, model.ServiceRecord)
        if record.stopping:
            raise UserError(f"service {service!r} is stopping", "apply a manifest that has it")
        rollout_revision, previous = await read_rollout(store, service)
        target = to
        if target is None:
            if (
                previous is not None
                and previous.stable_release
                and (previous.stable_digest != record.digest)
            ):
                target = previous.stable_release
            elif record.release > 1:
                target = record.release - 1
            else:
                raise UserError(
                    f"service {service!r} has only release v{record.release}",
                    "there is nothing earlier to roll back to",
                )
        if target == record.release:
            raise UserError(
                f"v{target} is already the current release of {service}",
                f"`corral releases {service}` lists the others",
            )
        source = await read_release(store, service, target)
        now = clock.wall()
        number = record.release + 1
        why = message or (f"rollback to v{target}")
        digest = template_digest(source.spec, record.restart_generation)
        if previous is not None and previous.stable_release == target and previous.stable_digest:
            digest = previous.stable_digest  # the instances still running it stay current
        release = model.Release(
            service=service,
            number=number,
            spec=source.spec,
            created_at=now,
            message=why,
            user=user or ("corral (automatic)" if automatic else ""),
            digest=digest,
            copied_from=target,
        )
        old = model.decode(kv.value, model.ServiceRecord)
        serving_now = await serving(store, old)
        # Everything derived from the spec comes back with it (update policy, backoff, …);
        # the current scale stays, clamped into the old release's bounds.
        restored = service_record(
            service,
            spec_from_dict(_manifest_fields(source.spec), name=service),
            release=number,
            base_dir=Path("/"),
            desired=record.desired,
        )
        restored.spec = source.spec
        restored.digest = digest
        restored.restart_generation = record.restart_generation
        restored.system = record.system
        record = restored
        rollout = start_rollout("rollback", old, record, previous, now, serving_now)
        event = events.make(
            service,
            "service",
            f"rollback v{old.release} → v{number} (copy of v{target}): {why}",
            service=service,
        )
        ops: list[Op] = [
            Put(model.release_key(service, number), model.encode(release)),
            Put(kv.key, model.encode(record)),
            Put(rollout_key(service), model.encode(rollout)),
            Put(events.event_key(event.at), model.encode(event)),
        ]
        if not automatic and previous is not None and previous.to_release != target:
            ops += await supersede_ops(store, previous, False, number)
        ops += await prune_ops(
            store, service, _history(record), {number, target, rollout.stable_release}
        )
        compares = [
            Compare(kv.key, "mod_revision", "==", kv.mod_revision),
            Compare(rollout_key(service), "mod_revision", "==", rollout_revision),
        ]
        txn = await store.txn(compares, ops)
        if txn.succeeded:
            return release
    raise Conflict(f"service {service!r} kept changing during the rollback", "try again")


def _manifest_fields(spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec minus what the platform added to it (the artifact it runs from)."""
    return {k: v for k, v in spec.items() if k != "artifact"}


def _history(record: model.ServiceRecord) -> int:
    value = record.spec.get("history", 10)
    return int(value) if isinstance(value, int) else 10


async def set_outcome(store: Store, service: str, number: int, outcome: str) -> list[Op]:
    """The op that records a release's outcome (empty if the release is gone)."""
    kv = await store.get(model.release_key(service, number))
    if kv is None:
        return []
    release = model.decode(kv.value, model.Release)
    release.outcome = outcome
    return [Put(kv.key, model.encode(release))]
