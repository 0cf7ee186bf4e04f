"""The control plane's own metrics in Prometheus text at ``/metrics``.

Counters move on the request path (API calls by route and status); gauges describing the
fleet (services by state, instances by phase, restarts, the Store's revision, reconcile passes)
are read from the Store when scraped, so they are never stale and cost nothing in between.

Platform counters: the Store's latency per operation (``corral_store_request_duration_seconds``,
from the reads a scrape makes and from whoever calls ``observe_store``), the reconciler's work
queue depth and pass duration (``reconciler``: anything with ``passes`` and a sized ``queue``;
``observe_reconcile`` is called with each pass's duration). ``render(openmetrics=True)``
writes OpenMetrics 1.0 (``corral.telemetry.exposition.wants_openmetrics`` decides from Accept).
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from corral import clock, model
from corral.control import state
from corral.store.base import Store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ReconcilerView(Protocol):
    """What the metrics read of the reconciler (``control.reconciler.Reconciler`` fits)."""

    @property
    def passes(self) -> int: ...

    @property
    def queue(self) -> Sized: ...


class PlatformMetrics:
    def __init__(
        self,
        store: Store,
        passes: Callable[[], int] | None = None,
        reconciler: ReconcilerView | None = None,
    ) -> None:
        self.store = store
        self.passes = passes
        self.reconciler = reconciler
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
        self.queue_depth = Gauge(
            "corral_reconcile_queue_depth",
            "Service keys waiting in the reconciler's work queue",
            registry=self.registry,
        )
        self.reconcile_seconds = Histogram(
            "corral_reconcile_duration_seconds",
            "Time of one reconcile pass",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "corral_store_request_duration_seconds",
            "Latency of Store operations, by operation",
            ["op"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def observe_store(self, op: str, seconds: float) -> None:
        self.store_seconds.labels(op).observe(seconds)

    def observe_reconcile(self, seconds: float) -> None:
        self.reconcile_seconds.observe(seconds)

    def observe_request(self, method: str, route: str, status: int) -> None:
        self.requests.labels(method, route, str(status)).inc()

    async def render(self, openmetrics: bool = False) -> bytes:
        started = clock.monotonic()
        services = await state.load_services(self.store)
        self.observe_store("range", clock.monotonic() - started)
        started = clock.monotonic()
        statuses = await self.store.range(model.SERVICE_STATUS)
        self.observe_store("range", clock.monotonic() - started)
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
        if self.reconciler is not None:
            self.reconcile.set(self.reconciler.passes)
            self.queue_depth.set(len(self.reconciler.queue))
        if openmetrics:
            return bytes(generate_openmetrics(self.registry))  # type: ignore[no-untyped-call]  # prometheus_client's OpenMetrics module is unannotated
        return generate_latest(self.registry)
