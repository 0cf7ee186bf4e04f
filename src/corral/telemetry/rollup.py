"""Rollups computed at ingest: the join that finds edges and APIs, and the per-minute cells.

Theory of operation. Every span adds 1 to exactly one *cell*: (minute of its start, `Key`),
where a key is (service, instance, endpoint, kind, peer, fingerprint, api, flags). A cell
holds count, errors, Σduration and a fixed latency histogram (`BOUNDS_US`), so cells add up
exactly across minutes, instances or anything else — every question (dependencies, TOP-N,
latency percentiles, slow SQL → APIs) is a sum over cells, O(keys × minutes), never a scan of
spans, and needs no batch job.

Three dimensions need another span of the same trace, which may arrive before or after, from
another process (exporters batch for seconds). The `Linker` joins them with bounded memory:

- a SERVER/CONSUMER span whose caller (parent, or for a shared Zipkin span the client span of
  the same id) is in another service gets ``peer = caller's service`` and `EDGE_IN`: the
  dependency edge caller → service, counted once, on the callee's side (Zipkin's linker rule);
- a CLIENT/PRODUCER span gets ``peer = the callee's service`` when a callee span answers it,
  otherwise the peer that `normalize.peer` detects from its attributes, with `EDGE_OUT`: the
  edge service → uninstrumented peer (a database, a queue, an external host);
- a CLIENT/PRODUCER or SERVER/CONSUMER span that is not a root gets ``api`` = the root
  endpoint of its trace (``"service endpoint"``), which is what lets slow SQL, an instance or
  a host name the external APIs it serves (impact analysis); a root span has ``api`` = its
  own and the `ROOT` flag. Internal spans carry no api (they add nothing an instance's SERVER
  spans do not say, and would wait for the root for nothing).

A span waits in the linker until everything it needs has arrived or `window_s` has passed
since it arrived (then it is counted with what is known). Spans that need nothing are counted
at once. Lookup tables of recent spans, callees and roots are bounded LRUs, so a late span of
a recent trace still joins. Invariant: each span offered is emitted exactly once, by `offer`,
`expire` or `flush`; given the same spans within the window, the outcome does not depend on
their arrival order.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeVar

from corral.telemetry.model import CALLEE_KINDS, CALLER_KINDS, Facts, Span

BOUNDS_US: tuple[int, ...] = tuple(
    int(ms * 1000)
    for ms in (
        0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500,
        750, 1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000,
    )
)  # fmt: skip
BUCKETS = len(BOUNDS_US) + 1  # the last bucket is (60 s, ∞)
MINUTE_US = 60_000_000
_K = TypeVar("_K")

ROOT = 1
EDGE_IN = 2  # peer → service: this span is the instrumented callee
EDGE_OUT = 4  # service → peer: the callee sends no spans (database, queue, external host)


class Key(NamedTuple):
    service: str
    instance: str
    endpoint: str
    kind: str
    peer: str
    fingerprint: str
    api: str
    flags: int


class Cell:
    """count, errors, Σduration and the latency histogram of one (minute, key)."""

    __slots__ = ("count", "errors", "hist", "sum_us")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.sum_us = 0
        self.hist = [0] * BUCKETS

    def add(self, duration_us: int, error: bool) -> None:
        self.count += 1
        self.errors += error
        self.sum_us += duration_us
        self.hist[bisect.bisect_left(BOUNDS_US, duration_us)] += 1

    def merge(self, other: Cell) -> None:
        self.count += other.count
        self.errors += other.errors
        self.sum_us += other.sum_us
        hist = self.hist
        for i, n in enumerate(other.hist):
            hist[i] += n


def bucket_of(duration_us: int) -> int:
    return bisect.bisect_left(BOUNDS_US, duration_us)


def quantile(hist: Sequence[int], q: float) -> float:
    """The q-quantile (0…1) in µs, interpolated linearly inside its bucket (as Prometheus's
    histogram_quantile does); the open last bucket answers its lower bound."""
    total = sum(hist)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for i, n in enumerate(hist):
        if n and seen + n >= rank:
            lower = BOUNDS_US[i - 1] if i > 0 else 0
            if i >= len(BOUNDS_US):
                return float(lower)
            return lower + (BOUNDS_US[i] - lower) * max(0.0, rank - seen) / n
        seen += n
    return float(BOUNDS_US[-1])


def api_name(service: str, endpoint: str) -> str:
    return f"{service} {endpoint}"


class _Waiting:
    __slots__ = (
        "api",
        "callee",
        "caller",
        "facts",
        "need_callee",
        "need_caller",
        "need_root",
        "span",
    )

    def __init__(
        self,
        span: Span,
        facts: Facts,
        need: tuple[bool, bool, bool],
        found: tuple[str, str, str],
    ) -> None:
        self.span = span
        self.facts = facts
        self.need_caller, self.need_callee, self.need_root = need
        self.caller = found[0]  # the calling span's service, for a callee
        self.callee = found[1]  # the answering span's service, for a caller
        self.api = found[2]


Done = tuple[int, Key, Span]


class Linker:
    """The join described in the module docstring. Feed `offer(span, facts, now_s)`; every
    call returns the (minute, key, span) triples that became final; call `expire(now_s)`
    periodically and `flush()` at shutdown."""

    def __init__(self, window_s: float = 10.0, memory: int = 200_000) -> None:
        self.window_s = window_s
        self.memory = memory
        self._service: OrderedDict[tuple[str, str], str] = OrderedDict()  # span → its service
        self._callee: OrderedDict[tuple[str, str], str] = OrderedDict()  # caller → callee svc
        self._root: OrderedDict[str, str] = OrderedDict()  # trace → api
        self._by_caller: dict[tuple[str, str], list[_Waiting]] = {}  # callees awaiting a caller
        self._by_span: dict[tuple[str, str], _Waiting] = {}  # callers awaiting a callee
        self._by_trace: dict[str, list[_Waiting]] = {}  # callers awaiting the root
        self._queue: deque[tuple[float, _Waiting]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def offer(
        self, span: Span, facts: Facts, now_s: float, out: list[Done] | None = None
    ) -> list[Done]:
        """Join `span`; returns the triples that became final (appended to `out` if given,
        so a caller feeding a batch collects them in one list)."""
        if out is None:
            out = []
        # The hot path of ingest: locals and inlined LRU bounds instead of helper calls.
        memory = self.memory
        trace = span.trace_id
        span_id = span.span_id
        parent = span.parent_id
        kind = span.kind
        is_callee = kind in CALLEE_KINDS
        need_callee = kind in CALLER_KINDS
        caller_id = span_id if span.shared else parent
        if not (span.shared and is_callee):
            # A shared server span reuses its client's id: only the client names that id.
            me = (trace, span_id)
            services = self._service
            services[me] = span.service
            if len(services) > memory:
                services.popitem(last=False)
            if self._by_caller:
                for other in self._by_caller.pop(me, ()):
                    other.caller = span.service
                    other.need_caller = False
                    self._maybe_done(other, out)
        if parent is None:
            api = api_name(span.service, facts.endpoint)
            roots = self._root
            roots[trace] = api
            if len(roots) > memory:
                roots.popitem(last=False)
            if self._by_trace:
                for other in self._by_trace.pop(trace, ()):
                    other.api = api
                    other.need_root = False
                    self._maybe_done(other, out)
        caller = callee = api = ""
        need_caller = is_callee and caller_id is not None
        if need_caller:
            caller_key = (trace, caller_id or "")
            callees = self._callee
            callees[caller_key] = span.service
            if len(callees) > memory:
                callees.popitem(last=False)
            client = self._by_span.pop(caller_key, None) if self._by_span else None
            if client is not None:
                client.callee = span.service
                client.need_callee = False
                self._maybe_done(client, out)
            known = self._service.get(caller_key)
            if known is not None:
                caller = known
                need_caller = False
        if need_callee:
            found = self._callee.get((trace, span_id))
            if found is not None:
                callee = found
                need_callee = False
        need_root = parent is not None and (is_callee or kind in CALLER_KINDS)
        if need_root:
            root = self._root.get(trace)
            if root is not None:
                api = root
                need_root = False
        if need_caller or need_callee or need_root:
            w = _Waiting(span, facts, (need_caller, need_callee, need_root), (caller, callee, api))
            self._queue.append((now_s + self.window_s, w))
            if need_caller:
                self._by_caller.setdefault((trace, caller_id or ""), []).append(w)
            if need_callee:
                self._by_span[(trace, span_id)] = w
            if need_root:
                self._by_trace.setdefault(trace, []).append(w)
        else:
            out.append(_emit(span, facts, caller, callee, api))
        return out

    def _maybe_done(self, w: _Waiting, out: list[Done]) -> None:
        if not (w.need_caller or w.need_callee or w.need_root):
            out.append(self._final(w))
            w.span = _EMITTED  # its entry in the expiry queue is now void

    def expire(self, now_s: float) -> list[Done]:
        out: list[Done] = []
        queue = self._queue
        while queue and queue[0][0] <= now_s:
            self._give_up(queue.popleft()[1], out)
        return out

    def flush(self) -> list[Done]:
        out: list[Done] = []
        while self._queue:
            self._give_up(self._queue.popleft()[1], out)
        return out

    def _give_up(self, w: _Waiting, out: list[Done]) -> None:
        span = w.span
        if span is _EMITTED:
            return
        trace = span.trace_id
        if w.need_caller:
            _drop(self._by_caller, (trace, span.caller_id or ""), w)
        if w.need_callee:
            self._by_span.pop((trace, span.span_id), None)
        if w.need_root:
            _drop(self._by_trace, trace, w)
        out.append(self._final(w))

    def _final(self, w: _Waiting) -> Done:
        return _emit(w.span, w.facts, w.caller, w.callee, w.api)


def _emit(span: Span, facts: Facts, caller: str, callee: str, api: str) -> Done:
    """The (minute, key, span) of a span whose joins are done (or given up)."""
    flags = 0
    peer = ""
    kind = span.kind
    if span.parent_id is None:
        flags = ROOT
        api = api_name(span.service, facts.endpoint)
    if kind in CALLEE_KINDS:
        if caller and caller != span.service:
            peer = caller
            flags |= EDGE_IN
    elif kind in CALLER_KINDS:
        if callee:
            peer = callee
        elif facts.peer:
            peer = facts.peer
            flags |= EDGE_OUT
    key = _new_key(
        Key,
        (span.service, span.instance, facts.endpoint, kind, peer, facts.fingerprint, api, flags),
    )
    return span.start_us // MINUTE_US, key, span


_new_key = tuple.__new__  # Key(...) without the generated __new__'s Python frame


def _drop(table: dict[_K, list[_Waiting]], key: _K, w: _Waiting) -> None:
    group = table.get(key)
    if group is not None:
        group.remove(w)
        if not group:
            del table[key]


_EMITTED = Span("", "", None, "", "", "", "", 0, 0)


def accumulate(cells: dict[tuple[int, Key], Cell], done: Iterable[Done]) -> None:
    get = cells.get
    bucket = bisect.bisect_left
    bounds = BOUNDS_US
    for minute, key, span in done:  # `Cell.add`, inlined: this runs once per span
        at = (minute, key)
        cell = get(at)
        if cell is None:
            cell = cells[at] = Cell()
        duration = span.duration_us
        cell.count += 1
        cell.errors += span.error
        cell.sum_us += duration
        cell.hist[bucket(bounds, duration)] += 1
