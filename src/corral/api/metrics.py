"""The control plane's own metrics in Prometheus text at ``/metrics``.

Counters move on the request path (API calls by route and status); gauges describing the
fleet (services by state, instances by phase, restarts, the Store's revision, reconcile passes)
are read from the Store when scraped, so they are never stale and cost nothing in between.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from corral import model
from corral.control import state
from corral.store.base import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class PlatformMetrics:
    def __init__(self, store: Store, passes: Callable[[], int] | None = None) -> None:
        self.store = store
        self.passes = passes
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "corral_api_requests",
            "API requests by route template, method and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.services = Gauge(
            "corral_services", "Services by state", ["state"], registry=self.registry
        )
        self.instances = Gauge(
            "corral_instances",
            "Instances by service and phase",
            ["service", "phase"],
            registry=self.registry,
        )
        self.restarts = Gauge(
            "corral_instance_restarts",
            "Restarts of each instance's slot",
            ["service", "instance"],
            registry=self.registry,
        )
        self.revision = Gauge(
            "corral_store_revision", "The Store's revision", registry=self.registry
        )
        self.reconcile = Gauge(
            "corral_reconcile_passes", "Reconciler passes since start", registry=self.registry
        )

    def observe_request(self, method: str, route: str, status: int) -> None:
        self.requests.labels(method, route, str(status)).inc()

    async def render(self) -> bytes:
        services = await state.load_services(self.store)
        statuses = await self.store.range(model.SERVICE_STATUS)
        by_state: dict[str, int] = {}
        for kv in statuses.kvs:
            service_status = model.decode(kv.value, model.ServiceStatus)
            if service_status.name in services:
                name = str(service_status.state)
                by_state[name] = by_state.get(name, 0) + 1
        self.services.clear()
        for name in sorted(by_state):
            self.services.labels(name).set(by_state[name])
        self.instances.clear()
        self.restarts.clear()
        counts: dict[tuple[str, str], int] = {}
        for spec, status in await state.load_instances(self.store):
            slot = (spec.service, str(status.phase) if status else "provision")
            counts[slot] = counts.get(slot, 0) + 1
            self.restarts.labels(spec.service, spec.id).set(status.restarts if status else 0)
        for (service, phase_name), count in sorted(counts.items()):
            self.instances.labels(service, phase_name).set(count)
        self.revision.set(statuses.revision)
        if self.passes is not None:
            self.reconcile.set(self.passes())
        return generate_latest(self.registry)
