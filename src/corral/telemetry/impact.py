"""Impact analysis: for a host, an instance or a SQL statement fingerprint, the external APIs
whose requests reach it, and how much of their traffic and time it takes.

Whole minutes are read from the rollups: every SERVER/CONSUMER and CLIENT/PRODUCER cell
carries ``api``, the root endpoint of its trace (`rollup`), so the answer is a sum over the
window's cells, whatever the span count. Only the partial minutes at the window's edges are
read from raw spans (see the end of this docstring).

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

Whole minutes come from the rollups; the partial minutes at the window's edges from the raw
spans (`impact_core.tally`, which counts as the rollups do, plus the calls an instance never
answered, known by the address its callers dialled), so "the last 5 seconds" means what it
says and a fault shows within seconds. A partial minute with more than `RAW_TRACES` traces is
taken whole from the rollups instead (cost stays bounded; the answer then covers that whole
minute). `changes` compares an answer with a baseline (`impact_core.affected`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import msgspec

from corral.errors import NotFound, UserError
from corral.telemetry.impact_core import (
    Holders,
    Sample,
    Tally,
    Worse,
    affected,
    learn_addresses,
    tally,
)
from corral.telemetry.model import Span
from corral.telemetry.normalize import Normalizer, sql_fingerprint
from corral.telemetry.queries import is_entry
from corral.telemetry.rollup import MINUTE_US, ROOT, Key
from corral.telemetry.store import SpanStore, TraceQuery

RAW_TRACES = 5_000  # per partial minute; past it, that minute comes whole from the rollups
LEARN_US = 300_000_000  # how far back to look for the calls that name an instance's address
LEARN_TRACES = 200  # traces per service read to learn addresses


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


def _traces(
    store: SpanStore, lo_us: int, hi_us: int, limit: int, service: str = ""
) -> list[list[Span]] | None:
    ids = store.find_traces(
        TraceQuery(start_us=lo_us, end_us=hi_us, service=service, limit=limit + 1)
    )
    if len(ids) > limit:
        return None
    return [store.trace(t) for t in ids]


def _addresses(
    store: SpanStore, instances: list[str], recent: list[list[Span]], before_us: int
) -> dict[str, Holders]:
    """The target instances' addresses, learnt from the calls they answered in `recent` and
    just before the window: an instance that hangs or dies at its start answers none after.
    """
    members = frozenset(instances)
    services = sorted({k.service for k in store.catalog() if k.instance in members})
    learnt = list(recent)
    for service in services[:20]:  # the newest traces of each: enough to see every address
        query = TraceQuery(
            start_us=before_us - LEARN_US, end_us=before_us, service=service, limit=LEARN_TRACES
        )
        learnt.extend(store.trace(t) for t in store.find_traces(query))
    return {
        a: holders
        for a, holders in learn_addresses(learnt).items()
        if not members.isdisjoint(holders.instances)
    }


def impact(
    store: SpanStore,
    start_us: int,
    end_us: int,
    *,
    host: str = "",
    instance: str = "",
    sql: str = "",
    hosts: Mapping[str, str] | None = None,
    raw_traces: int = RAW_TRACES,
) -> Impact:
    """The APIs affected by one target in [start, end) (module docstring)."""
    label, instances, hit = _target(host, instance, sql, hosts or {})

    def wanted(k: Key) -> bool:
        return bool(k.flags & ROOT) or (bool(k.api) and hit(k))

    roots: dict[str, Tally] = {}
    at_target: dict[str, Tally] = {}
    whole_lo = -(-start_us // MINUTE_US) * MINUTE_US
    whole_hi = end_us // MINUTE_US * MINUTE_US
    if whole_lo < whole_hi:
        edges = [(start_us, whole_lo), (whole_hi, end_us)]
        minutes = [(whole_lo, whole_hi)]
    else:
        edges, minutes = [(start_us, end_us)], []
    raw: list[tuple[int, int, list[list[Span]]]] = []
    for lo, hi in edges:
        if lo >= hi:
            continue
        traces = _traces(store, lo, hi, raw_traces)
        if traces is None:
            minutes.append((lo, hi))  # too many to read: the rollups' whole minute
        else:
            raw.append((lo, hi, traces))
    for lo, hi in minutes:
        for row in store.rollups(lo, hi, where=wanted):
            key = row.key
            if key.flags & ROOT:
                roots.setdefault(key.api, Tally()).add(row.calls, row.errors, row.sum_us, row.hist)
            if key.api and hit(key):
                at_target.setdefault(key.api, Tally()).add(
                    row.calls, row.errors, row.sum_us, row.hist
                )
    if raw:
        recent = [t for _, _, traces in raw for t in traces]
        addresses = _addresses(store, instances, recent, start_us) if instances else {}
        normalizer = Normalizer()
        for lo, hi, traces in raw:
            part_roots, part_target = tally(
                traces,
                lo,
                hi,
                hit,
                unanswered_to=addresses,
                targets=frozenset(instances),
                normalizer=normalizer,
            )
            for into, part in ((roots, part_roots), (at_target, part_target)):
                for api, stats in part.items():
                    into.setdefault(api, Tally()).add(
                        stats.calls, stats.errors, stats.sum_us, stats.hist
                    )
    apis = []
    for api, t in at_target.items():
        r = roots.get(api, Tally())
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


def samples(answer: Impact) -> list[Sample]:
    return [Sample(a.api, a.calls, a.target_errors, a.target_p95_us) for a in answer.apis]


def changes(now: Impact, baseline: Impact) -> list[Worse]:
    """The APIs whose calls at the target got worse than in `baseline` (`impact_core.affected`)."""
    return affected(samples(now), samples(baseline))
