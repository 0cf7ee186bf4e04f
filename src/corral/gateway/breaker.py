"""Circuit breakers per route→service: closed / open / half-open over a sliding time window.

Theory of operation (Resilience4j's CircuitBreaker; h11's "the state machine is data").
Everything that moves a breaker lives in ``TRANSITIONS`` — ``(state, event) -> state`` — and
``docs/breaker.md`` is generated from it (``python -m corral.gateway.breaker_doc >
docs/breaker.md``; a test keeps the file equal), so the drawing cannot drift from the code.

- **closed**: every call passes. Results land in a sliding window of ``window`` seconds kept
  as ``buckets`` ring buckets (calls, errors, slow calls). Once the window holds at least
  ``min_calls`` calls, an error rate ≥ ``error_rate`` % fires ``error_rate_exceeded`` and a
  slow-call rate (calls that took ≥ ``slow_call_duration``) ≥ ``slow_call_rate`` % fires
  ``slow_rate_exceeded``; either opens the breaker.
- **open**: every call is refused (the proxy serves the route's fallback or a 503) until
  ``open_time`` has passed, then the next ``allow`` fires ``open_time_elapsed``. Each time a
  half-open trial fails the next open time doubles, up to ``max_open_time``; closing resets it.
- **half_open**: at most ``half_open_probes`` calls pass (the rest are refused). A failed or
  slow probe fires ``probe_failed`` (back to open); when all probes succeeded,
  ``probes_succeeded`` closes the breaker with an empty window.
- ``reset`` (the admin API) closes it from any state.

Outcomes are reported with ``record(ok, duration, now)``: ``ok`` is False for a connect
failure, a timeout or a 5xx — the proxy decides, as it does for outlier detection. Results
that arrive while open (calls admitted before it opened) are ignored. Every change returns a
``Transition`` (from, to, event, reason, at) for the proxy to export as a metric and an event.

Invariants: the state changes only through ``TRANSITIONS``; at most ``half_open_probes`` calls
are admitted per half-open period; outputs depend only on inputs (``now`` is passed in).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal, get_args

from corral.errors import CorralError

__all__ = [
    "EVENTS",
    "STATES",
    "TRANSITIONS",
    "BreakerSettings",
    "CircuitBreaker",
    "Transition",
    "render_markdown",
]

State = Literal["closed", "open", "half_open"]
Event = Literal[
    "error_rate_exceeded",
    "slow_rate_exceeded",
    "open_time_elapsed",
    "probe_failed",
    "probes_succeeded",
    "reset",
]
STATES: tuple[State, ...] = get_args(State)
EVENTS: tuple[Event, ...] = get_args(Event)

TRANSITIONS: dict[tuple[State, Event], State] = {
    ("closed", "error_rate_exceeded"): "open",
    ("closed", "slow_rate_exceeded"): "open",
    ("open", "open_time_elapsed"): "half_open",
    ("half_open", "probe_failed"): "open",
    ("half_open", "probes_succeeded"): "closed",
    **{(s, "reset"): "closed" for s in STATES},
}

EVENT_DESCRIPTIONS: dict[Event, str] = {
    "error_rate_exceeded": "the window holds ≥ min_calls calls and errors ≥ error_rate %",
    "slow_rate_exceeded": "the window holds ≥ min_calls calls and slow calls ≥ slow_call_rate %",
    "open_time_elapsed": "the open time passed; the next call is a probe",
    "probe_failed": "a half-open probe failed or was slow; the open time doubles",
    "probes_succeeded": "all half_open_probes probes succeeded; the window starts empty",
    "reset": "the admin API reset the breaker",
}


class BreakerMisuse(CorralError):
    """A caller fed an event the breaker table forbids: a bug in the caller, not the user."""

    code = "impossible_transition"
    status = 500


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    window: float = 10.0
    buckets: int = 10
    min_calls: int = 20
    error_rate: float = 50.0
    slow_call_duration: float = 5.0
    slow_call_rate: float = 100.0
    open_time: float = 30.0
    max_open_time: float = 300.0
    half_open_probes: int = 3


@dataclass(frozen=True, slots=True)
class Transition:
    source: State
    target: State
    event: Event
    reason: str
    at: float


class CircuitBreaker:
    """One breaker. ``allow(now)`` before a call; ``record(ok, duration, now)`` after it."""

    __slots__ = (
        "_bucket_width",
        "_calls",
        "_current",
        "_errors",
        "_ring",
        "_slow",
        "last_transition",
        "open_time",
        "opened_at",
        "probes_admitted",
        "probes_ok",
        "settings",
        "state",
    )

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self.state: State = "closed"
        self.opened_at = 0.0
        self.open_time = settings.open_time
        self.probes_admitted = 0
        self.probes_ok = 0
        self.last_transition: Transition | None = None
        self._bucket_width = settings.window / settings.buckets
        self._ring = [[0, 0, 0] for _ in range(settings.buckets)]  # calls, errors, slow
        self._current = -1  # absolute number of the newest bucket in use
        self._calls = self._errors = self._slow = 0

    # -- the table -------------------------------------------------------------------

    def _fire(self, event: Event, reason: str, now: float) -> Transition:
        source = self.state
        target = TRANSITIONS.get((source, event))
        if target is None:
            raise BreakerMisuse(
                f"breaker event {event!r} is impossible in state {source!r}",
                "see docs/breaker.md for the events each state allows",
            )
        self.state = target
        if target == "open":
            self.opened_at = now
            self.probes_admitted = self.probes_ok = 0
        elif target == "half_open":
            self.probes_admitted = self.probes_ok = 0
        else:
            self.open_time = self.settings.open_time
            self._clear()
        transition = Transition(source, target, event, reason, now)
        self.last_transition = transition
        return transition

    # -- the calls -------------------------------------------------------------------

    def allow(self, now: float) -> bool:
        """Whether a call may go upstream now (a half-open admission counts as a probe)."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            if now < self.opened_at + self.open_time:
                return False
            self._fire("open_time_elapsed", f"open for {self.open_time:g}s", now)
        if self.probes_admitted < self.settings.half_open_probes:
            self.probes_admitted += 1
            return True
        return False

    def record(self, ok: bool, duration: float, now: float) -> Transition | None:
        """The outcome of a call that ``allow`` admitted; returns the transition it caused."""
        state = self.state
        slow = duration >= self.settings.slow_call_duration
        if state == "closed":
            return self._record_closed(ok, slow, now)
        if state == "half_open":
            if not ok or slow:
                settings = self.settings
                reason = "probe failed" if not ok else f"probe took {duration:g}s"
                transition = self._fire("probe_failed", reason, now)
                self.open_time = min(self.open_time * 2, max(settings.max_open_time, 0.0))
                return transition
            self.probes_ok += 1
            if self.probes_ok >= self.settings.half_open_probes:
                return self._fire("probes_succeeded", f"{self.probes_ok} probes succeeded", now)
        return None

    def reset(self, now: float) -> Transition:
        return self._fire("reset", "reset through the admin API", now)

    def snapshot(self, now: float) -> dict[str, float | int | str]:
        """State and window counts, for metrics and the admin API."""
        self._advance(now)
        return {
            "state": self.state,
            "calls": self._calls,
            "errors": self._errors,
            "slow": self._slow,
            "open_time": self.open_time,
        }

    # -- the window ------------------------------------------------------------------

    def _clear(self) -> None:
        for bucket in self._ring:
            bucket[0] = bucket[1] = bucket[2] = 0
        self._calls = self._errors = self._slow = 0

    def _advance(self, now: float) -> list[int]:
        number = int(now / self._bucket_width)
        current = self._current
        ring = self._ring
        size = len(ring)
        if number != current:
            if number - current >= size or number < current:
                self._clear()
            else:
                for n in range(current + 1, number + 1):
                    old = ring[n % size]
                    self._calls -= old[0]
                    self._errors -= old[1]
                    self._slow -= old[2]
                    old[0] = old[1] = old[2] = 0
            self._current = number
        return ring[number % size]

    def _record_closed(self, ok: bool, slow: bool, now: float) -> Transition | None:
        bucket = self._advance(now)
        bucket[0] += 1
        self._calls += 1
        if not ok:
            bucket[1] += 1
            self._errors += 1
        if slow:
            bucket[2] += 1
            self._slow += 1
        settings = self.settings
        calls = self._calls
        if calls < settings.min_calls:
            return None
        if not ok and self._errors * 100.0 >= settings.error_rate * calls:
            reason = f"{self._errors} of {calls} calls failed in {settings.window:g}s"
            return self._fire("error_rate_exceeded", reason, now)
        if slow and self._slow * 100.0 >= settings.slow_call_rate * calls:
            reason = (
                f"{self._slow} of {calls} calls took ≥ {settings.slow_call_duration:g}s"
                f" in {settings.window:g}s"
            )
            return self._fire("slow_rate_exceeded", reason, now)
        return None


def render_markdown() -> str:
    """``docs/breaker.md``: a mermaid diagram and tables, generated from ``TRANSITIONS``."""
    lines = [
        "# Circuit breaker",
        "",
        "<!-- generated by `python -m corral.gateway.breaker_doc > docs/breaker.md`;"
        " do not edit by hand -->",
        "",
        "```mermaid",
        "stateDiagram-v2",
        "    [*] --> closed",
    ]
    for (source, event), target in TRANSITIONS.items():
        lines.append(f"    {source} --> {target}: {event}")
    lines += ["```", "", "| state | event | next state |", "|---|---|---|"]
    for state in STATES:
        for event in EVENTS:
            if (state, event) in TRANSITIONS:
                lines.append(f"| `{state}` | `{event}` | `{TRANSITIONS[(state, event)]}` |")
    lines += ["", "| event | when |", "|---|---|"]
    lines += [f"| `{e}` | {EVENT_DESCRIPTIONS[e]} |" for e in EVENTS]
    defaults = BreakerSettings()
    lines += [
        "",
        "Defaults: "
        + ", ".join(f"`{f.name}` {getattr(defaults, f.name):g}" for f in fields(defaults)),
        "",
    ]
    return "\n".join(lines)
