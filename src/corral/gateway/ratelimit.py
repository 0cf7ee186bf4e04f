"""Rate limits: token bucket and sliding-window counter per key, a bounded key table that
cannot be gamed by eviction, 429 decisions with their headers, and the tier-wide share math.

Theory of operation.

**Algorithms.** ``TokenBucket`` (rate r tokens/s, capacity ``burst`` b; a request takes
``cost`` tokens). Invariant: over any interval of length t a key admits at most r·t + b
(tokens only accrue at r and never exceed b). ``SlidingWindow`` is Cloudflare's sliding-window
counter: two fixed windows of length W, and the estimate ``prev·(1 − f) + curr`` where f is the
elapsed fraction of the current window; a request is admitted while the estimate plus its cost
is at most ``limit``. Its documented approximation: (a) every *fixed* window admits at most
``limit`` (exact); (b) every sliding window of length W admits at most ``limit + prev·f`` <
2·limit, the worst case being a previous window whose requests all came at its very end; (c)
when the previous window's admissions were spread evenly — as they are under sustained
overload, where this counter admits at a steady limit/W — sliding windows stay within a few
percent of ``limit`` (the simulator asserts 5 %).

**Keys.** A policy's key is ``client_ip``, ``header:NAME``, ``cookie:NAME``, ``param:NAME`` (a
path-template parameter) or ``none`` (one shared bucket); ``limit_key`` extracts it. Requests
that lack the key share the bucket ``"-"`` so dropping a header is not a way around a limit.

**Bounded state and eviction.** Per-key state lives in an LRU of at most ``max_keys`` entries.
Forgetting a key must not hand it a fresh bucket, so an evicted key's *debt* — the time at
which its bucket would be full again (token bucket) or its current-window count (sliding
window) — is written into a count-min sketch (4 rows × ``sketch_width`` cells, keeping the
maximum per cell, Cormode & Muthukrishnan 2005). A key that is not in the table starts from
the sketch: the minimum over its 4 cells is never below its own recorded debt (other keys can
only raise cells), so a returning key restarts with *at most* the tokens it would have had —
never more. A brand-new key that collides in all 4 rows with indebted keys starts partially
empty: a rare, bounded under-admission and never an over-admission. Debts expire by time
alone (a full-at time in the past means "full"), so the sketch needs no decay pass.

**429 decisions.** ``Decision`` carries what the proxy renders: ``allowed``, ``limit``,
``remaining``, ``reset`` (seconds until the key is fully replenished / the window rolls) and
``retry_after`` (seconds until this request's cost would be admitted). ``rate_limit_headers``
renders ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (IETF
draft-ietf-httpapi-ratelimit-headers) and, on a 429, ``Retry-After`` — integers, rounded up.

**Tier-wide limits.** A configured limit is the limit of the whole gateway tier. Each worker
publishes its observed demand (offered requests/s, admitted or not, an EWMA) for each
policy every ``period`` — through a small shared file on one host, or a Store key with a lease
across hosts — and every worker computes the same allocation from the same vector with
``allocate``: max-min fair water-filling of the total rate over the demands (× a headroom so a
growing worker can show its growth), with a floor per live worker so a worker that sees its
first request can admit some. Allocations always sum to the configured rate. Workers apply a
new allocation through ``TierShare``: a *decrease* at once, an *increase* only one period
later — by then every worker has seen the vector that freed that rate, so the shares in force
never sum above the configured rate while exchange lag stays under one period. The burst is
split the same way. Each worker then runs its buckets at ``rate × fraction``; per-key buckets
use the worker's fraction too, which is exact when a key's traffic spreads over workers like
the total (SO_REUSEPORT spreads connections) and under-admits — never over-admits — a key
pinned to one worker. A worker whose report is older than ``stale_after`` is dropped and its
share returns to the others. Measured in ``tests/sim/test_traffic_sim.py``: with 2–4 workers
and skewed, shifting demand, workers exchanging at unaligned phases, no 5 s window admits
more than 1.10 × (rate·5 s + burst); over 90 seeded runs the worst was 1.063× (the error is
exchange lag) while utilisation under overload stayed ≥ 87 %.

Pure: ``now`` is passed in; nothing here reads a clock, logs or draws randomness.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "MISSING_KEY",
    "Decision",
    "EvictionSketch",
    "RateLimiter",
    "SlidingWindow",
    "TierShare",
    "TokenBucket",
    "allocate",
    "limit_key",
    "rate_limit_headers",
]

MISSING_KEY = "-"
Lookup = Callable[[str], "str | None"]


class Decision:
    """One rate-limit decision; the proxy answers 429 when ``allowed`` is False. A plain slotted
    class: one is made per request, and where this module is compiled its ``__init__`` is native
    (a NamedTuple's or a dataclass's generated constructor stays interpreted)."""

    __slots__ = ("allowed", "limit", "remaining", "reset", "retry_after")

    def __init__(
        self, allowed: bool, limit: int, remaining: int, reset: float, retry_after: float = 0.0
    ) -> None:
        self.allowed = allowed
        self.limit = limit
        self.remaining = remaining
        self.reset = reset
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return (
            f"Decision(allowed={self.allowed}, limit={self.limit}, remaining={self.remaining}, "
            f"reset={self.reset}, retry_after={self.retry_after})"
        )


def rate_limit_headers(decision: Decision) -> bytes:
    """The response header lines for ``decision`` (``Retry-After`` only when refused), ready
    to splice into a head: every admitted request carries them, so they are one format."""
    head = b"RateLimit-Limit: %d\r\nRateLimit-Remaining: %d\r\nRateLimit-Reset: %d\r\n" % (
        decision.limit,
        decision.remaining,
        math.ceil(decision.reset),
    )
    if decision.allowed:
        return head
    return head + b"Retry-After: %d\r\n" % max(1, math.ceil(decision.retry_after))


def limit_key(
    spec: str,
    client_ip: str,
    header: Lookup,
    cookie: Lookup,
    params: Mapping[str, str],
) -> str:
    """The key a policy limits on: ``client_ip``, ``header:NAME``, ``cookie:NAME``,
    ``param:NAME`` or ``none``; requests without the key share ``MISSING_KEY``."""
    if spec == "client_ip":
        return client_ip
    if spec == "none":
        return ""
    kind, _, name = spec.partition(":")
    if kind == "header":
        value = header(name)
    elif kind == "cookie":
        value = cookie(name)
    else:
        value = params.get(name)
    return value if value else MISSING_KEY


# --- eviction memory --------------------------------------------------------------------


class EvictionSketch:
    """A count-min sketch of the debts of evicted keys (max per cell, 4 rows).

    ``remember(key, value)`` raises the key's cells to at least ``value``; ``recall(key)``
    returns the minimum of its cells, an upper bound on anything remembered for the key."""

    __slots__ = ("_rows", "_width")

    DEPTH = 4

    def __init__(self, width: int = 4096, empty: float = 0.0) -> None:
        self._width = width
        self._rows = [[empty] * width for _ in range(self.DEPTH)]

    def _cells(self, key: str) -> list[int]:
        data = key.encode()
        h1 = zlib.crc32(data)
        h2 = zlib.crc32(data, 0x9E3779B9) | 1  # double hashing (Kirsch & Mitzenmacher)
        width = self._width
        return [(h1 + i * h2) % width for i in range(self.DEPTH)]

    def remember(self, key: str, value: float) -> None:
        for row, cell in zip(self._rows, self._cells(key), strict=True):
            if row[cell] < value:
                row[cell] = value

    def recall(self, key: str) -> float:
        return min(row[cell] for row, cell in zip(self._rows, self._cells(key), strict=True))


# --- algorithms -------------------------------------------------------------------------


class TokenBucket:
    """Token buckets per key: ``rate`` tokens/s, at most ``burst`` tokens, LRU of ``max_keys``.

    State per key is ``[tokens, at]``; an evicted key's full-at time goes to the sketch."""

    __slots__ = ("_keys", "_sketch", "burst", "max_keys", "rate")

    def __init__(
        self, rate: float, burst: float, max_keys: int = 100_000, sketch_width: int = 4096
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._keys: OrderedDict[str, list[float]] = OrderedDict()
        self._sketch = EvictionSketch(sketch_width)

    def __len__(self) -> int:
        return len(self._keys)

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        """Change rate and burst (a tier share moved); tokens are clamped, never granted."""
        for state in self._keys.values():
            self._refill(state, now)
            if state[0] > burst:
                state[0] = burst
        self.rate = rate
        self.burst = burst

    def _refill(self, state: list[float], now: float) -> None:
        elapsed = now - state[1]
        if elapsed > 0:
            tokens = state[0] + elapsed * self.rate
            state[0] = tokens if tokens < self.burst else self.burst
            state[1] = now

    def _new_state(self, key: str, now: float) -> list[float]:
        full_at = self._sketch.recall(key)
        tokens = self.burst
        if full_at > now:
            tokens = max(0.0, self.burst - (full_at - now) * self.rate)
        if len(self._keys) >= self.max_keys:
            old_key, old = self._keys.popitem(last=False)
            self._refill(old, now)
            if old[0] < self.burst and self.rate > 0:
                self._sketch.remember(old_key, now + (self.burst - old[0]) / self.rate)
        state = [tokens, now]
        self._keys[key] = state
        return state

    def check(self, key: str, now: float, cost: float = 1.0) -> Decision:
        state = self._keys.get(key)
        rate = self.rate
        if state is None:
            state = self._new_state(key, now)
            tokens = state[0]
        else:
            self._keys.move_to_end(key)
            tokens = state[0]
            if now > state[1]:  # _refill, inlined: this is the per-request path
                tokens += (now - state[1]) * rate
                if tokens > self.burst:
                    tokens = self.burst
                state[0] = tokens
                state[1] = now
        if tokens >= cost:
            tokens = state[0] = tokens - cost
            reset = (self.burst - tokens) / rate if rate > 0 else 0.0
            return Decision(True, int(self.burst), int(tokens), reset)
        wait = (cost - tokens) / rate if rate > 0 else math.inf
        reset = (self.burst - tokens) / rate if rate > 0 else math.inf
        return Decision(False, int(self.burst), int(tokens), reset, wait)


# Sliding-window sketch cells hold window_number * _TAG + count, so a max keeps the newest
# window's count; window numbers count from the first request, which keeps the product exact
# in a float. (A module constant: a compiled class cannot hold this as a class attribute.)
_TAG: Final = float(1 << 21)


class SlidingWindow:
    """Sliding-window counters per key: at most ``limit`` per ``window`` seconds (see the
    module docstring for the approximation). State per key is ``[window_start, prev, curr]``;
    an evicted key's current-window count goes to the sketch, tagged by its window number."""

    __slots__ = ("_epoch", "_keys", "_sketch", "limit", "max_keys", "window")

    def __init__(
        self, limit: float, window: float, max_keys: int = 100_000, sketch_width: int = 4096
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._epoch: float | None = None
        self._keys: OrderedDict[str, list[float]] = OrderedDict()
        self._sketch = EvictionSketch(sketch_width, empty=-1.0)

    def __len__(self) -> int:
        return len(self._keys)

    def set_rate(self, limit: float, now: float) -> None:
        self.limit = limit

    def _roll(self, state: list[float], now: float) -> None:
        windows = int((now - state[0]) // self.window)
        if windows >= 1:
            state[1] = state[2] if windows == 1 else 0.0
            state[2] = 0.0
            state[0] += windows * self.window

    def _new_state(self, key: str, now: float) -> list[float]:
        if self._epoch is None:
            self._epoch = now
        number = (now - self._epoch) // self.window
        state = [self._epoch + number * self.window, 0.0, 0.0]
        packed = self._sketch.recall(key)
        if packed >= 0:
            at, count = divmod(packed, _TAG)
            if at == number:
                state[2] = count
            elif at == number - 1:
                state[1] = count
        if len(self._keys) >= self.max_keys:
            old_key, old = self._keys.popitem(last=False)
            self._roll(old, now)
            if old[2] > 0:
                old_number = round((old[0] - self._epoch) / self.window)
                count = min(old[2], _TAG - 1)
                self._sketch.remember(old_key, old_number * _TAG + count)
        self._keys[key] = state
        return state

    def check(self, key: str, now: float, cost: float = 1.0) -> Decision:
        state = self._keys.get(key)
        if state is None:
            state = self._new_state(key, now)
        else:
            self._keys.move_to_end(key)
        window = self.window
        if now >= state[0] + window:
            self._roll(state, now)
        prev = state[1]
        prev_weight = prev * (1.0 - (now - state[0]) / window)
        used = prev_weight + state[2]
        limit = self.limit
        reset = state[0] + window - now
        if used + cost <= limit:
            state[2] += cost
            return Decision(True, int(limit), int(limit - used - cost), reset)
        # The estimate falls at prev/window per second as the previous window fades; if that
        # cannot make room, room comes once the current count is itself fading.
        over = used + cost - limit
        if over <= prev_weight:
            wait = over * window / prev
        else:
            curr = state[2]
            wait = reset + max(0.0, 1.0 - (limit - cost) / curr) * window if curr else reset
        return Decision(False, int(limit), max(0, int(limit - used)), reset, wait)


class RateLimiter:
    """One named policy's limiter for one scope target (a route, a service or global).

    The proxy keeps one per (policy, target), calls ``check(key, now)`` per request after
    routing, and answers 429 with ``rate_limit_headers`` when refused. ``set_fraction``
    applies this worker's tier share (``TierShare.rebalance``); decisions still report the
    configured, tier-wide figures so clients see the limit they were promised."""

    __slots__ = ("_impl", "algorithm", "amount", "burst", "fraction", "offered", "window")

    def __init__(
        self,
        algorithm: Literal["token_bucket", "sliding_window"],
        amount: float,
        *,
        burst: float = 0.0,
        window: float = 1.0,
        max_keys: int = 100_000,
        fraction: float = 1.0,
    ) -> None:
        self.algorithm = algorithm
        self.amount = amount  # rate/s (token bucket) or requests per window (sliding window)
        self.burst = burst or amount
        self.window = window
        self.fraction = fraction
        self.offered = 0  # requests seen since the last demand report
        self._impl: TokenBucket | SlidingWindow
        if algorithm == "token_bucket":
            self._impl = TokenBucket(amount * fraction, self.burst * fraction, max_keys)
        else:
            self._impl = SlidingWindow(amount * fraction, window, max_keys)

    def check(self, key: str, now: float, cost: float = 1.0) -> Decision:
        self.offered += 1
        decision = self._impl.check(key, now, cost)
        fraction = self.fraction
        if fraction == 1.0:
            return decision
        limit = self.burst if self.algorithm == "token_bucket" else self.amount
        remaining = min(int(limit), int(decision.remaining / fraction))
        return Decision(
            decision.allowed, int(limit), remaining, decision.reset, decision.retry_after
        )

    def take_offered(self) -> int:
        """Requests offered since the last call: the demand this worker reports."""
        count, self.offered = self.offered, 0
        return count

    def set_fraction(self, fraction: float, now: float) -> None:
        self.fraction = fraction
        if isinstance(self._impl, TokenBucket):
            self._impl.set_rate(self.amount * fraction, self.burst * fraction, now)
        else:
            self._impl.set_rate(self.amount * fraction, now)

    def __len__(self) -> int:
        return len(self._impl)


# --- tier-wide shares -------------------------------------------------------------------


def allocate(
    total: float,
    demands: Mapping[str, float],
    *,
    headroom: float = 1.2,
    floor: float = 0.05,
) -> dict[str, float]:
    """Max-min fair shares of ``total`` over workers' demands; the result sums to ``total``.

    Each worker first gets ``floor × total / n``; the rest is water-filled over the demands ×
    ``headroom``; whatever the demands leave is spread evenly, so an idle tier still admits
    a burst wherever it lands. Deterministic: workers are visited in sorted order."""
    workers = sorted(demands)
    n = len(workers)
    if n == 0:
        return {}
    base = floor * total / n
    shares = dict.fromkeys(workers, base)
    left = total - base * n
    wants = sorted((max(0.0, demands[w] * headroom - base), w) for w in workers)
    for i, (want, worker) in enumerate(wants):
        fair = left / (n - i)
        give = want if want < fair else fair
        shares[worker] += give
        left -= give
    if left > 0:
        for worker in workers:
            shares[worker] += left / n
    return shares


@dataclass
class _Report:
    demand: float
    at: float


class TierShare:
    """One worker's view of a policy's tier-wide allocation.

    Every ``period``: ``report(worker, demand, now)`` for each report read from the shared
    file/Store (its own included), then ``rebalance(now)`` → this worker's fraction of the
    configured limit, for ``RateLimiter.set_fraction``. The fraction in force is the smaller
    of this period's target and the last one: decreases apply at once, increases a period
    later, when every worker has applied the decreases that made room for them."""

    def __init__(
        self,
        worker: str,
        limit: float,
        *,
        initial_workers: int = 1,
        stale_after: float = 3.0,
        headroom: float = 1.2,
        floor: float = 0.05,
    ) -> None:
        self.worker = worker
        self.limit = limit  # the tier-wide rate, requests/s, in the unit demands come in
        self.stale_after = stale_after
        self.headroom = headroom
        self.floor = floor
        self.fraction = 1.0 / max(1, initial_workers)
        self._last_target = self.fraction
        self._reports: dict[str, _Report] = {}

    def report(self, worker: str, demand: float, now: float) -> None:
        self._reports[worker] = _Report(demand, now)

    def live_workers(self, now: float) -> list[str]:
        live = {w for w, r in self._reports.items() if now - r.at <= self.stale_after}
        live.add(self.worker)
        return sorted(live)

    def target(self, now: float) -> float:
        """The fraction the current reports allocate to this worker."""
        reports = self._reports
        demands = {w: reports[w].demand if w in reports else 0.0 for w in self.live_workers(now)}
        shares = allocate(self.limit, demands, headroom=self.headroom, floor=self.floor)
        return shares[self.worker] / self.limit if self.limit > 0 else 0.0

    def rebalance(self, now: float) -> float:
        target = self.target(now)
        self.fraction = min(target, self._last_target)
        self._last_target = target
        return self.fraction

    def demands(self, now: float) -> list[tuple[str, float]]:
        """Every live worker's reported demand (for metrics and the admin API)."""
        reports = self._reports
        return [(w, reports[w].demand if w in reports else 0.0) for w in self.live_workers(now)]
