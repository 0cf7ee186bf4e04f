"""Time budgets of in-process plugins: when a plugin that keeps overrunning is disabled.

Theory of operation. In-process Python cannot be pre-empted, so a budget is not enforced
while a plugin runs: the gateway *measures* each call and feeds the duration here, with
``now``. The tracker keeps the last ``window`` verdicts (over budget or not) in a ring and a
running count of overruns, so each call is O(1). Invariants:

- ``overruns`` always equals the number of True entries among the last ``min(calls, window)``
  calls;
- the plugin is disabled on the first call after which ``overruns > max_over`` — so a single
  slow call (a cold import, a GC pause) never disables a plugin unless ``max_over`` is 0;
- disabling is sticky: only a reload (a new tracker) re-enables a plugin, so a flapping plugin
  cannot oscillate and every disabling is one event.

This is the "N of the last M" rule of circuit breakers with a count-based window
(resilience4j's COUNT_BASED sliding window), applied to latency instead of errors. No I/O, no
clock: the caller passes durations and ``now``.
"""

from __future__ import annotations

from dataclasses import dataclass

from corral.errors import UserError

__all__ = ["BudgetRule", "BudgetTracker", "Disabled"]


@dataclass(frozen=True, slots=True)
class BudgetRule:
    budget: float  # seconds one call may take
    window: int = 20  # the last N calls considered
    max_over: int = 5  # disabled when more than this many of them overran


@dataclass(frozen=True, slots=True)
class Disabled:
    """The verdict that turns a plugin off (for the event and the metric)."""

    overruns: int
    window: int
    budget: float
    last: float  # the duration of the call that tipped it
    at: float

    @property
    def reason(self) -> str:
        return (
            f"overran its {self.budget * 1000:g} ms budget in {self.overruns} of its last "
            f"{self.window} calls (last call {self.last * 1000:.2f} ms)"
        )


class BudgetTracker:
    """Counts overruns over the last ``rule.window`` calls of one plugin."""

    __slots__ = ("_next", "_ring", "calls", "disabled", "overruns", "rule")

    def __init__(self, rule: BudgetRule) -> None:
        if rule.window < 1 or rule.max_over < 0 or rule.budget <= 0:
            raise UserError(
                f"plugin budget rule {rule} is impossible",
                "use window ≥ 1, max_over ≥ 0 and a budget above 0",
            )
        self.rule = rule
        self._ring = [False] * rule.window
        self._next = 0
        self.calls = 0
        self.overruns = 0
        self.disabled: Disabled | None = None

    def record(self, duration: float, now: float) -> Disabled | None:
        """Account for one call; returns the verdict on the call that disables the plugin
        (once), else None."""
        if self.disabled is not None:
            return None
        over = duration > self.rule.budget
        ring, i = self._ring, self._next
        self.overruns += over - ring[i]
        ring[i] = over
        self._next = (i + 1) % len(ring)
        self.calls += 1
        if self.overruns > self.rule.max_over:
            self.disabled = Disabled(
                self.overruns, min(self.calls, len(ring)), self.rule.budget, duration, now
            )
            return self.disabled
        return None
