"""The traffic policies of one gateway worker: the runtime objects built from a compiled config,
and the admission pipeline a guarded request goes through.

Theory of operation. ``Policies.build(table, old, …)`` runs off the hot path whenever a config
version is applied. It turns every guarded route's policy fields into runtime objects — rate
limiters, hot-parameter limiters, concurrency limiters, circuit breakers, the traffic split,
the response cache and the adaptive shedder — and **reuses the old object** wherever its
settings did not change, so a config edit elsewhere does not refill a bucket, forget a
breaker's window or drop the cache. Objects are shared by identity: a named rate limit with
``scope: service`` is one limiter for every route of that service (``scope: global``: one for
the gateway), a named concurrency policy with ``scope: service`` one limiter per service.

A guarded request (``CompiledRoute.guarded``; every other route never reaches this module)
passes, in order:

1. **rate limits** → refused: 429 with ``RateLimit-*`` and ``Retry-After``; admitted: the
   tightest decision's ``RateLimit-*`` headers go on the response;
2. **hot parameters** → 429 likewise (a request without the key's value is not counted);
3. **cache** (GET/HEAD of a route with ``cache``): a fresh entry is answered at once, no
   upstream call; a stale one within ``stale-while-revalidate`` too, and the first such
   request sets ``refresh`` for the adapter to refetch it in the background
   (``store_for`` stores the answer); otherwise the response will be captured and stored if
   cacheable;
4. **adaptive shedding** (gateway ``adaptive``) → 503 + ``Retry-After`` by criticality;
5. **concurrency limits**, in order: admit, wait in the limiter's priority queue (the proxy
   parks the request and ``resume`` continues from here when a slot frees), or 503;
6. **split**: the backend — and so the cluster — for this request (targeting, sticky key);
7. **breaker** of route→cluster: open → the route's fallback, else 503 "circuit open".

Every admitted request is finished exactly once with ``finish`` (its outcome feeds the
breaker and the shedder, frees its slots and returns the queued requests to start) or
``abandon`` (the client left). Breaker transitions are collected in ``transitions`` for the
adapter to count and log.

Pure: ``now`` is passed in, randomness comes from the ``random.Random`` given; requests are
seen through ``RequestView``; the proxy-specific parts (sockets, bytes to clients) stay in
``corral.gateway.proxy``. Nothing iterates a set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from random import Random
from typing import Any, Final

from corral.gateway.breaker import BreakerSettings, CircuitBreaker, Transition
from corral.gateway.cache import CachedResponse, ResponseCache, request_bypasses_cache
from corral.gateway.config import GatewayConfig, Route
from corral.gateway.hotparam import HotParamLimiter
from corral.gateway.policy_config import (
    Adaptive,
    BreakerPolicy,
    ConcurrencyPolicy,
    Fallback,
    HotParamPolicy,
    RateLimitPolicy,
)
from corral.gateway.ratelimit import (
    MISSING_KEY,
    Decision,
    RateLimiter,
    TierShare,
    limit_key,
    rate_limit_headers,
)
from corral.gateway.router import CompiledRoute, RouteTable
from corral.gateway.shed import SHED_RETRY_AFTER, AdaptiveShedder, ConcurrencyLimiter
from corral.gateway.split import Target, TrafficSplit

__all__ = [
    "GO",
    "HIT",
    "REFUSE",
    "WAIT",
    "Guard",
    "Policies",
    "RequestView",
    "RouteRuntime",
    "parse_head",
    "render_cached",
    "render_fallback",
]

Lookup = Callable[[str], "str | None"]
GO: Final = 0
REFUSE: Final = 1
HIT: Final = 2
WAIT: Final = 3
SHED_HEADERS: Final = b"Retry-After: %d\r\n" % SHED_RETRY_AFTER

_REASONS = {200: b"OK", 429: b"Too Many Requests", 503: b"Service Unavailable"}
_HOP = frozenset((b"connection", b"keep-alive", b"transfer-encoding", b"content-length"))


class RequestView:
    """What the policies read of a request (lookups are lazy: unused headers cost nothing).

    A plain class, not a dataclass: one is made per guarded request, and a dataclass's
    generated ``__init__`` stays interpreted even where this module is compiled."""

    __slots__ = ("client_ip", "cookie", "header", "host", "method", "params", "path", "query")

    def __init__(
        self,
        method: str,
        host: str,
        path: str,
        query: str,
        client_ip: str,
        header: Lookup,
        cookie: Lookup,
        params: Mapping[str, str],
    ) -> None:
        self.method = method
        self.host = host
        self.path = path
        self.query = query
        self.client_ip = client_ip
        self.header = header
        self.cookie = cookie
        self.params = params


class Guard:
    """One guarded request's admission state, held by its client connection (a plain class,
    like ``RequestView``, for a compiled ``__init__``)."""

    __slots__ = (
        "breaker",
        "breaker_key",
        "cacheable",
        "cluster",
        "degrade",
        "entry",
        "fallback",
        "finished",
        "headers",
        "message",
        "owner",
        "refresh",
        "request",
        "rt",
        "shed_counted",
        "slots",
        "stage",
        "started",
        "status",
        "updating",
        "waiting",
    )

    def __init__(
        self, rt: RouteRuntime, owner: Any, request: RequestView, started: float, cluster: str = ""
    ) -> None:
        self.rt = rt
        self.owner = owner
        self.request = request
        self.started = started
        self.status = 0  # REFUSE: the status to answer
        self.message = ""
        self.headers = b""  # header lines ("Name: value\r\n") added to the response
        self.entry: CachedResponse | None = None  # HIT: the entry to serve
        self.fallback: Fallback | None = None  # REFUSE with a fallback to serve instead
        self.slots: list[ConcurrencyLimiter] = []
        self.waiting: tuple[ConcurrencyLimiter, int] | None = None
        self.stage = 0  # the next concurrency limiter to acquire
        self.shed_counted = False
        self.cacheable = False  # capture the response and offer it to the cache
        self.breaker: CircuitBreaker | None = None
        self.breaker_key: tuple[str, str] = ("", "")
        self.cluster = cluster
        self.finished = False
        self.degrade = False  # refused by an open breaker: stale cache or fallback may answer
        self.updating = False  # HIT on a stale entry (stale-while-revalidate)
        self.refresh = False  # …and this request should start its background refresh

    @property
    def kind(self) -> int:
        """GO (upstream, to ``cluster``), REFUSE (answer ``status``), HIT or WAIT (parked)."""
        if self.waiting is not None:
            return WAIT
        if self.entry is not None:
            return HIT
        return REFUSE if self.status else GO


@dataclass(slots=True)
class RouteRuntime:
    name: str
    criticality: str
    cluster: str
    service: str | None
    limiters: tuple[tuple[str, RateLimiter], ...]  # (key spec, limiter)
    hot: tuple[tuple[str, HotParamLimiter], ...]
    concurrency: tuple[ConcurrencyLimiter, ...]
    breaker: BreakerSettings | None
    split: TrafficSplit | None
    sticky_on: str | None
    backends: Mapping[str, str]  # split backend name → cluster key
    cache_ttl: float | None  # None: the route does not cache
    cache_max_entry: int
    fallback: Fallback | None


def _settings(policy: BreakerPolicy) -> BreakerSettings:
    return BreakerSettings(
        window=policy.window,
        min_calls=policy.min_calls,
        error_rate=policy.error_rate,
        slow_call_duration=policy.slow_call_duration,
        slow_call_rate=policy.slow_call_rate,
        open_time=policy.open_time,
        max_open_time=policy.max_open_time,
        half_open_probes=policy.half_open_probes,
    )


def _scope_id(scope: str, route: Route) -> str:
    if scope == "global":
        return "global"
    if scope == "service" and route.service is not None:
        return f"service:{route.service}"
    return f"route:{route.name}"


def _new_limiter(policy: RateLimitPolicy, fraction: float) -> RateLimiter:
    if policy.algorithm == "token_bucket":
        rate = policy.tokens_per_second()
        burst = (
            float(policy.burst) if policy.burst is not None else float(max(1, int(rate + 0.999)))
        )
        return RateLimiter(
            "token_bucket", rate, burst=burst, max_keys=policy.max_keys, fraction=fraction
        )
    assert policy.limit is not None
    return RateLimiter(
        "sliding_window",
        float(policy.limit),
        window=policy.window,
        max_keys=policy.max_keys,
        fraction=fraction,
    )


def _tier_rate(policy: RateLimitPolicy) -> float:
    """A policy's tier-wide rate in requests/s: the unit demands are reported in."""
    if policy.algorithm == "token_bucket":
        return policy.tokens_per_second()
    assert policy.limit is not None
    return policy.limit / policy.window


