"""Retry decisions: which requests may be retried, on what, and a budget so retries cannot
amplify an outage.

Theory of operation. A try that failed is retried only if all hold:

1. the method is idempotent (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE), or the
   route declares itself ``retryable``;
2. the failure is retryable: the connection could not be opened, was reset or timed out before
   any response byte, or the response was 502, 503 or 504 — and nothing of it has been sent to
   the client yet;
3. attempts remain (``attempts`` extra tries) and the overall deadline has not passed;
4. the request body is still held (bodies up to the retry buffer are kept while a try runs);
5. the **budget** allows it. The budget is Finagle's ``RetryBudget``: every request deposits
   ``percent / 100`` of a token and every retry withdraws one, plus a reserve of
   ``min_per_second`` tokens that refills with time so a quiet route can still retry. Tokens
   are capped, so a long healthy spell cannot bank a retry storm. Over any run, retries ≤
   percent/100 × requests + min_per_second × (elapsed + 1).

A retry goes to a different endpoint when the pool has one (the proxy excludes endpoints it
already tried).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

__all__ = ["IDEMPOTENT", "RETRYABLE_STATUS", "RetryBudget", "may_retry"]

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
RETRYABLE_STATUS: Final = frozenset({502, 503, 504})


def may_retry(method: str, route_retryable: bool, status: int | None) -> bool:
    """Whether a failed try of ``method`` may be retried; ``status`` None is a connect failure,
    reset or timeout before a response."""
    if not (route_retryable or method in IDEMPOTENT):
        return False
    return status is None or status in RETRYABLE_STATUS


@dataclass(slots=True)
class RetryBudget:
    percent: float = 20.0
    min_per_second: float = 3.0
    cap: float = 100.0
    _tokens: float = 0.0
    _reserve: float = 0.0
    _reserve_at: float | None = None
    _deposit: float = field(default=0.0, init=False)  # percent / 100, once: on every request

    def __post_init__(self) -> None:
        self._reserve = self.min_per_second  # a fresh route may retry at once
        self._deposit = self.percent / 100.0

    def on_request(self) -> None:
        """A first try was sent (retries do not deposit)."""
        tokens = self._tokens + self._deposit
        self._tokens = tokens if tokens < self.cap else self.cap

    def try_spend(self, now: float) -> bool:
        """Withdraw one retry if the budget has it."""
        if self._reserve_at is None:
            self._reserve_at = now
        elapsed = max(0.0, now - self._reserve_at)
        self._reserve = min(self.min_per_second, self._reserve + elapsed * self.min_per_second)
        self._reserve_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        if self._reserve >= 1.0:
            self._reserve -= 1.0
            return True
        return False
