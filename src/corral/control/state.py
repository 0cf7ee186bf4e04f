"""Reading the control plane's records back from the Store, in one place."""

from __future__ import annotations

from corral import model
from corral.store.base import Store

Observed = tuple[model.InstanceSpec, model.InstanceStatus | None]


async def load_instances(store: Store) -> list[Observed]:
    """Every instance spec with its status (None before the agent wrote one), sorted by id."""
    listing = await store.range(model.INSTANCES)
    specs: dict[str, model.InstanceSpec] = {}
    statuses: dict[str, model.InstanceStatus] = {}
    for kv in listing.kvs:
        instance_id, _, part = kv.key[len(model.INSTANCES) :].rpartition("/")
        if part == "spec":
            specs[instance_id] = model.decode(kv.value, model.InstanceSpec)
        elif part == "status":
            statuses[instance_id] = model.decode(kv.value, model.InstanceStatus)
    return [(specs[i], statuses.get(i)) for i in sorted(specs)]


async def load_services(store: Store) -> dict[str, model.ServiceRecord]:
    listing = await store.range(model.SERVICES)
    return {
        kv.key[len(model.SERVICES) :]: model.decode(kv.value, model.ServiceRecord)
        for kv in listing.kvs
    }
