"""Retention and downsampling of the embedded time series (pure: takes ``now``, returns plans).

Theory of operation. A series is kept in **tiers**, finest first: by default 10 s points for
24 h, 1 min points for 7 days, 1 h points for 90 days (Prometheus's and Graphite's
"retentions" in one line: ``10s:24h,1m:7d,1h:90d``). A point is an **aggregate** of the raw
samples in its bucket — count, sum, min, max and the last value — so downsampling is exact
for every aggregation a query asks for (avg = sum/count; a counter's ``last`` stays a counter)
and merging two points is associative (``merge``).

Invariants (checked by ``validate``):
- each tier's resolution is a whole multiple of the previous one's, and it is kept longer, so a
  coarse bucket is the union of whole fine buckets and is computed before they are dropped;
- a tier's bucket is **final** once every finer point in it can no longer change: tier 1's
  buckets ending at or before ``now - resolution(tier 0)`` (a sample of the last fine bucket
  arrives at most one fine step late), tier i's (i ≥ 2) buckets ending at or before tier i-1's
  watermark. Each coarse bucket is computed once, from complete data, and never revisited;
- ``plan`` rolls up before it prunes (the source is pruned only once its buckets are in the
  coarser tier), and never rolls up a bucket older than the target tier keeps, so the work
  after a long outage is bounded;
- a query reads the coarsest tier whose resolution fits its step and whose retention reaches
  back to ``since``; the part after that tier's watermark (not yet rolled up) is read from the
  finer tiers (``segments``), so the newest points are never missing from a long view;
- an SLO window longer than the longest retention is refused (``window_problem``).

Times are integer seconds since the epoch; buckets are aligned on multiples of their size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal, NamedTuple

from corral.errors import UserError

__all__ = [
    "AGGREGATIONS",
    "DEFAULT_TIERS",
    "Agg",
    "Plan",
    "Point",
    "Prune",
    "Rollup",
    "Tier",
    "bucket",
    "choose",
    "downsample",
    "format_tiers",
    "merge",
    "parse_tiers",
    "plan",
    "segments",
    "validate",
    "values",
    "window_problem",
]

Agg = Literal["avg", "min", "max", "sum", "count", "last", "rate"]
AGGREGATIONS: tuple[str, ...] = ("avg", "min", "max", "sum", "count", "last", "rate")


@dataclass(frozen=True)
class Tier:
    resolution_s: int
    keep_s: int


DEFAULT_TIERS = (Tier(10, 86_400), Tier(60, 7 * 86_400), Tier(3600, 90 * 86_400))


class Point(NamedTuple):
    """The aggregate of the raw samples in one bucket starting at ``ts``."""

    ts: int
    n: int  # samples
    total: float
    lo: float
    hi: float
    last: float


@dataclass(frozen=True)
class Rollup:
    """Compute tier ``target``'s buckets in [start, end) from tier ``target - 1``."""

    target: int
    start: int
    end: int


@dataclass(frozen=True)
class Prune:
    """Drop tier ``tier``'s points older than ``before``."""

    tier: int
    before: int


@dataclass(frozen=True)
class Plan:
    rollups: tuple[Rollup, ...]
    prunes: tuple[Prune, ...]
    watermarks: tuple[int, ...]  # per tier: buckets ending at or before it are final


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_SPAN = re.compile(r"^(\d+)([smhdw])$")


def _seconds(text: str, where: str) -> int:
    found = _SPAN.match(text.strip())
    if not found or int(found.group(1)) <= 0:
        raise UserError(
            f"metrics retention {where}: {text!r} is not a duration",
            "write a whole number and a unit s, m, h, d or w, like 10s:24h,1m:7d,1h:90d",
        )
    return int(found.group(1)) * _UNITS[found.group(2)]


def parse_tiers(text: str) -> tuple[Tier, ...]:
    """``"10s:24h,1m:7d,1h:90d"`` → tiers (validated)."""
    tiers: list[Tier] = []
    for i, part in enumerate(p for p in text.split(",") if p.strip()):
        resolution, sep, keep = part.partition(":")
        if not sep:
            raise UserError(
                f"metrics retention tier {i + 1} {part.strip()!r} has no ':'",
                "write RESOLUTION:KEEP per tier, like 10s:24h,1m:7d,1h:90d",
            )
        where = f"tier {i + 1}"
        tiers.append(Tier(_seconds(resolution, where), _seconds(keep, where)))
    problem = validate(tiers)
    if problem:
        raise UserError(f"metrics retention {text!r}: {problem}", _TIERS_HINT)
    return tuple(tiers)


def _human(seconds: int) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def format_tiers(tiers: Sequence[Tier]) -> str:
    return ",".join(f"{_human(t.resolution_s)}:{_human(t.keep_s)}" for t in tiers)


_TIERS_HINT = "finest first; each resolution a multiple of the previous, each kept longer"


