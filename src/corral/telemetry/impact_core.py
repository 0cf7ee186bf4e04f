"""Impact analysis over raw spans, and the verdict "which APIs got worse than before".

Theory of operation. Rollups (`rollup`) are per minute, so a question about the last few
seconds — "what does the instance I just saw fail take down?" — cannot be answered from them:
the minute that holds the fault also holds the healthy traffic before it. `impact` therefore
reads the partial minutes at the edges of its window from the raw spans and hands them here.

`tally` counts raw spans exactly as the rollups count cells, so the two add up: a span counts
when its start is in [lo, hi); a root span adds a request to its API; a span with an API
(roots, and CLIENT/PRODUCER/SERVER/CONSUMER spans, whose API is the root endpoint of their
trace) that the target's predicate accepts — the same predicate `impact` applies to rollup
keys, fed a `Key` built from the span — adds a call at the target. A trace whose root has not
arrived counts nothing (the linker gives such spans no API either).

One thing only raw spans can tell: a call the target never answered. A hung or dead instance
sends no spans, but its callers do — CLIENT spans that end in a timeout or a refused
connection, with the address they dialled. `learn_addresses` maps an address to the
instances whose SERVER/CONSUMER spans answered calls to it, in turn: a port reused by a
replacement is held by one instance, then the next; an address whose answers alternate
between instances (a shared address, a load balancer) is ambiguous and maps to none. `tally`
then counts an unanswered CLIENT/PRODUCER span to an address a target instance held when the
call started as a call at the target, with the caller's duration and error. In
whole minutes (rollups) such calls are not counted: a rollup key has the callee's service,
not its address.

`affected` compares two answers for the same target — now and a baseline taken just before
over a window of the same length — and names the APIs whose calls at the target fail more
often or got slower. Rates and quantiles are compared, not counts, so window lengths may
differ. Anchor: the "compare with the same window before" of SkyWalking's and Grafana's
alerting, applied to the orchestrator's topology (service, instance, host).

Pure: no I/O, no clock; sets are never iterated unsorted.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec

from corral.telemetry.model import CALLEE_KINDS, CALLER_KINDS, Span
from corral.telemetry.normalize import (
    ADDRESS_KEYS,
    PORT_KEYS,
    URL_KEYS,
    Normalizer,
    first,
    host_of_url,
)
from corral.telemetry.rollup import BUCKETS, ROOT, Key, api_name, bucket_of, quantile

_API_KINDS = CALLER_KINDS | CALLEE_KINDS


class Tally(msgspec.Struct):
    """calls, errors, Σduration and the latency histogram: a rollup cell's sums."""

    calls: int = 0
    errors: int = 0
    sum_us: int = 0
    hist: list[int] = msgspec.field(default_factory=lambda: [0] * BUCKETS)

    def add_span(self, duration_us: int, error: bool) -> None:
        self.calls += 1
        self.errors += error
        self.sum_us += duration_us
        self.hist[bucket_of(duration_us)] += 1

    def add(self, calls: int, errors: int, sum_us: int, hist: Sequence[int]) -> None:
        self.calls += calls
        self.errors += errors
        self.sum_us += sum_us
        mine = self.hist
        for i, n in enumerate(hist):
            mine[i] += n

    def p(self, q: float) -> float:
        return quantile(self.hist, q)


def address_of(span: Span) -> str:
    """The address a CLIENT/PRODUCER span dialled ("host:port"), or ""."""
    attrs = span.attributes
    address = first(attrs, ADDRESS_KEYS)
    port = first(attrs, PORT_KEYS)
    if address and port:
        return f"{address}:{port}"
    url = first(attrs, URL_KEYS)
    host = host_of_url(url) if url else ""
    return host or span.peer


class Holders(msgspec.Struct):
    """Which instance held an address when: runs of answers by one instance, oldest first."""

    since_us: list[int]  # the first answer of each run
    instances: list[str]

    def at(self, t_us: int) -> str:
        """The instance that held the address at ``t_us`` (before the first run: the first)."""
        i = bisect.bisect_right(self.since_us, t_us) - 1
        return self.instances[max(i, 0)]


def learn_addresses(traces: Iterable[Sequence[Span]]) -> dict[str, Holders]:
    """address → the instances that answered calls to it, in turn (module docstring)."""
    seen: dict[str, set[tuple[int, str]]] = {}
    for spans in traces:
        callers = {
            s.span_id: s for s in spans if s.kind in CALLER_KINDS and not s.shared
        }  # by id: a callee names its caller by id
        for s in spans:
            if s.kind not in CALLEE_KINDS or not s.instance:
                continue
            caller = callers.get(s.caller_id or "")
            if caller is None:
                continue
            address = address_of(caller)
            if address:
                seen.setdefault(address, set()).add((caller.start_us, s.instance))
    out: dict[str, Holders] = {}
    for address, answers in sorted(seen.items()):
        runs = Holders([], [])
        for start, instance in sorted(answers):
            if not runs.instances or runs.instances[-1] != instance:
                runs.since_us.append(start)
                runs.instances.append(instance)
        if len(set(runs.instances)) == len(runs.instances):
            out[address] = runs  # one instance after another (a port reused), never shared
    return out


