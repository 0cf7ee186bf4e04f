"""Autoscale math: how many instances a service should run, given one metric and the time.

Theory of operation (the Kubernetes Horizontal Pod Autoscaler, ``replica_calculator.go`` and
``horizontal.go`` with their default ``behavior``; anchor: kubernetes.io "Horizontal Pod
Autoscaling", algorithm details and configurable scaling behavior):

1. **Bounds first.** A service scaled to 0 is not autoscaled (no instance, no metric; as the HPA
   does). A ``current`` count outside ``[min, max]`` is brought to the nearest bound at once,
   whatever the metric says.
2. **Missing metric → no change**, and the decision says so; the history is not touched (the
   HPA keeps its recommendations when metrics fail).
3. **The rule.** ``ratio = observed / target``; within ``tolerance`` (0.1) of 1 the count stays.
   Otherwise ``raw = ceil(ratio × measured)``, where ``measured`` is how many instances the
   observed average covers. When fewer instances were measured than ``current`` (some still
   starting, or not ready), the unmeasured ones count as 0 on the way up (a new instance that
   is not yet serving must not make the autoscaler scale again) and as the fallback on the way
   down (the target, or 100 % for cpu when that is higher); then ``raw = ceil(ratio' ×
   current)``, and a fill that flips the direction or lands within tolerance means no change.
   ``ceil`` ignores float noise below 1e-9 (1.4 / 0.7 × 3 is 6, not 7).
4. **Stabilisation.** Every raw recommendation is kept with its time. Scaling up uses the raw
   recommendation at once (no window); scaling down goes only as low as the *highest*
   recommendation within ``scale_down_window`` (default 300 s). A fresh state (first sight of a
   service, or after a control-plane restart) is seeded with ``current`` at ``now``, so a
   restart never causes an early scale-down.
5. **Rate limits**, from the changes made within each limit's period (the HPA's "period start"
   count: ``current − added + removed`` in the period): up to ``max(ceil(start × 2), start +
   4)`` per 15 s; down to ``start − 1`` per 60 s; and never beyond ``[min, max]``.

Invariants (checked by the property tests): the result is always within ``[min, max]`` when
``current`` is; a missing metric never changes the count; scaling out within 15 s never exceeds
the up limit; scaling in within 60 s never removes more than one instance; a metric that swings
around its target never scales in sooner than ``scale_down_window`` after it last asked for more.

Pure: no clock, no I/O. ``decide`` takes ``now`` and a ``State`` (mutated: it records the raw
recommendation); the caller calls ``State.scaled`` once it actually wrote a new count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["scale", "steady", "held", "missing", "disabled"]


@dataclass(frozen=True)
class Limits:
    """The HPA's default behaviour, with the scale-down rate Corral asks for (−1 per 60 s)."""

    tolerance: float = 0.1
    up_percent: float = 100.0  # per up_period, from the count at the period's start…
    up_instances: int = 4  # …or this many, whichever allows more
    up_period: float = 15.0
    down_instances: int = 1  # per down_period
    down_period: float = 60.0


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Policy:
    metric: str  # cpu | rps | latency_p95 (any name works: only cpu changes the fallback)
    target: float  # cpu: a fraction of the limit (0.7); rps per instance; latency in seconds
    min: int
    max: int
    scale_down_window: float = 300.0
    limits: Limits = DEFAULT_LIMITS


@dataclass
class State:
    """What the rule remembers about one service: recent raw recommendations (for the down
    window) and the changes it made (for the rate limits), each with its time."""

    recommendations: list[tuple[float, int]] = field(default_factory=list)
    changes: list[tuple[float, int]] = field(default_factory=list)  # (+n scale-out, −n in)
    seeded: bool = False

    def scaled(self, now: float, before: int, after: int) -> None:
        """Record a change that was written, for the rate limits."""
        if after != before:
            self.changes.append((now, after - before))

    def _prune(self, now: float, policy: Policy) -> None:
        keep = max(policy.limits.up_period, policy.limits.down_period)
        self.changes = [c for c in self.changes if now - c[0] < keep]
        self.recommendations = [
            r for r in self.recommendations if now - r[0] < policy.scale_down_window
        ]


@dataclass(frozen=True)
class Decision:
    """What to run and why, with the inputs, for the event users read."""

    desired: int
    current: int
    kind: Kind
    reason: str
    observed: float | None = None
    measured: int = 0
    raw: int | None = None  # the rule's recommendation before window, rate limits and bounds

    @property
    def changed(self) -> bool:
        return self.desired != self.current


