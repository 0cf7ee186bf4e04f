"""Gateway counters: plain integers bumped on the hot path, rendered as Prometheus text.

Per route: responses by status class, request latency and upstream latency histograms,
retries, and what the traffic policies did (``rate_limited``, ``hot``, ``shed``, ``breaker``,
``cache_hit``/``cache_miss``/``cache_stale``). Per route→cluster: circuit-breaker transitions
by target state, and the state now. Per upstream endpoint: tries, connect failures, ejections.
Plus active client connections and the span exporter's exported/dropped/failed counts.
A worker's counters are a ``snapshot()`` (JSON-able); ``render(snapshots)`` sums the
snapshots of every worker into one exposition, which is how ``corral gateway serve`` answers
``GET /metrics`` on its admin listener (see ``corral.gateway.serve``).
"""

from __future__ import annotations

from typing import Any, Final, Protocol

from corral.telemetry.exposition import exemplar, to_openmetrics

__all__ = ["BUCKETS", "Metrics", "RouteStats", "UpstreamStats", "render"]

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The same bounds as a list of float objects: compiled, a tuple constant of floats is kept
# unboxed and boxed again on every use (30 float objects a request, measured).
_BOUNDS: Final[list[float]] = list(BUCKETS)
_NBOUNDS: Final = len(BUCKETS)
_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_OPENNESS = {"closed": 0, "half_open": 1, "open": 2}


def _bucket(value: float) -> int:
    """``bisect_left(_BOUNDS, value)``, compiled in place: the call into ``bisect`` (a generic
    call, its argument parsing and boxed comparisons) was ~750 instructions, twice a request."""
    bounds = _BOUNDS
    lo = 0
    hi = _NBOUNDS
    while lo < hi:
        mid = (lo + hi) >> 1
        if bounds[mid] < value:
            lo = mid + 1
        else:
            hi = mid
    return lo


class RouteStats:
    __slots__ = (
        "exemplars",
        "latency",
        "latency_sum",
        "retries",
        "status",
        "upstream",
        "upstream_sum",
    )

    def __init__(self) -> None:
        self.status = [0] * 6  # index = status // 100; 0 = no response sent
        self.latency = [0] * (len(BUCKETS) + 1)
        self.latency_sum = 0.0
        self.upstream = [0] * (len(BUCKETS) + 1)
        self.upstream_sum = 0.0
        self.retries = 0
        # per latency bucket, the newest (trace id, latency) that fell in it: the exemplars
        self.exemplars: list[tuple[bytes, float] | None] = [None] * (len(BUCKETS) + 1)

    def observe(
        self,
        status: int,
        latency: float,
        upstream_latency: float | None,
        trace_id: bytes | None = None,
    ) -> None:
        # ``counts[i] = counts[i] + 1`` rather than ``+=``: compiled, an augmented item
        # assignment is a generic in-place add; this is tagged-integer arithmetic
        counts = self.status
        kind = status // 100 if 0 <= status < 600 else 0
        counts[kind] = counts[kind] + 1
        index = _bucket(latency)
        counts = self.latency
        counts[index] = counts[index] + 1
        self.latency_sum += latency
        if trace_id is not None:
            self.exemplars[index] = (trace_id, latency)
        if upstream_latency is not None:
            counts = self.upstream
            index = _bucket(upstream_latency)
            counts[index] = counts[index] + 1
            self.upstream_sum += upstream_latency


class UpstreamStats:
    __slots__ = ("connect_failures", "ejections", "tries")

    def __init__(self) -> None:
        self.tries = 0
        self.connect_failures = 0
        self.ejections = 0


class SpanCounts(Protocol):
    exported: int
    dropped: int
    failed: int


