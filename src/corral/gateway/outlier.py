"""Passive outlier ejection and the choice of routable endpoints (with the panic threshold).

Theory of operation (Envoy's outlier detection, simplified to its two consecutive-failure
detectors). The proxy reports every finished try with ``record(address, outcome, now)``:
``"ok"`` (any response below 500), ``"5xx"`` (500-599) or ``"connect"`` (connect failure,
reset or timeout before a response). ``consecutive_5xx`` 5xx in a row, or
``consecutive_connect_failures`` connect failures in a row, eject the endpoint for
``base_ejection × times ejected`` (capped at ``max_ejection``) — unless that would leave more
than ``max_ejection_percent`` of the pool ejected, in which case the endpoint stays in (its
streak keeps counting, so it is ejected as soon as room frees up). As in Envoy, at least one
endpoint may always be ejected when the percentage is above zero. Every ``base_ejection`` an
endpoint spends un-ejected lowers its times-ejected by one, so an endpoint that recovered is
soon ejected for short spells again.

``routable(all, unhealthy, now)`` is what the picker may choose from: endpoints neither ejected
nor failing active checks. If that leaves fewer than ``panic_threshold`` % of the pool (or none),
the pool is in **panic** and every endpoint is routable: routing to all beats routing to none,
since a pool-wide failure usually means the checks, not the endpoints, are wrong.

``adopt(address, until, now)`` takes over an ejection decided by another worker of the same
gateway (the workers exchange them), under the same cap.

Invariants: no more than max(1, floor(pct × n / 100)) endpoints are ejected at once (for
pct > 0), adopted ejections included; ejections end by time alone; outputs depend only on
inputs (``now`` is passed in).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from corral.gateway.config import Outlier

__all__ = ["Ejection", "Outcome", "OutlierDetector", "routable"]

Outcome = Literal["ok", "5xx", "connect"]
T = TypeVar("T")


@dataclass
class _State:
    consecutive_5xx: int = 0
    consecutive_connect: int = 0
    times_ejected: int = 0
    ejected_until: float = 0.0
    decayed_at: float = 0.0


@dataclass(frozen=True)
class Ejection:
    address: str
    until: float
    reason: str
    times: int


@dataclass
class OutlierDetector:
    config: Outlier
    _states: dict[str, _State] = field(default_factory=dict)
    pool_size: int = 0

    def set_pool(self, addresses: Sequence[str]) -> None:
        """The pool's current members; state of departed endpoints is dropped."""
        self.pool_size = len(addresses)
        keep = {a: self._states[a] for a in addresses if a in self._states}
        self._states = keep

    def _state(self, address: str) -> _State:
        state = self._states.get(address)
        if state is None:
            state = self._states[address] = _State()
        return state

    def is_ejected(self, address: str, now: float) -> bool:
        state = self._states.get(address)
        return state is not None and state.ejected_until > now

    def ejected(self, now: float) -> list[str]:
        return sorted(a for a, s in self._states.items() if s.ejected_until > now)

    def ejected_until(self, address: str) -> float:
        state = self._states.get(address)
        return state.ejected_until if state is not None else 0.0

    def adopt(self, address: str, until: float, now: float) -> bool:
        """Take over an ejection another worker of the same gateway decided, so every worker
        stops sending to an endpoint once one of them has seen it fail. The cap on the ejected
        share still holds here; returns whether anything changed."""
        if until <= now:
            return False
        state = self._state(address)
        if state.ejected_until >= until:
            return False
        if state.ejected_until <= now and not self._room(now):
            return False
        state.ejected_until = until
        state.decayed_at = max(state.decayed_at, until)
        state.times_ejected = max(state.times_ejected, 1)
        state.consecutive_5xx = state.consecutive_connect = 0
        return True

    def next_change(self, now: float) -> float | None:
        """When the earliest current ejection ends (the caller refreshes routing then)."""
        ends = [s.ejected_until for s in self._states.values() if s.ejected_until > now]
        return min(ends) if ends else None

    def record(self, address: str, outcome: Outcome, now: float) -> Ejection | None:
        if outcome == "ok":
            known = self._states.get(address)
            if known is not None:
                known.consecutive_5xx = 0
                known.consecutive_connect = 0
            return None
        state = self._state(address)
        self._decay(state, now)
        if outcome == "5xx":
            state.consecutive_5xx += 1
            tripped = state.consecutive_5xx >= self.config.consecutive_5xx
            reason = f"{state.consecutive_5xx} consecutive 5xx"
        else:
            state.consecutive_connect += 1
            tripped = state.consecutive_connect >= self.config.consecutive_connect_failures
            reason = f"{state.consecutive_connect} consecutive connect failures"
        if not tripped or state.ejected_until > now or not self._room(now):
            return None
        state.times_ejected += 1
        duration = min(
            self.config.base_ejection * state.times_ejected,
            max(self.config.max_ejection, self.config.base_ejection),
        )
        state.ejected_until = now + duration
        state.decayed_at = state.ejected_until
        state.consecutive_5xx = 0
        state.consecutive_connect = 0
        return Ejection(address, state.ejected_until, reason, state.times_ejected)

    def _room(self, now: float) -> bool:
        pct = self.config.max_ejection_percent
        if pct <= 0:
            return False
        allowed = max(1, math.floor(pct * max(self.pool_size, 1) / 100.0))
        current = sum(1 for s in self._states.values() if s.ejected_until > now)
        return current < allowed

    def _decay(self, state: _State, now: float) -> None:
        if state.times_ejected == 0 or state.ejected_until > now:
            return
        periods = int((now - state.decayed_at) // self.config.base_ejection)
        if periods > 0:
            state.times_ejected = max(0, state.times_ejected - periods)
            state.decayed_at += periods * self.config.base_ejection


def routable(
    endpoints: Sequence[T],
    excluded: Collection[T],
    panic_threshold: float,
) -> tuple[list[T], bool]:
    """The endpoints a picker may choose from, and whether the pool is in panic.

    ``excluded`` holds endpoints ejected or failing active checks."""
    if not endpoints:
        return [], False
    healthy = [e for e in endpoints if e not in excluded]
    if not healthy or len(healthy) * 100.0 < panic_threshold * len(endpoints):
        return list(endpoints), True
    return healthy, False