class Policies:
    """Every policy object of one worker (see the module docstring)."""

    def __init__(self, worker: str = "0", workers: int = 1, rng: Random | None = None) -> None:
        self.rng = rng or Random(0)
        self.shed: list[Guard] = []  # parked guards refused, for the adapter to answer
        self.ready: list[Guard] = []  # parked guards whose slot came, for the adapter to resume
        self.worker = worker
        self.workers = workers
        self.routes: dict[str, RouteRuntime] = {}
        self.limiters: dict[str, tuple[RateLimitPolicy, RateLimiter]] = {}
        self.tier: dict[str, TierShare] = {}
        self.hot: dict[str, tuple[HotParamPolicy, HotParamLimiter]] = {}
        self.concurrency: dict[str, tuple[ConcurrencyPolicy, ConcurrencyLimiter]] = {}
        self.breakers: dict[tuple[str, str], CircuitBreaker] = {}
        self.cache: ResponseCache | None = None
        self.shedder: AdaptiveShedder | None = None
        self.adaptive: Adaptive | None = None
        self.waiting: dict[tuple[int, int], Guard] = {}  # (id(limiter), ticket) → parked guard
        self.transitions: list[tuple[str, str, Transition]] = []  # (route, cluster, transition)
        self.counts: dict[tuple[str, str], int] = {}  # (route, what) → count, for metrics

    # --- building (off the hot path) -------------------------------------------------------

    @classmethod
    def build(
        cls,
        table: RouteTable,
        old: Policies | None,
        *,
        worker: str = "0",
        workers: int = 1,
        rng: Random | None = None,
    ) -> Policies:
        config = table.config or GatewayConfig()
        new = cls(worker, workers, rng)
        if old is not None:
            new.waiting, new.shed, new.ready = old.waiting, old.shed, old.ready
            new.counts, new.transitions = old.counts, old.transitions
        named = config.policies
        # A tier-wide limit starts at an even share; TierShare moves it as demand is seen.
        fraction = 1.0 / workers
        for route in table.routes:
            if not route.guarded:
                continue
            spec = route.route
            limiters: list[tuple[str, RateLimiter]] = []
            for index, ref in enumerate(spec.rate_limits):
                policy = named.rate_limits[ref] if isinstance(ref, str) else ref
                base = ref if isinstance(ref, str) else f"~{spec.name}.{index}"
                lid = f"{base}@{_scope_id(policy.scope, spec)}"
                limiters.append((policy.key, new._limiter(lid, policy, old, fraction)))
            hot: list[tuple[str, HotParamLimiter]] = []
            for index, href in enumerate(spec.hot_params):
                hpolicy = named.hot_params[href] if isinstance(href, str) else href
                base = href if isinstance(href, str) else f"~{spec.name}.{index}"
                hot.append((hpolicy.key, new._hot(f"{base}@route:{spec.name}", hpolicy, old)))
            conc: list[ConcurrencyLimiter] = []
            for index, cref in enumerate(spec.concurrency):
                cpolicy = named.concurrency[cref] if isinstance(cref, str) else cref
                base = cref if isinstance(cref, str) else f"~{spec.name}.{index}"
                cid = f"{base}@{_scope_id(cpolicy.scope, spec)}"
                limiter = new._concurrency(cid, cpolicy, old)
                if not any(c is limiter for c in conc):
                    conc.append(limiter)
            breaker: BreakerSettings | None = None
            bref = spec.breaker
            if bref is not None:
                breaker = _settings(named.breakers[bref] if isinstance(bref, str) else bref)
            split: TrafficSplit | None = None
            if spec.split is not None:
                split = TrafficSplit(
                    spec.name,
                    [(b.name, b.weight) for b in spec.split.to],
                    [Target(t.to, t.value, t.header, t.cookie) for t in spec.split.targets],
                )
            new.routes[spec.name] = RouteRuntime(
                name=spec.name,
                criticality=spec.criticality,
                cluster=route.cluster,
                service=spec.service,
                limiters=tuple(limiters),
                hot=tuple(hot),
                concurrency=tuple(conc),
                breaker=breaker,
                split=split,
                sticky_on=spec.split.sticky_on if spec.split is not None else None,
                backends=dict(route.backends),
                cache_ttl=spec.cache.ttl if spec.cache is not None else None,
                cache_max_entry=spec.cache.max_entry_bytes if spec.cache is not None else 0,
                fallback=spec.fallback,
            )
        if old is not None:
            for key, breaker_ in old.breakers.items():
                rt = new.routes.get(key[0])
                if rt is not None and rt.breaker == breaker_.settings:
                    new.breakers[key] = breaker_
        if any(rt.cache_ttl is not None for rt in new.routes.values()):
            max_bytes = config.cache.max_bytes
            if old is not None and old.cache is not None and old.cache.max_bytes == max_bytes:
                new.cache = old.cache
            elif max_bytes > 0:
                new.cache = ResponseCache(max_bytes, max_bytes)
        adaptive = config.adaptive
        if adaptive is not None:
            new.adaptive = adaptive
            if old is not None and old.shedder is not None and old.adaptive == adaptive:
                new.shedder = old.shedder
            else:
                new.shedder = AdaptiveShedder(
                    window=adaptive.window,
                    cpu_threshold=adaptive.cpu / 100.0,
                    lag_threshold=adaptive.loop_lag,
                    cool_off=adaptive.cool_off,
                )
        if workers > 1:
            for lid in sorted(new.limiters):
                policy, _ = new.limiters[lid]
                share = old.tier.get(lid) if old is not None else None
                if share is None or share.limit != _tier_rate(policy):
                    share = TierShare(
                        worker,
                        _tier_rate(policy),
                        initial_workers=workers,
                        stale_after=config.tier.stale_after,
                    )
                share.stale_after = config.tier.stale_after
                new.tier[lid] = share
        return new

    def _limiter(
        self, lid: str, policy: RateLimitPolicy, old: Policies | None, fraction: float
    ) -> RateLimiter:
        found = self.limiters.get(lid)
        if found is None and old is not None:
            found = old.limiters.get(lid)
        if found is None or found[0] != policy:
            found = (policy, _new_limiter(policy, fraction))
        self.limiters[lid] = found
        return found[1]

    def _hot(self, hid: str, policy: HotParamPolicy, old: Policies | None) -> HotParamLimiter:
        found = old.hot.get(hid) if old is not None else None
        if found is None or found[0] != policy:
            # Per worker: a value's traffic spreads over workers like connections do, so each
            # takes its share of the limit (a value pinned to one worker is under-admitted).
            limit = max(1.0, policy.limit / self.workers)
            overrides = {k: max(1.0, v / self.workers) for k, v in sorted(policy.overrides.items())}
            limiter = HotParamLimiter(limit, policy.window, overrides=overrides, top_k=policy.top_k)
            found = (policy, limiter)
        self.hot[hid] = found
        return found[1]

    def _concurrency(
        self, cid: str, policy: ConcurrencyPolicy, old: Policies | None
    ) -> ConcurrencyLimiter:
        found = self.concurrency.get(cid)
        if found is None and old is not None:
            found = old.concurrency.get(cid)
            if found is not None and found[0] != policy:
                limiter = found[1]  # keep its in-flight count and queue; change the bounds
                limiter.set_limit(policy.max_in_flight)
                limiter.queue_size = policy.queue
                limiter.queue_timeout = policy.queue_timeout
                found = (policy, limiter)
        if found is None:
            found = (
                policy,
                ConcurrencyLimiter(policy.max_in_flight, policy.queue, policy.queue_timeout),
            )
        self.concurrency[cid] = found
        return found[1]

    # --- the request path ------------------------------------------------------------------

    def _count(self, route: str, what: str) -> None:
        key = (route, what)
        self.counts[key] = self.counts.get(key, 0) + 1

    def admit(self, route: CompiledRoute, request: RequestView, owner: Any, now: float) -> Guard:
        """Run the admission pipeline; the guard's ``kind`` (returned with it) says what to do.

        Returns a ``Guard`` whose ``status`` is 0 to go upstream (``cluster``), the status to
        answer (REFUSE: ``message``, ``headers``, maybe ``fallback``), or a cache hit
        (``entry``); ``waiting`` is set when the request is parked in a queue."""
        rt = self.routes[route.name]
        guard = Guard(rt, owner, request, now, cluster=route.cluster)
        best: Decision | None = None
        for spec, limiter in rt.limiters:
            key = limit_key(spec, request.client_ip, request.header, request.cookie, request.params)
            decision = limiter.check(key, now)
            if not decision.allowed:
                return self._refuse(guard, 429, "rate limit exceeded", decision, "rate_limited")
            if best is None or decision.remaining < best.remaining:
                best = decision
        for spec, hot in rt.hot:
            value = limit_key(
                spec, request.client_ip, request.header, request.cookie, request.params
            )
            if value == MISSING_KEY:
                continue
            decision = hot.check(value, now)
            if not decision.allowed:
                return self._refuse(guard, 429, f"too many requests for {value}", decision, "hot")
        if best is not None:
            guard.headers = rate_limit_headers(best)
        cache = self.cache
        if rt.cache_ttl is not None and cache is not None:
            method = request.method
            if not request_bypasses_cache(method, request.header):
                found = cache.lookup(
                    method, request.host, request.path, request.query, request.header, now
                )
                if found.state != "miss":
                    fresh = found.state == "fresh"
                    self._count(rt.name, "cache_hit" if fresh else "cache_updating")
                    guard.entry = found.entry
                    guard.updating = not fresh
                    guard.refresh = found.revalidate
                    guard.finished = True
                    return guard
                self._count(rt.name, "cache_miss")
                guard.cacheable = method == "GET"
        shedder = self.shedder
        if shedder is not None:
            if not shedder.admit(rt.criticality, now):
                return self._refuse(guard, 503, "overloaded: shedding load", None, "shed")
            guard.shed_counted = True
        return self._acquire(guard, now)

    def _acquire(self, guard: Guard, now: float) -> Guard:
        rt = guard.rt
        limiters = rt.concurrency
        while guard.stage < len(limiters):
            limiter = limiters[guard.stage]
            admission = limiter.acquire(rt.criticality, now)
            if admission.displaced is not None:
                self._shed_waiter(limiter, admission.displaced)
            if admission.kind == "shed":
                self._release(guard, now)
                return self._refuse(
                    guard, 503, "overloaded: too many requests in flight", None, "shed"
                )
            if admission.kind == "queue":
                guard.waiting = (limiter, admission.ticket)
                self.waiting[(id(limiter), admission.ticket)] = guard
                return guard
            guard.slots.append(limiter)
            guard.stage += 1
        return self._route(guard, now)

    def _route(self, guard: Guard, now: float) -> Guard:
        rt = guard.rt
        split = rt.split
        request = guard.request
        if split is not None:
            key: str | None = None
            if rt.sticky_on is not None:
                key = limit_key(
                    rt.sticky_on, request.client_ip, request.header, request.cookie, request.params
                )
                if key == MISSING_KEY:
                    key = None
            backend = split.choose(key, request.header, request.cookie, self.rng)
            guard.cluster = rt.backends.get(backend, rt.cluster)
        if rt.breaker is not None:
            bkey = (rt.name, guard.cluster)
            breaker = self.breakers.get(bkey)
            if breaker is None:
                breaker = self.breakers[bkey] = CircuitBreaker(rt.breaker)
            was = breaker.last_transition
            allowed = breaker.allow(now)
            if breaker.last_transition is not was and breaker.last_transition is not None:
                self.transitions.append((rt.name, guard.cluster, breaker.last_transition))
            if not allowed:
                self._release(guard, now)
                guard.fallback = rt.fallback
                guard.degrade = True
                return self._refuse(
                    guard, 503, f"circuit open for route {rt.name}", None, "breaker"
                )
            guard.breaker = breaker
            guard.breaker_key = bkey
        return guard

    def _refuse(
        self, guard: Guard, status: int, message: str, decision: Decision | None, what: str
    ) -> Guard:
        guard.status = status
        guard.message = message
        guard.finished = True
        if decision is not None:
            guard.headers = rate_limit_headers(decision)
        else:
            guard.headers = SHED_HEADERS
        self._count(guard.rt.name, what)
        return guard

    def _shed_waiter(self, limiter: ConcurrencyLimiter, ticket: int) -> None:
        waiter = self.waiting.pop((id(limiter), ticket), None)
        if waiter is not None:
            waiter.waiting = None
            self._release(waiter, 0.0)
            self._refuse(waiter, 503, "overloaded: shed from the queue", None, "shed")
            self.shed.append(waiter)

    def resume(self, guard: Guard, now: float) -> Guard:
        """A parked request got its slot: continue the pipeline after that limiter."""
        assert guard.waiting is not None
        limiter, _ = guard.waiting
        guard.waiting = None
        guard.slots.append(limiter)
        guard.stage += 1
        return self._acquire(guard, now)

    def expire(self, now: float) -> None:
        """Refuse parked requests whose queue time ran out (into ``shed``)."""
        if not self.waiting:
            return
        for cid in sorted(self.concurrency):
            limiter = self.concurrency[cid][1]
            gone, go = limiter.expire(now)
            for ticket in gone:
                waiter = self.waiting.pop((id(limiter), ticket), None)
                if waiter is not None:
                    waiter.waiting = None
                    self._release(waiter, now)
                    self._refuse(waiter, 503, "overloaded: queued too long", None, "shed")
                    self.shed.append(waiter)
            self._started(limiter, go, now)

    def _started(self, limiter: ConcurrencyLimiter, tickets: list[int], now: float) -> None:
        for ticket in tickets:
            waiter = self.waiting.pop((id(limiter), ticket), None)
            if waiter is None:  # its client left between the two: give the slot back
                self._started(limiter, limiter.release(now), now)
                continue
            self.ready.append(waiter)

    def _release(self, guard: Guard, now: float) -> None:
        for limiter in guard.slots:
            self._started(limiter, limiter.release(now), now)
        guard.slots = []
        if guard.waiting is not None:
            limiter, ticket = guard.waiting
            limiter.cancel(ticket)
            self.waiting.pop((id(limiter), ticket), None)
            guard.waiting = None
        if guard.shed_counted and self.shedder is not None:
            self.shedder.in_flight -= 1
            guard.shed_counted = False

    def finish(self, guard: Guard, status: int, now: float) -> None:
        """The request was answered with ``status``: record it and free what it held (parked
        requests that get the freed slots go to ``ready``)."""
        if guard.finished:
            return
        guard.finished = True
        latency = now - guard.started
        breaker = guard.breaker
        if breaker is not None:
            transition = breaker.record(0 < status < 500, latency, now)
            if transition is not None:
                self.transitions.append((guard.breaker_key[0], guard.breaker_key[1], transition))
        if guard.shed_counted and self.shedder is not None:
            guard.shed_counted = False
            self.shedder.done(latency, now)
        self._release(guard, now)

    def abandon(self, guard: Guard, now: float) -> None:
        """The client left before an answer: free what the request held."""
        if guard.finished:
            return
        guard.finished = True
        guard.breaker = None
        self._release(guard, now)

    # --- cache -----------------------------------------------------------------------------

    def store(self, guard: Guard, status: int, head: bytes, body: bytes, now: float) -> bool:
        """Offer a complete upstream response to the cache; True if it was stored."""
        return self.store_for(guard.rt, guard.request, status, head, body, now)

    def store_for(
        self,
        rt: RouteRuntime,
        request: RequestView,
        status: int,
        head: bytes,
        body: bytes,
        now: float,
    ) -> bool:
        """``store`` for a request no longer in flight (a background refresh)."""
        cache = self.cache
        if cache is None or rt.cache_ttl is None or len(body) > rt.cache_max_entry:
            return False
        entry = cache.store(
            method=request.method,
            host=request.host,
            path=request.path,
            query=request.query,
            header=request.header,
            status=status,
            headers=parse_head(head),
            body=body,
            now=now,
            default_ttl=rt.cache_ttl,
            route=rt.name,
        )
        return entry is not None

    def purge(self, route: str | None = None, prefix: str | None = None) -> int:
        """Drop cached responses of ``route`` and/or under a path ``prefix`` (admin API)."""
        return self.cache.purge(route=route, prefix=prefix) if self.cache is not None else 0

    def reset_breakers(self, route: str, now: float) -> int:
        """Close every breaker of ``route`` with an empty window (admin API); the reset is
        reported in ``transitions`` like any other."""
        reset = 0
        for key in sorted(self.breakers):
            if key[0] == route:
                transition = self.breakers[key].reset(now)
                self.transitions.append((key[0], key[1], transition))
                reset += 1
        return reset

    def stale(self, guard: Guard, now: float) -> CachedResponse | None:
        """A stale entry to serve instead of an upstream failure (stale-if-error)."""
        cache = self.cache
        if cache is None or guard.rt.cache_ttl is None:
            return None
        r = guard.request
        entry = cache.lookup_on_error(r.method, r.host, r.path, r.query, r.header, now)
        if entry is not None:
            self._count(guard.rt.name, "cache_stale")
        return entry

    # --- tier-wide limits ------------------------------------------------------------------

    def demands(self, elapsed: float) -> dict[str, float]:
        """This worker's offered requests/s per tier-shared limiter since the last call."""
        out: dict[str, float] = {}
        for lid in sorted(self.tier):
            limiter = self.limiters[lid][1]
            out[lid] = limiter.take_offered() / elapsed if elapsed > 0 else 0.0
        return out

    def rebalance(
        self, reports: Mapping[str, tuple[float, Mapping[str, float]]], wall: float, now: float
    ) -> None:
        """Apply every worker's demand report ``{worker: (at, {limiter: demand})}``; report
        times and ``wall`` are wall-clock (compared across processes), ``now`` the limiters'
        clock."""
        for lid in sorted(self.tier):
            share = self.tier[lid]
            for worker in sorted(reports):
                at, demands = reports[worker]
                if lid in demands:
                    share.report(worker, float(demands[lid]), at)
            fraction = share.rebalance(wall)
            limiter = self.limiters[lid][1]
            if fraction != limiter.fraction:
                limiter.set_fraction(fraction, now)


