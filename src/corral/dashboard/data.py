"""What the server-rendered pages show, read from the Store the way the API reads it (the same
`views`), so a page's first paint and the JSON its scripts fetch afterwards agree."""

from __future__ import annotations

from typing import Any

from corral import clock, model
from corral.api import views
from corral.control.events import as_dict as event_view
from corral.dashboard import changes as changelog
from corral.store.base import Store


async def services(store: Store, include_system: bool = False) -> list[dict[str, Any]]:
    """Services as `GET /api/v1/services` returns them, each with its instance views under
    `members`."""
    records = await views.load_services(store)
    statuses = {
        kv.key[len(model.SERVICE_STATUS) :]: model.decode(kv.value, model.ServiceStatus)
        for kv in (await store.range(model.SERVICE_STATUS)).kvs
    }
    now = clock.wall()
    members: dict[str, list[dict[str, Any]]] = {}
    for spec, status in await views.load_instances(store):
        view = views.instance_view(spec, status, records.get(spec.service), now)
        members.setdefault(spec.service, []).append(view)
    out = []
    for name in sorted(records):
        record = records[name]
        if record.system and not include_system:
            continue
        view = views.service_view(record, statuses.get(name), members.get(name, []))
        view["members"] = sorted(members.get(name, []), key=lambda i: str(i["id"]))
        out.append(view)
    return out


async def events(store: Store, service: str = "", limit: int = 50) -> list[dict[str, Any]]:
    """The latest lifecycle events (of one service, if given), newest last."""
    out = []
    for kv in (await store.range(model.EVENTS)).kvs:
        event = model.decode(kv.value, model.Event)
        if service and event.service != service and event.subject != service:
            continue
        out.append(event_view(event))
    return out[-limit:] if limit else out


async def changes(store: Store, service: str, window_s: float) -> list[changelog.Change]:
    """What changed in `service` over the last `window_s` seconds, oldest first."""
    since = clock.wall() - window_s
    return changelog.changes(await events(store, service, limit=0), since)