def tally(
    traces: Iterable[Sequence[Span]],
    lo_us: int,
    hi_us: int,
    hit: Callable[[Key], bool],
    *,
    unanswered_to: Mapping[str, Holders] | None = None,
    targets: frozenset[str] = frozenset(),
    normalizer: Normalizer | None = None,
) -> tuple[dict[str, Tally], dict[str, Tally]]:
    """(requests per API, calls at the target per API) of the spans starting in [lo, hi).

    `unanswered_to` is what `learn_addresses` learnt: an unanswered call to an address that
    one of the `targets` instances held at the time counts at the target."""
    facts = (normalizer or Normalizer()).facts
    addresses = unanswered_to or {}
    roots: dict[str, Tally] = {}
    at_target: dict[str, Tally] = {}
    for spans in traces:
        root = next((s for s in spans if s.parent_id is None), None)
        if root is None:
            continue
        api = api_name(root.service, facts(root).endpoint)
        answered = {s.caller_id for s in spans if s.kind in CALLEE_KINDS} if addresses else ()
        for s in spans:
            if not lo_us <= s.start_us < hi_us:
                continue
            is_root = s is root
            if is_root:
                roots.setdefault(api, Tally()).add_span(s.duration_us, s.error)
            elif s.kind not in _API_KINDS:
                continue  # internal spans carry no API in the rollups either
            f = facts(s)
            key = Key(s.service, s.instance, f.endpoint, s.kind, "", f.fingerprint, api,
                      ROOT if is_root else 0)  # fmt: skip
            if hit(key) or (
                addresses
                and s.kind in CALLER_KINDS
                and s.span_id not in answered
                and _blamed(addresses.get(address_of(s)), s.start_us, targets)
            ):
                at_target.setdefault(api, Tally()).add_span(s.duration_us, s.error)
    return roots, at_target


def _blamed(holders: Holders | None, t_us: int, targets: frozenset[str]) -> bool:
    return holders is not None and holders.at(t_us) in targets


# -- the verdict -------------------------------------------------------------------------


class Worse(msgspec.Struct):
    """An API whose calls at the target got worse than in the baseline."""

    api: str
    calls: int
    errors: int
    p95_us: float
    baseline_calls: int
    baseline_errors: int
    baseline_p95_us: float
    why: str  # "errors 0% → 42%" or "p95 3.1 ms → 2.9 s"


class Sample(msgspec.Struct):
    """What `affected` needs of one API in an impact answer."""

    api: str
    calls: int
    errors: int
    p95_us: float


def _ms(us: float) -> str:
    return f"{us / 1e6:.1f} s" if us >= 1e6 else f"{us / 1e3:.1f} ms"


def affected(
    now: Iterable[Sample],
    baseline: Iterable[Sample],
    *,
    min_calls: int = 2,
    min_errors: int = 1,
    error_points: float = 0.05,
    slower: float = 2.0,
    min_slower_us: float = 50_000,
) -> list[Worse]:
    """APIs whose calls at the target fail more or are slower than in the baseline.

    Fail more: the error rate rose by ≥ `error_points`, with at least `min_errors` errors (one
    refused call of a few is a fault, one in 50 is noise). Slower: p95 ≥ `slower` × the
    baseline's and ≥ `min_slower_us` more, over at least `min_calls` calls (an API the target
    did not serve in the baseline has no latency to compare with). Worst error rise first,
    then the largest slowdown."""
    before = {b.api: b for b in baseline}
    out: list[tuple[float, Worse]] = []
    for a in now:
        b = before.get(a.api, Sample(a.api, 0, 0, 0.0))
        rate = a.errors / a.calls if a.calls else 0.0
        base_rate = b.errors / b.calls if b.calls else 0.0
        why = ""
        score = 0.0
        if a.errors >= min_errors and rate - base_rate >= error_points:
            why = f"errors {base_rate:.0%} → {rate:.0%}"
            score = 1.0 + rate - base_rate
        elif (
            a.calls >= min_calls
            and b.calls
            and a.p95_us >= slower * b.p95_us
            and a.p95_us - b.p95_us >= min_slower_us
        ):
            why = f"p95 {_ms(b.p95_us)} → {_ms(a.p95_us)}"
            score = 1.0 - b.p95_us / a.p95_us
        if why:
            worse = Worse(a.api, a.calls, a.errors, a.p95_us, b.calls, b.errors, b.p95_us, why)
            out.append((score, worse))
    out.sort(key=lambda x: (-x[0], x[1].api))
    return [w for _, w in out]