def parse_head(head: bytes) -> list[tuple[bytes, bytes]]:
    """The header lines of a response head (status line and framing headers left out)."""
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() not in _HOP:
            headers.append((name.strip(), value.strip()))
    return headers


def render_cached(
    entry: CachedResponse, *, head_only: bool, close: bool, extra: bytes, now: float
) -> bytes:
    """A cached response as bytes for the client (``Age`` and ``X-Cache`` added)."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (entry.status, _REASONS.get(entry.status, b"OK"))]
    for name, value in entry.headers:
        lines.append(name + b": " + value + b"\r\n")
    lines.append(b"Content-Length: %d\r\n" % len(entry.body))
    lines.append(b"Age: %d\r\n" % entry.age(now))
    lines.append(extra)
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(entry.body)
    return b"".join(lines)


def render_fallback(fallback: Fallback, *, head_only: bool, close: bool, extra: bytes) -> bytes:
    body = fallback.body.encode()
    lines = [b"HTTP/1.1 %d %s\r\n" % (fallback.status, _REASONS.get(fallback.status, b"OK"))]
    for name, value in sorted(fallback.headers.items()):
        lines.append(name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n")
    lines.append(b"Content-Length: %d\r\n" % len(body))
    lines.append(b"X-Corral-Fallback: 1\r\n")
    lines.append(extra)
    if close:
        lines.append(b"Connection: close\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(body)
    return b"".join(lines)