class Metrics:
    def __init__(self) -> None:
        self.routes: dict[str, RouteStats] = {}
        self.upstreams: dict[str, UpstreamStats] = {}
        self.active_connections = 0
        self.refused_connections = 0
        self.policy_counts: dict[tuple[str, str], int] = {}  # (route, action) → count
        self.breaker_transitions: dict[str, int] = {}  # "route|cluster|state" → count
        self.breaker_states: dict[str, str] = {}  # "route|cluster" → state
        self.recorder: SpanCounts | None = None

    def breaker_transition(self, route: str, cluster: str, state: str) -> None:
        key = f"{route}|{cluster}|{state}"
        self.breaker_transitions[key] = self.breaker_transitions.get(key, 0) + 1

    def route(self, name: str) -> RouteStats:
        stats = self.routes.get(name)
        if stats is None:
            stats = self.routes[name] = RouteStats()
        return stats

    def upstream(self, address: str) -> UpstreamStats:
        stats = self.upstreams.get(address)
        if stats is None:
            stats = self.upstreams[address] = UpstreamStats()
        return stats

    def snapshot(self) -> dict[str, Any]:
        return {
            "routes": {
                name: {
                    "status": s.status,
                    "latency": s.latency,
                    "latency_sum": s.latency_sum,
                    "upstream": s.upstream,
                    "upstream_sum": s.upstream_sum,
                    "retries": s.retries,
                    "exemplars": [
                        None if e is None else [e[0].decode("ascii", "replace"), e[1]]
                        for e in s.exemplars
                    ],
                }
                for name, s in sorted(self.routes.items())
            },
            "upstreams": {
                a: {
                    "tries": s.tries,
                    "connect_failures": s.connect_failures,
                    "ejections": s.ejections,
                }
                for a, s in sorted(self.upstreams.items())
            },
            "active_connections": self.active_connections,
            "refused_connections": self.refused_connections,
            "policies": {
                f"{route}|{action}": n for (route, action), n in sorted(self.policy_counts.items())
            },
            "breaker_transitions": dict(sorted(self.breaker_transitions.items())),
            "breaker_states": dict(sorted(self.breaker_states.items())),
            "spans": {
                "exported": self.recorder.exported if self.recorder else 0,
                "dropped": self.recorder.dropped if self.recorder else 0,
                "failed": self.recorder.failed if self.recorder else 0,
            },
        }

    def render(self, openmetrics: bool = False) -> str:
        return render([self.snapshot()], openmetrics=openmetrics)


