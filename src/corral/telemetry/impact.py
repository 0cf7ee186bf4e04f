"""Impact analysis: for a host, an instance or a SQL statement fingerprint, the external APIs
whose requests reach it, and how much of their traffic and time it takes.

Read from the rollups, never from raw spans: every SERVER/CONSUMER and CLIENT/PRODUCER cell
carries ``api``, the root endpoint of its trace (`rollup`), so the answer is a sum over the
window's cells, whatever the span count.

- *instance* ``I``: the entry cells (SERVER/CONSUMER spans, or roots) of ``I`` — one per
  request that entered it, so time is not counted twice for the spans nested inside;
- *host* ``H``: the same for every instance seen on ``H`` (``host.name`` of its spans, learnt
  at ingest: `Hosts`);
- *sql* ``F``: the CLIENT cells with fingerprint ``F`` (a raw statement is fingerprinted
  first, so either may be given).

Per API: ``requests`` and ``api_time_us`` come from its root cells; ``calls`` and
``target_time_us`` from the target's cells in that API's traces. ``traffic_share`` =
calls / requests, capped at 1 — the share of the API's requests that reach the target, exact
when a request reaches it at most once (a loop of calls overstates it, hence the cap);
``time_share`` = target time / API time. APIs are ranked by target time, the most affected
first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import msgspec

from corral.errors import NotFound, UserError
from corral.telemetry.normalize import sql_fingerprint
from corral.telemetry.queries import Stats, is_entry
from corral.telemetry.rollup import ROOT, Key
from corral.telemetry.store import SpanStore


class AffectedApi(msgspec.Struct):
    api: str  # "service endpoint" of the traces' root, e.g. "corral-gateway GET orders"
    requests: int  # requests to the API in the window
    errors: int  # of those, failed
    api_time_us: int
    calls: int  # spans at the target within this API's traces
    target_errors: int
    target_time_us: int
    target_p95_us: float
    traffic_share: float  # calls / requests, at most 1
    time_share: float  # target time / API time


class Impact(msgspec.Struct):
    target: str  # "host=H", "instance=I" or "sql=FINGERPRINT"
    instances: list[str]  # the instances the target covers ([] for sql)
    apis: list[AffectedApi]


def _target(
    host: str, instance: str, sql: str, hosts: Mapping[str, str]
) -> tuple[str, list[str], Callable[[Key], bool]]:
    given = [(n, v) for n, v in (("host", host), ("instance", instance), ("sql", sql)) if v]
    if len(given) != 1:
        raise UserError(
            "impact needs exactly one of host, instance and sql",
            "ask ?host=NAME, ?instance=ID or ?sql=FINGERPRINT",
        )
    kind, value = given[0]
    if kind == "sql":
        fingerprint = sql_fingerprint(value)
        return f"sql={fingerprint}", [], lambda k: k.fingerprint == fingerprint
    if kind == "instance":
        return f"instance={value}", [value], lambda k: k.instance == value and is_entry(k)
    on_host = sorted(i for i, h in hosts.items() if h == value)
    if not on_host:
        known = ", ".join(sorted(set(hosts.values()))[:10]) or "none yet"
        raise NotFound(
            f"no instance has reported spans from host {value!r}",
            f"hosts seen: {known} (instances name theirs in the host.name resource attribute)",
        )
    members = frozenset(on_host)
    return f"host={value}", on_host, lambda k: k.instance in members and is_entry(k)


def impact(
    store: SpanStore,
    start_us: int,
    end_us: int,
    *,
    host: str = "",
    instance: str = "",
    sql: str = "",
    hosts: Mapping[str, str] | None = None,
) -> Impact:
    """The APIs affected by one target in [start, end) (module docstring)."""
    label, instances, hit = _target(host, instance, sql, hosts or {})

    def wanted(k: Key) -> bool:
        return bool(k.flags & ROOT) or (bool(k.api) and hit(k))

    roots: dict[str, Stats] = {}
    at_target: dict[str, Stats] = {}
    for row in store.rollups(start_us, end_us, where=wanted):
        key = row.key
        if key.flags & ROOT:
            roots.setdefault(key.api, Stats()).add(row)
        if key.api and hit(key):
            at_target.setdefault(key.api, Stats()).add(row)
    apis = []
    for api, t in at_target.items():
        r = roots.get(api, Stats())
        apis.append(
            AffectedApi(
                api=api,
                requests=r.calls,
                errors=r.errors,
                api_time_us=r.sum_us,
                calls=t.calls,
                target_errors=t.errors,
                target_time_us=t.sum_us,
                target_p95_us=t.p(0.95),
                traffic_share=min(1.0, t.calls / r.calls) if r.calls else 0.0,
                time_share=t.sum_us / r.sum_us if r.sum_us else 0.0,
            )
        )
    apis.sort(key=lambda a: (-a.target_time_us, a.api))
    return Impact(label, instances, apis)