def validate(tiers: Sequence[Tier]) -> str:
    """What is wrong with ``tiers`` ("" when nothing is)."""
    if not tiers:
        return "at least one tier is needed"
    for i, tier in enumerate(tiers):
        if tier.resolution_s <= 0 or tier.keep_s < tier.resolution_s:
            return f"tier {i + 1} keeps less than one point"
        if i == 0:
            continue
        previous = tiers[i - 1]
        if tier.resolution_s <= previous.resolution_s or tier.resolution_s % previous.resolution_s:
            return (
                f"tier {i + 1}'s resolution {_human(tier.resolution_s)} is not a larger "
                f"multiple of tier {i}'s {_human(previous.resolution_s)}"
            )
        if tier.keep_s <= previous.keep_s:
            return f"tier {i + 1} is not kept longer than tier {i}"
    return ""


def window_problem(window_s: float, tiers: Sequence[Tier]) -> str:
    """Why an SLO window cannot be measured from what is kept ("" when it can)."""
    longest = max(t.keep_s for t in tiers)
    if window_s > longest:
        return (
            f"window {_human(int(window_s))} is longer than the metrics are kept "
            f"({_human(longest)}, retention {format_tiers(tiers)})"
        )
    return ""


def bucket(ts: int, size: int) -> int:
    return ts // size * size


def plan(now: int, tiers: Sequence[Tier], watermarks: Sequence[int]) -> Plan:
    """What to roll up and prune at ``now``, given each tier's watermark (0: none yet)."""
    marks = [*watermarks, *([0] * (len(tiers) - len(watermarks)))][: len(tiers)]
    marks[0] = now  # raw points are written directly; tier 0 has nothing to roll up
    rollups: list[Rollup] = []
    for i in range(1, len(tiers)):
        size = tiers[i].resolution_s
        source_ready = now - tiers[0].resolution_s if i == 1 else marks[i - 1]
        upto = bucket(source_ready, size)
        # Buckets the target would drop at once are not worth computing (after an outage).
        start = max(marks[i], bucket(now - tiers[i].keep_s, size))
        if upto > start:
            rollups.append(Rollup(i, start, upto))
        marks[i] = max(marks[i], upto)
    prunes = tuple(Prune(i, now - t.keep_s) for i, t in enumerate(tiers))
    return Plan(tuple(rollups), prunes, tuple(marks))


def merge(points: Iterable[Point], ts: int) -> Point | None:
    """One point from many (in time order), stamped ``ts``; None for no points."""
    count = 0
    total = 0.0
    lo = float("inf")
    hi = float("-inf")
    last = 0.0
    for p in points:
        count += p.n
        total += p.total
        lo = min(lo, p.lo)
        hi = max(hi, p.hi)
        last = p.last
    if not count:
        return None
    return Point(ts, count, total, lo, hi, last)


def downsample(points: Sequence[Point], size: int) -> list[Point]:
    """Points (in time order) merged into buckets of ``size`` seconds."""
    groups: dict[int, list[Point]] = {}
    for p in points:
        groups.setdefault(bucket(p.ts, size), []).append(p)
    out = [merge(group, ts) for ts, group in groups.items()]
    return [p for p in out if p is not None]


def choose(now: int, since: int, step: int, tiers: Sequence[Tier]) -> tuple[int, int]:
    """(tier index, effective step): the coarsest tier that resolves ``step`` and still holds
    ``since``; the step is raised to a multiple of that tier's resolution."""
    covering = [i for i, t in enumerate(tiers) if now - t.keep_s <= since] or [len(tiers) - 1]
    fitting = [i for i in covering if tiers[i].resolution_s <= max(step, 1)]
    index = max(fitting) if fitting else min(covering)
    resolution = tiers[index].resolution_s
    return index, max(resolution, -(-max(step, 1) // resolution) * resolution)


def segments(
    index: int, since: int, until: int, watermarks: Sequence[int]
) -> list[tuple[int, int, int]]:
    """(tier, start, end) ranges to read for [since, until): tier ``index`` up to its
    watermark, then each finer tier up to its own, tier 0 for the rest."""
    out: list[tuple[int, int, int]] = []
    start = since
    for tier in range(index, -1, -1):
        end = until if tier == 0 else min(until, watermarks[tier] if tier < len(watermarks) else 0)
        if end > start:
            out.append((tier, start, end))
            start = end
    return out


def values(points: Sequence[Point], agg: str, step: int) -> list[tuple[int, float]]:
    """(ts, value) per point under ``agg``; ``rate`` is the per-second increase of a counter's
    last value between consecutive points, a drop read as a counter reset (Prometheus's rule)."""
    if agg == "rate":
        out: list[tuple[int, float]] = []
        for before, after in pairwise(points):
            gap = after.ts - before.ts
            if gap <= 0 or gap > 2 * step:
                continue  # a hole in the series is no evidence of a rate
            increase = after.last - before.last if after.last >= before.last else after.last
            out.append((after.ts, increase / gap))
        return out
    if agg not in AGGREGATIONS:
        raise UserError(f"unknown aggregation {agg!r}", f"use one of {', '.join(AGGREGATIONS)}")
    return [(p.ts, _pick(p, agg)) for p in points]


def _pick(p: Point, agg: str) -> float:
    if agg == "avg":
        return p.total / p.n
    if agg == "min":
        return p.lo
    if agg == "max":
        return p.hi
    if agg == "sum":
        return p.total
    if agg == "count":
        return float(p.n)
    return p.last
