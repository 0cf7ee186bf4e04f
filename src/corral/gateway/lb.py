"""Load-balancer pickers: given the routable endpoints of a pool, pick one for a request.

Theory of operation. An ``Endpoint`` is the per-worker record of one upstream address: its
weight, requests in flight (``active``) and a peak-EWMA latency. The proxy increments
``active`` when a try starts and decrements it when the try ends, and reports latencies with
``observe``. A picker reads those numbers and never changes them (except its own bookkeeping,
such as round-robin weights); randomness comes from the ``random.Random`` passed in, and time
from ``now`` arguments, so a seeded run replays exactly.

- ``round_robin``: nginx's smooth weighted round robin — each pick adds every endpoint's weight
  to its current value, takes the largest, and subtracts the total from it. Over any window of
  ``sum(weights)`` picks each endpoint is picked exactly ``weight`` times, spread evenly.
- ``least_request`` (default): power of two choices (Mitzenmacher; Envoy's LEAST_REQUEST) — two
  distinct random endpoints, the one with fewer in-flight requests per unit weight wins.
- ``ewma``: P2C on Finagle's peak EWMA cost, latency × (in flight + 1); the EWMA jumps up to a
  slow sample at once and decays towards fast ones with time constant ``tau``.
- ``ring_hash``: a consistent-hash ring (Karger et al.) of 160 points per unit weight; a key goes
  to the first point clockwise of its hash. ``maglev``: Google's Maglev lookup table (prime size,
  per-endpoint offset/skip permutations filled in turn), which moves fewer keys on changes and
  spreads them more evenly than a ring. Both apply *consistent hashing with bounded loads*
  (Mirrokni, Thorup, Zadimoghaddam 2017): an endpoint whose in-flight count has reached
  ceil(c × (total + 1) / n) is skipped and the next one along is tried, so one hot key cannot
  melt one instance. A key of None (no header, cookie…) falls back to P2C.

Hashes are blake2b, never Python's ``hash()`` (salted per process by PYTHONHASHSEED), so every
worker and every restart maps a key to the same endpoint.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from hashlib import blake2b
from random import Random
from typing import Protocol

__all__ = [
    "Endpoint",
    "EwmaP2C",
    "LeastRequestP2C",
    "Maglev",
    "Picker",
    "RingHash",
    "SmoothRoundRobin",
    "hash64",
    "make_picker",
]

DEFAULT_RTT = 0.001  # an endpoint with no sample yet is assumed this fast, so it gets tried


def hash64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


class Endpoint:
    """One upstream address as this worker sees it."""

    __slots__ = ("active", "address", "current", "ewma", "ewma_at", "host", "port", "weight")

    def __init__(self, address: str, weight: int = 1) -> None:
        self.address = address
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.weight = weight
        self.active = 0
        self.current = 0  # smooth round robin's running weight
        self.ewma = 0.0
        self.ewma_at = 0.0

    def observe(self, latency: float, now: float, tau: float = 10.0) -> None:
        """Peak EWMA: a slower sample is taken at once, faster ones blend in over ``tau``."""
        if latency > self.ewma:
            self.ewma = latency
        else:
            w = math.exp(-max(now - self.ewma_at, 0.0) / tau)
            self.ewma = self.ewma * w + latency * (1.0 - w)
        self.ewma_at = now

    def __repr__(self) -> str:
        return f"Endpoint({self.address!r}, weight={self.weight}, active={self.active})"


class Picker(Protocol):
    def pick(self, endpoints: Sequence[Endpoint], rng: Random, key: bytes | None) -> Endpoint:
        """Pick one of ``endpoints`` (never empty)."""
        ...


class SmoothRoundRobin:
    def pick(self, endpoints: Sequence[Endpoint], rng: Random, key: bytes | None) -> Endpoint:
        total = 0
        best = endpoints[0]
        best_current = -(1 << 62)
        for e in endpoints:
            e.current += e.weight
            total += e.weight
            if e.current > best_current:
                best, best_current = e, e.current
        best.current -= total
        return best


def _two(endpoints: Sequence[Endpoint], rng: Random) -> tuple[Endpoint, Endpoint]:
    n = len(endpoints)
    i = int(rng.random() * n)
    j = int(rng.random() * (n - 1))
    if j >= i:
        j += 1
    return endpoints[i], endpoints[j]


class LeastRequestP2C:
    def pick(self, endpoints: Sequence[Endpoint], rng: Random, key: bytes | None) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        a, b = _two(endpoints, rng)
        # Compare active/weight without division: a.active/a.weight <= b.active/b.weight.
        return a if a.active * b.weight <= b.active * a.weight else b


class EwmaP2C:
    def pick(self, endpoints: Sequence[Endpoint], rng: Random, key: bytes | None) -> Endpoint:
        if len(endpoints) == 1:
            return endpoints[0]
        a, b = _two(endpoints, rng)
        cost_a = (a.ewma or DEFAULT_RTT) * (a.active + 1) / a.weight
        cost_b = (b.ewma or DEFAULT_RTT) * (b.active + 1) / b.weight
        return a if cost_a <= cost_b else b


def _capacity(endpoints: Sequence[Endpoint], factor: float) -> int:
    total = sum(e.active for e in endpoints)
    return math.ceil(factor * (total + 1) / len(endpoints))


class _Hashing:
    """Shared by the hash pickers: rebuild when the endpoint list changes; bounded load."""

    def __init__(self, bounded_load: float) -> None:
        self.bounded_load = bounded_load
        self._for: Sequence[Endpoint] | None = None
        self._key: tuple[tuple[str, int], ...] = ()
        self._fallback = LeastRequestP2C()

    def _refresh(self, endpoints: Sequence[Endpoint]) -> None:
        if endpoints is self._for:
            return
        key = tuple((e.address, e.weight) for e in endpoints)
        if key != self._key:
            self._build(endpoints)
            self._key = key
        self._for = endpoints
        self._bind(endpoints)

    def _build(self, endpoints: Sequence[Endpoint]) -> None:
        raise NotImplementedError

    def _bind(self, endpoints: Sequence[Endpoint]) -> None:
        raise NotImplementedError


class RingHash(_Hashing):
    POINTS_PER_WEIGHT = 160

    def __init__(self, bounded_load: float = 1.25) -> None:
        super().__init__(bounded_load)
        self._hashes: list[int] = []
        self._owners: list[str] = []
        self._by_address: dict[str, Endpoint] = {}

    def _build(self, endpoints: Sequence[Endpoint]) -> None:
        points: list[tuple[int, str]] = []
        for e in endpoints:
            for i in range(self.POINTS_PER_WEIGHT * e.weight):
                points.append((hash64(f"{e.address}#{i}".encode()), e.address))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [a for _, a in points]

    def _bind(self, endpoints: Sequence[Endpoint]) -> None:
        self._by_address = {e.address: e for e in endpoints}

    def pick(self, endpoints: Sequence[Endpoint], rng: Random, key: bytes | None) -> Endpoint:
        if key is None or len(endpoints) == 1:
            return self._fallback.pick(endpoints, rng, key)
        self._refresh(endpoints)
        n = len(self._hashes)
        start = bisect_left(self._hashes, hash64(key)) % n
        capacity = _capacity(endpoints, self.bounded_load)
        seen: set[str] = set()
        first: Endpoint | None = None
        for step in range(n):
            address = self._owners[(start + step) % n]
            if address in seen:
                continue
            seen.add(address)
            e = self._by_address[address]
            if first is None:
                first = e
            if e.active < capacity:
                return e
            if len(seen) == len(endpoints):
                break
        assert first is not None
        return first


class Maglev(_Hashing):
    def __init__(self, bounded_load: float = 1.25, table_size: int = 4099) -> None:
        super().__init__(bounded_load)
        self.table_size = table_size  # a prime, well above 100 × endpoints for even spread
        self._table: list[str] = []
        self._by_address: dict[str, Endpoint] = {}

    def _build(self, endpoints: Sequence[Endpoint]) -> None:
        m = self.table_size
        perms: list[tuple[int, int]] = []
        for e in endpoints:
            digest = blake2b(e.address.encode(), digest_size=16).digest()
            offset = int.from_bytes(digest[:8], "little") % m
            skip = int.from_bytes(digest[8:], "little") % (m - 1) + 1
            perms.append((offset, skip))
        table: list[str | None] = [None] * m
        nexts = [0] * len(endpoints)
        filled = 0
        while filled < m:
            for i, e in enumerate(endpoints):
                for _ in range(e.weight):
                    offset, skip = perms[i]
                    slot = (offset + nexts[i] * skip) % m
                    while table[slot] is not None:
                        nexts[i] += 1
                        slot = (offset + nexts[i] * skip) % m
                    table[slot] = e.address
                    nexts[i] += 1
                    filled += 1
                    if filled == m:
                        break
                if filled == m:
                    break
        self._table = [a for a in table if a is not None]

    def _bind(self, endpoints: Sequence[Endpoint]) -> None:
        self._by_address = {e.address: e for e in endpoints}

    def pick(self, endpoints: Sequence[Endpoint], rng: Random, key: bytes | None) -> Endpoint:
        if key is None or len(endpoints) == 1:
            return self._fallback.pick(endpoints, rng, key)
        self._refresh(endpoints)
        m = len(self._table)
        h = hash64(key)
        capacity = _capacity(endpoints, self.bounded_load)
        first = self._by_address[self._table[h % m]]
        if first.active < capacity:
            return first
        # Over its bound: probe further slots with a second hash, as the paper's fallback.
        step = (h >> 32) % (m - 1) + 1
        for i in range(1, 4 * len(endpoints) + 1):
            e = self._by_address[self._table[(h + i * step) % m]]
            if e.active < capacity:
                return e
        return first


def make_picker(policy: str, bounded_load: float = 1.25) -> Picker:
    if policy == "round_robin":
        return SmoothRoundRobin()
    if policy == "ewma":
        return EwmaP2C()
    if policy == "ring_hash":
        return RingHash(bounded_load)
    if policy == "maglev":
        return Maglev(bounded_load)
    return LeastRequestP2C()