def _add(into: list[Any], values: list[Any]) -> None:
    for i, v in enumerate(values):
        into[i] += v


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(snapshots: list[dict[str, Any]], openmetrics: bool = False) -> str:
    """Prometheus text exposition (0.0.4) of the sum of ``snapshots``; OpenMetrics 1.0 with
    ``openmetrics``, whose request-latency buckets carry exemplars: the newest trace id seen in
    each bucket (by any worker), linking the histogram to a trace in the collector."""
    routes: dict[str, dict[str, Any]] = {}
    upstreams: dict[str, dict[str, int]] = {}
    active = refused = 0
    policies: dict[str, int] = {}
    transitions: dict[str, int] = {}
    states: dict[str, str] = {}
    spans = {"exported": 0, "dropped": 0, "failed": 0}
    for snap in snapshots:
        active += int(snap.get("active_connections", 0))
        refused += int(snap.get("refused_connections", 0))
        for key, n in snap.get("policies", {}).items():
            policies[key] = policies.get(key, 0) + int(n)
        for key, n in snap.get("breaker_transitions", {}).items():
            transitions[key] = transitions.get(key, 0) + int(n)
        for key, state in snap.get("breaker_states", {}).items():
            # Workers keep their own breakers: the tier reports the most open one.
            if _OPENNESS.get(state, 0) >= _OPENNESS.get(states.get(key, "closed"), 0):
                states[key] = state
        for key in spans:
            spans[key] += int(snap.get("spans", {}).get(key, 0))
        for name, r in snap.get("routes", {}).items():
            into = routes.setdefault(
                name,
                {
                    "status": [0] * 6,
                    "latency": [0] * (len(BUCKETS) + 1),
                    "latency_sum": 0.0,
                    "upstream": [0] * (len(BUCKETS) + 1),
                    "upstream_sum": 0.0,
                    "retries": 0,
                    "exemplars": [None] * (len(BUCKETS) + 1),
                },
            )
            for i, found in enumerate(r.get("exemplars") or ()):
                if found is not None and i < len(into["exemplars"]):
                    into["exemplars"][i] = found
            _add(into["status"], r["status"])
            _add(into["latency"], r["latency"])
            _add(into["upstream"], r["upstream"])
            into["latency_sum"] += r["latency_sum"]
            into["upstream_sum"] += r["upstream_sum"]
            into["retries"] += r["retries"]
        for address, u in snap.get("upstreams", {}).items():
            into_u = upstreams.setdefault(
                address, {"tries": 0, "connect_failures": 0, "ejections": 0}
            )
            for key in into_u:
                into_u[key] += int(u.get(key, 0))
    lines = [
        "# HELP corral_gateway_requests_total Requests answered, by route and status class.",
        "# TYPE corral_gateway_requests_total counter",
    ]
    for name, r in sorted(routes.items()):
        for i, count in enumerate(r["status"]):
            if count:
                lines.append(
                    f'corral_gateway_requests_total{{route="{_esc(name)}",code="{_CLASSES[i]}"}}'
                    f" {count}"
                )
    for metric, key, text in (
        ("corral_gateway_request_duration_seconds", "latency", "Time from request to response"),
        ("corral_gateway_upstream_duration_seconds", "upstream", "Time of the upstream try"),
    ):
        lines.append(f"# HELP {metric} {text}.")
        lines.append(f"# TYPE {metric} histogram")
        for name, r in sorted(routes.items()):
            label = f'route="{_esc(name)}"'
            running = 0
            marks = r["exemplars"] if openmetrics and key == "latency" else [None] * len(r[key])
            for bound, count, mark in zip((*BUCKETS, float("inf")), r[key], marks, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                shown = exemplar({"trace_id": mark[0]}, mark[1]) if mark else ""
                lines.append(f'{metric}_bucket{{{label},le="{le}"}} {running}{shown}')
            lines.append(f"{metric}_sum{{{label}}} {r[key + '_sum']}")
            lines.append(f"{metric}_count{{{label}}} {running}")
    lines.append("# HELP corral_gateway_retries_total Upstream tries that were retries.")
    lines.append("# TYPE corral_gateway_retries_total counter")
    for name, r in sorted(routes.items()):
        lines.append(f'corral_gateway_retries_total{{route="{_esc(name)}"}} {r["retries"]}')
    for key, text in (
        ("tries", "Upstream tries started"),
        ("connect_failures", "Upstream connect failures, resets and timeouts"),
        ("ejections", "Passive outlier ejections"),
    ):
        metric = f"corral_gateway_upstream_{key}_total"
        lines.append(f"# HELP {metric} {text}.")
        lines.append(f"# TYPE {metric} counter")
        for address, u in sorted(upstreams.items()):
            lines.append(f'{metric}{{upstream="{_esc(address)}"}} {u[key]}')
    lines.append("# HELP corral_gateway_active_connections Open client connections.")
    lines.append("# TYPE corral_gateway_active_connections gauge")
    lines.append(f"corral_gateway_active_connections {active}")
    lines.append("# HELP corral_gateway_refused_connections_total Connections over the cap.")
    lines.append("# TYPE corral_gateway_refused_connections_total counter")
    lines.append(f"corral_gateway_refused_connections_total {refused}")
    lines.append("# HELP corral_gateway_policy_total Requests a traffic policy acted on.")
    lines.append("# TYPE corral_gateway_policy_total counter")
    for key, n in sorted(policies.items()):
        route, _, action = key.rpartition("|")
        lines.append(
            f'corral_gateway_policy_total{{route="{_esc(route)}",action="{_esc(action)}"}} {n}'
        )
    lines.append("# HELP corral_gateway_breaker_transitions_total Circuit-breaker transitions.")
    lines.append("# TYPE corral_gateway_breaker_transitions_total counter")
    for key, n in sorted(transitions.items()):
        route, cluster, state = key.split("|", 2)
        lines.append(
            f'corral_gateway_breaker_transitions_total{{route="{_esc(route)}",'
            f'cluster="{_esc(cluster)}",to="{_esc(state)}"}} {n}'
        )
    lines.append("# HELP corral_gateway_breaker_state Circuit-breaker state (1 = in that state).")
    lines.append("# TYPE corral_gateway_breaker_state gauge")
    for key, state in sorted(states.items()):
        route, _, cluster = key.partition("|")
        for name in ("closed", "open", "half_open"):
            lines.append(
                f'corral_gateway_breaker_state{{route="{_esc(route)}",cluster="{_esc(cluster)}",'
                f'state="{name}"}} {int(name == state)}'
            )
    lines.append("# HELP corral_gateway_spans_total Finished requests by span-export outcome.")
    lines.append("# TYPE corral_gateway_spans_total counter")
    for key, n in spans.items():
        lines.append(f'corral_gateway_spans_total{{outcome="{key}"}} {n}')
    if openmetrics:
        return to_openmetrics(lines)
    return "\n".join(lines) + "\n"
