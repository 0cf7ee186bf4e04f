"""SLO status per gateway route, from the rollups of the gateway's edge spans.

Where the objectives come from: the live gateway config (the ``slo`` of each route), which
the collector reads through the API's remote Store (``/corral/gateway/config``) when asked —
not span tags: rollups keep no tags, and a changed objective then applies at once to the whole
window instead of only to spans recorded after the change.

What is measured: the gateway's SERVER spans (service ``telemetry.service_name`` of the
config, ``corral-gateway`` by default), whose endpoint is ``METHOD route-name`` (the gateway
tags ``http.route`` with the route's name), summed over every method and instance. Windows
are whole minutes ending with the current one (rollup resolution). Two rollup queries answer
every route: the SLO window summed per key, and the last 6 h per minute for the burn windows.
The arithmetic is `corral.telemetry.slo`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import msgspec

from corral.gateway.config import GatewayConfig
from corral.telemetry import slo
from corral.telemetry.normalize import normalize_path
from corral.telemetry.rollup import BUCKETS, MINUTE_US, Key
from corral.telemetry.store import RollupRow, SpanStore

DEFAULT_GATEWAY_SERVICE = "corral-gateway"


class RouteObjectives(msgspec.Struct, frozen=True):
    route: str
    service: str  # the gateway's service name in telemetry
    window_s: int
    objectives: list[slo.Objective]


def objectives_of(config: GatewayConfig) -> list[RouteObjectives]:
    """Every route of `config` that declares an SLO, in config order."""
    service = (
        config.telemetry.service_name if config.telemetry is not None else DEFAULT_GATEWAY_SERVICE
    ).lower()  # the Zipkin decoder lowercases service names
    out = []
    for route in config.routes:
        if route.slo is None:
            continue
        objectives = []
        if route.slo.availability is not None:
            objectives.append(slo.Objective("availability", round(route.slo.availability / 100, 9)))
        for target, bound_s in route.slo.latency_targets():
            objectives.append(slo.Objective("latency", target, round(bound_s * 1_000_000)))
        out.append(RouteObjectives(route.name, service, int(route.slo.window), objectives))
    return out


class Alert(msgspec.Struct):
    name: str  # page | ticket
    long_window_s: int
    short_window_s: int
    threshold: float
    long_burn: float
    short_burn: float
    firing: bool


class ObjectiveStatus(msgspec.Struct):
    kind: str  # availability | latency
    target: float  # fraction of good requests, e.g. 0.999
    threshold_us: int  # latency: the bound; 0 for availability
    requests: int  # in the SLO window
    bad: float  # failed, or slower than the bound (interpolated inside a bucket)
    budget_left: float  # 1 untouched, 0 spent, < 0 overspent
    burn: dict[str, float]  # "5m", "30m", "1h", "6h" → burn rate
    alerts: list[Alert]


class RouteSlo(msgspec.Struct):
    route: str
    service: str
    window_s: int
    objectives: list[ObjectiveStatus]
    firing: list[str]  # names of firing alerts, e.g. ["page"]


def _label(seconds: int) -> str:
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds // 60}m"


class _Sum:
    __slots__ = ("calls", "errors", "hist")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.hist = [0] * BUCKETS

    def add(self, row: RollupRow) -> None:
        self.calls += row.calls
        self.errors += row.errors
        hist = self.hist
        for i, n in enumerate(row.hist):
            hist[i] += n

    def counts(self) -> slo.Counts:
        return slo.Counts(self.calls, self.errors, self.hist)


def route_of(key: Key) -> str:
    """The route part of a gateway endpoint (``"GET orders"`` → ``"orders"``)."""
    return key.endpoint.split(" ", 1)[1] if " " in key.endpoint else key.endpoint


def report(store: SpanStore, routes: Sequence[RouteObjectives], now_us: int) -> list[RouteSlo]:
    """The SLO status of each route at `now_us`."""
    if not routes:
        return []
    # Telemetry normalises ids in routes; a route named like an id is stored normalised too.
    wanted = {(r.service, normalize_path(r.route)): r.route for r in routes}

    def ours(key: Key) -> bool:
        return key.kind == "SERVER" and (key.service, route_of(key)) in wanted

    def name(key: Key) -> tuple[str, str]:
        return key.service, wanted[(key.service, route_of(key))]

    now_minute = now_us // MINUTE_US
    end_us = (now_minute + 1) * MINUTE_US  # windows are whole minutes, the current one last
    whole: dict[tuple[int, tuple[str, str]], _Sum] = {}
    for window_s in sorted({r.window_s for r in routes}):
        for row in store.rollups(end_us - window_s * 1_000_000, end_us, where=ours):
            whole.setdefault((window_s, name(row.key)), _Sum()).add(row)
    longest = max(slo.BURN_WINDOWS_S)
    recent: dict[tuple[int, tuple[str, str]], _Sum] = {}
    rows = store.rollups(end_us - longest * 1_000_000, end_us, step_minutes=1, where=ours)
    for row in rows:
        age = now_minute - row.minute  # 0 for the current minute
        for seconds in slo.BURN_WINDOWS_S:
            if age < seconds // 60:
                recent.setdefault((seconds, name(row.key)), _Sum()).add(row)
    out = []
    empty = _Sum()
    for r in routes:
        ident = (r.service, r.route)
        window = whole.get((r.window_s, ident), empty).counts()
        burn_counts = {s: recent.get((s, ident), empty).counts() for s in slo.BURN_WINDOWS_S}
        statuses = [_status(slo.evaluate(o, window, burn_counts)) for o in r.objectives]
        firing = sorted({a.name for s in statuses for a in s.alerts if a.firing})
        out.append(RouteSlo(r.route, r.service, r.window_s, statuses, firing))
    return out


def _status(e: slo.Evaluation) -> ObjectiveStatus:
    return ObjectiveStatus(
        kind=e.objective.kind,
        target=e.objective.target,
        threshold_us=e.objective.threshold_us,
        requests=round(e.total),
        bad=round(e.bad, 3),
        budget_left=round(e.budget_left, 6),
        burn={_label(s): round(b, 4) for s, b in sorted(e.burn.items())},
        alerts=[Alert(*a) for a in e.alerts],
    )


def only(routes: Iterable[RouteObjectives], name: str) -> list[RouteObjectives]:
    return [r for r in routes if not name or r.route == name]
