"""SLO arithmetic: error budget left and multi-window, multi-burn-rate alerts.

Theory of operation (Google SRE workbook, ch. 5 "Alerting on SLOs", §6 "Multiwindow,
multi-burn-rate alerts"). An objective says which fraction of requests must be *good*
(``target``, e.g. 0.999): for availability a request is bad when it failed, for latency when
it took longer than ``threshold_us`` (``latency: {p95: 300ms}`` reads "95 % of requests within
300 ms"). Over the SLO window the *error budget* is the number of bad requests the target
allows, ``(1 - target) × total``; the budget left is ``1 - bad / allowed`` (1.0 untouched, 0.0
spent, negative overspent; 1.0 when there was no traffic: nothing was spent).

The *burn rate* over a window is how fast the budget goes, relative to spending exactly all of
it over the SLO window: ``(bad / total) / (1 - target)`` — 1.0 spends the budget exactly at the
end of the window, 14.4 spends 2 % of a 30-day budget in one hour. An alert fires only when
both its long and its short window burn above its threshold (the long window makes it
significant, the short one makes it reset quickly once the fault is gone): *page* on 1 h and
5 min above 14.4, *ticket* on 6 h and 30 min above 6 (the workbook's table for a 30-day SLO).

Latency counts come from the rollups' fixed histogram (`rollup.BOUNDS_US`): requests in
buckets whose upper bound is at most the threshold are good; in the bucket holding the
threshold the good share is interpolated linearly (as Prometheus's ``histogram_quantile``
does), so thresholds on a bucket bound (300 ms is one) are exact. The open last bucket
(beyond 60 s) counts as bad.

Everything here is a pure function of counts: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from corral.telemetry.rollup import BOUNDS_US


class BurnAlert(NamedTuple):
    name: str
    long_s: int
    short_s: int
    threshold: float


PAGE = BurnAlert("page", 3600, 300, 14.4)
TICKET = BurnAlert("ticket", 6 * 3600, 1800, 6.0)
ALERTS: tuple[BurnAlert, ...] = (PAGE, TICKET)
BURN_WINDOWS_S: tuple[int, ...] = tuple(sorted({s for a in ALERTS for s in (a.long_s, a.short_s)}))


class Objective(NamedTuple):
    """One SLI target of a route: ``kind`` is ``availability`` or ``latency``."""

    kind: str
    target: float  # fraction of requests that must be good, 0 < target < 1
    threshold_us: int = 0  # latency: a request is good when it took at most this


class Tally(NamedTuple):
    total: float
    bad: float


class Counts(NamedTuple):
    """What the rollups hold for a route over one window."""

    calls: int
    errors: int
    hist: Sequence[int]


def good_within(hist: Sequence[int], threshold_us: int, bounds: Sequence[int] = BOUNDS_US) -> float:
    """Requests of `hist` that took at most `threshold_us` (interpolated in its bucket)."""
    good = 0.0
    lower = 0
    for i, n in enumerate(hist):
        if i >= len(bounds):  # the open last bucket: never known to be within
            break
        upper = bounds[i]
        if upper <= threshold_us:
            good += n
        else:
            if threshold_us > lower and n:
                good += n * (threshold_us - lower) / (upper - lower)
            break
        lower = upper
    return good


def tally(objective: Objective, counts: Counts) -> Tally:
    if objective.kind == "latency":
        total = float(sum(counts.hist))
        return Tally(total, max(0.0, total - good_within(counts.hist, objective.threshold_us)))
    return Tally(float(counts.calls), float(counts.errors))


def burn_rate(t: Tally, target: float) -> float:
    if t.total <= 0:
        return 0.0
    return (t.bad / t.total) / (1.0 - target)


def budget_left(t: Tally, target: float) -> float:
    allowed = (1.0 - target) * t.total
    if t.total <= 0:
        return 1.0
    return 1.0 - t.bad / allowed


class AlertState(NamedTuple):
    name: str
    long_s: int
    short_s: int
    threshold: float
    long_burn: float
    short_burn: float
    firing: bool


class Evaluation(NamedTuple):
    objective: Objective
    total: float  # requests in the SLO window
    bad: float
    budget_left: float
    burn: dict[int, float]  # window seconds → burn rate
    alerts: list[AlertState]


def evaluate(objective: Objective, window: Counts, recent: Mapping[int, Counts]) -> Evaluation:
    """`window`: the counts over the SLO window; `recent`: the counts over each of
    `BURN_WINDOWS_S` (a missing window counts as no traffic)."""
    whole = tally(objective, window)
    empty = Counts(0, 0, ())
    burn = {s: burn_rate(tally(objective, recent.get(s, empty)), objective.target)
            for s in BURN_WINDOWS_S}  # fmt: skip
    alerts = [
        AlertState(
            a.name,
            a.long_s,
            a.short_s,
            a.threshold,
            burn[a.long_s],
            burn[a.short_s],
            burn[a.long_s] > a.threshold and burn[a.short_s] > a.threshold,
        )
        for a in ALERTS
    ]
    return Evaluation(
        objective, whole.total, whole.bad, budget_left(whole, objective.target), burn, alerts
    )
