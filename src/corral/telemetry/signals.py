"""What the alert rules and the "what changed" view read from telemetry, in one answer.

The collector answers ``GET /telemetry/signals?minutes=N[&service=S]`` with per-minute series
(so the window arithmetic stays in the pure core, `telemetry.alerts`, and is tested there):

* ``services``: per service, per minute, the calls, errors and latency histogram of its entry
  spans (`queries.is_entry`), for the last ``minutes`` minutes;
* ``objectives``: per gateway route objective (`slo_report.objectives_of`), per minute, the
  requests and the bad ones (`slo.tally`), for the longest burn window (6 h);
* ``hosts``: per host, when it was last sampled and its memory and disk gauges.

Rows are sparse: a minute with no traffic is absent. Decoding back into the core's types is
`decode`, used by the control plane's alerter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from corral.telemetry import alerts, slo
from corral.telemetry.hostmetrics import HostSeries
from corral.telemetry.normalize import normalize_path
from corral.telemetry.queries import is_entry
from corral.telemetry.rollup import MINUTE_US, Key
from corral.telemetry.slo_report import RouteObjectives, route_of
from corral.telemetry.store import SpanStore

BURN_HORIZON_S = max(slo.BURN_WINDOWS_S)


class ServiceMinute(msgspec.Struct, array_like=True):
    minute: int
    calls: int
    errors: int
    hist: list[int]


class ObjectiveMinutes(msgspec.Struct):
    route: str
    kind: str
    target: float
    threshold_us: int
    minutes: list[tuple[int, float, float]]  # minute, total, bad


class HostLast(msgspec.Struct):
    last_sample_s: float
    cpu_ratio: float = 0.0
    mem_used: float = 0.0
    mem_total: float = 0.0
    disk_used: float = 0.0
    disk_total: float = 0.0


class Signals(msgspec.Struct):
    minute: int
    services: dict[str, list[ServiceMinute]]
    objectives: list[ObjectiveMinutes]
    hosts: dict[str, HostLast] | None = None


def services(
    store: SpanStore, now_us: int, minutes: int, service: str = ""
) -> dict[str, list[ServiceMinute]]:
    now_minute = now_us // MINUTE_US
    end_us = (now_minute + 1) * MINUTE_US
    start_us = end_us - max(1, minutes) * MINUTE_US

    def wanted(key: Key) -> bool:
        return is_entry(key) and (not service or key.service == service)

    cells: dict[tuple[str, int], ServiceMinute] = {}
    for row in store.rollups(start_us, end_us, step_minutes=1, where=wanted):
        cell = cells.get((row.key.service, row.minute))
        if cell is None:
            cell = ServiceMinute(row.minute, 0, 0, [0] * len(row.hist))
            cells[(row.key.service, row.minute)] = cell
        cell.calls += row.calls
        cell.errors += row.errors
        for i, n in enumerate(row.hist):
            cell.hist[i] += n
    out: dict[str, list[ServiceMinute]] = {}
    for (name, _), cell in sorted(cells.items()):
        out.setdefault(name, []).append(cell)
    return out


def objectives(
    store: SpanStore, routes: Sequence[RouteObjectives], now_us: int
) -> list[ObjectiveMinutes]:
    if not routes:
        return []
    wanted = {(r.service, normalize_path(r.route)): r for r in routes}

    def ours(key: Key) -> bool:
        return key.kind == "SERVER" and (key.service, route_of(key)) in wanted

    now_minute = now_us // MINUTE_US
    end_us = (now_minute + 1) * MINUTE_US
    sums: dict[tuple[str, int, int], list[float]] = {}  # (route, objective #, minute)
    rows = store.rollups(end_us - BURN_HORIZON_S * 1_000_000, end_us, step_minutes=1, where=ours)
    for row in rows:
        r = wanted[(row.key.service, route_of(row.key))]
        counts = slo.Counts(row.calls, row.errors, row.hist)
        for index, objective in enumerate(r.objectives):
            t = slo.tally(objective, counts)
            cell = sums.setdefault((r.route, index, row.minute), [0.0, 0.0])
            cell[0] += t.total
            cell[1] += t.bad
    out = []
    for r in routes:
        for index, objective in enumerate(r.objectives):
            series = [
                (minute, total, round(bad, 6))
                for (route, i, minute), (total, bad) in sorted(sums.items())
                if route == r.route and i == index
            ]
            out.append(
                ObjectiveMinutes(
                    r.route, objective.kind, objective.target, objective.threshold_us, series
                )
            )
    return out


def hosts(series: HostSeries, now_s: int) -> dict[str, HostLast]:
    """Each known host's latest sample (from memory, or the last hour of the fine table)."""
    out = {}
    for host in series.hosts():
        sample = series.latest.get(host)
        if sample is not None:
            out[host] = HostLast(
                float(sample.ts_s),
                sample.cpu_ratio,
                sample.mem_used,
                sample.mem_total,
                sample.disk_used,
                sample.disk_total,
            )
            continue
        _, rows = series.points(host, now_s - 3600, now_s + 1, now_s)
        last: list[Any] = list(rows[-1]) if rows else [float(now_s - 3600), 0, 0, 0, 0, 0]
        out[host] = HostLast(float(last[0]), *(float(v) for v in last[1:6]))
    return out


# -- the alerter's side ------------------------------------------------------------------------


def decode(data: bytes) -> Signals:
    return msgspec.json.decode(data, type=Signals)


def observed_services(s: Signals) -> dict[str, dict[int, alerts.Minute]]:
    return {
        name: {m.minute: alerts.Minute(m.calls, m.errors, m.hist) for m in rows}
        for name, rows in s.services.items()
    }


def observed_objectives(s: Signals) -> list[alerts.ObjectiveSeries]:
    return [
        alerts.ObjectiveSeries(
            o.route,
            o.kind,
            o.target,
            o.threshold_us,
            {minute: alerts.Tally(total, bad) for minute, total, bad in o.minutes},
        )
        for o in s.objectives
    ]


def observed_hosts(s: Signals) -> dict[str, alerts.HostObs] | None:
    if s.hosts is None:
        return None
    return {
        name: alerts.HostObs(h.last_sample_s, h.mem_used, h.mem_total, h.disk_used, h.disk_total)
        for name, h in s.hosts.items()
    }