def decide(
    policy: Policy,
    state: State,
    *,
    current: int,
    observed: float | None,
    measured: int,
    now: float,
) -> Decision:
    """The count ``policy`` asks for now (see the module docstring for the rule)."""
    state._prune(now, policy)
    if not state.seeded:
        state.recommendations.append((now, current))
        state.seeded = True
    if current == 0:
        return Decision(0, 0, "disabled", "scaled to 0: autoscaling resumes once it runs again")
    if current > policy.max:
        return Decision(policy.max, current, "scale", f"{current} is above max {policy.max}")
    if current < policy.min:
        return Decision(policy.min, current, "scale", f"{current} is below min {policy.min}")
    if observed is None or measured <= 0 or not math.isfinite(observed):
        return Decision(
            current,
            current,
            "missing",
            f"no {policy.metric} samples over {_count(current)}: no change",
            measured=measured,
        )
    inputs = (
        f"{policy.metric} {format_value(policy.metric, observed)} vs "
        f"{format_value(policy.metric, policy.target)} target over {_count(measured)}"
    )
    raw = recommend(policy, current=current, observed=observed, measured=measured)
    window = [count for at, count in state.recommendations if now - at < policy.scale_down_window]
    state.recommendations.append((now, raw))
    if raw == current:
        reason = f"{inputs} → {current} (within tolerance {policy.limits.tolerance:.0%})"
        return Decision(current, current, "steady", reason, observed, measured, raw)
    stable = raw
    if raw < current:
        stable = min(current, max([raw, *window]))
    desired, limit = _rate_limited(policy, state, current, stable, now)
    notes = []
    if stable == current != raw:
        notes.append(f"held at {stable} by the {policy.scale_down_window:g}s scale-down window")
    elif stable != raw:
        notes.append(f"the {policy.scale_down_window:g}s scale-down window allows {stable}")
    if limit:
        notes.append(limit)
    reason = f"{inputs} → {raw}" + (f"; {', '.join(notes)}" if notes else "")
    kind: Kind = "scale" if desired != current else "held"
    if kind == "scale" and desired != raw:
        reason += f": {current} → {desired}"
    return Decision(desired, current, kind, reason, observed, measured, raw)


def recommend(policy: Policy, *, current: int, observed: float, measured: int) -> int:
    """The HPA rule alone: tolerance, and unmeasured instances filled in (docstring, 3)."""
    tolerance = policy.limits.tolerance
    ratio = observed / policy.target
    if measured >= current:
        if abs(1.0 - ratio) <= tolerance:
            return current
        return _ceil(ratio * measured)
    missing = current - measured
    if ratio > 1.0:
        filled = observed * measured / current
    elif ratio < 1.0:
        fallback = max(policy.target, 1.0) if policy.metric == "cpu" else policy.target
        filled = (observed * measured + fallback * missing) / current
    else:
        return current
    new_ratio = filled / policy.target
    if abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0) != (new_ratio < 1.0):
        return current
    proposed = _ceil(new_ratio * current)
    if (new_ratio < 1.0 and proposed > current) or (new_ratio > 1.0 and proposed < current):
        return current
    return proposed


def _rate_limited(
    policy: Policy, state: State, current: int, stable: int, now: float
) -> tuple[int, str]:
    limits = policy.limits
    if stable > current:
        start = _period_start(state, current, now, limits.up_period)
        up = max(math.ceil(start * (1 + limits.up_percent / 100.0)), start + limits.up_instances)
        allowed = min(policy.max, max(up, current))
        if stable <= allowed:
            return stable, ""
        if allowed == policy.max and up >= policy.max:
            return allowed, f"bounded to max {policy.max}"
        return allowed, (
            f"limited to {allowed} (at most +{limits.up_percent:g} % or +{limits.up_instances} "
            f"per {limits.up_period:g}s)"
        )
    if stable < current:
        start = _period_start(state, current, now, limits.down_period)
        down = start - limits.down_instances
        allowed = max(policy.min, min(down, current))
        if stable >= allowed:
            return stable, ""
        if allowed == policy.min and down <= policy.min:
            return allowed, f"bounded to min {policy.min}"
        return allowed, (
            f"limited to {allowed} (at most −{limits.down_instances} per {limits.down_period:g}s)"
        )
    return stable, ""


def _period_start(state: State, current: int, now: float, period: float) -> int:
    """The count at the start of the period: current, minus what was added, plus what was
    removed within it."""
    return current - sum(change for at, change in state.changes if now - at < period)


def _ceil(value: float) -> int:
    return math.ceil(value - 1e-9)


def _count(n: int) -> str:
    return f"{n} instance" if n == 1 else f"{n} instances"


def format_value(metric: str, value: float) -> str:
    """How a metric's value reads in an event: ``91 %``, ``120 rps``, ``250ms``."""
    if metric == "cpu":
        return f"{value * 100:.0f} %"
    if metric == "latency_p95":
        return f"{value * 1000:.0f}ms" if value < 10 else f"{value:.1f}s"
    if metric == "rps":
        return f"{value:.4g} rps"
    return f"{value:.4g}"
