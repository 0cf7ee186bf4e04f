"""Health of one running instance: startup, liveness and readiness probes as a pure machine.

Theory of operation (Kubernetes probe semantics, with Corral's readiness hysteresis):
- The **startup** probe, when declared, gates the other two: until it has succeeded
  ``success_threshold`` times in a row nothing else is probed; ``failure_threshold`` failures
  in a row kill the process (it then restarts or is replaced by the usual crash path).
- Once started the instance is ``ready`` (up, not yet routable). The **readiness** probe moves
  it to ``run`` after ``success_threshold`` successes; a ``run`` instance that fails readiness
  ``failure_threshold`` times in a row goes back to ``ready`` and re-enters ``run`` only after
  ``max(2, success_threshold)`` consecutive successes (hysteresis, so a flapping instance does
  not flap in routing). Without a readiness probe an instance is routable once its process has
  stayed up ``settle`` seconds (1 s).
- **Liveness** failures ``failure_threshold`` in a row kill the process.
- The machine never reads the clock: the adapter feeds ``now`` and probe results and executes
  the returned actions; ``next_due(now)`` says when the adapter should probe next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ProbeName = Literal["startup", "liveness", "readiness"]
PROBE_ORDER: tuple[ProbeName, ...] = ("startup", "liveness", "readiness")
SETTLE_SECONDS = 1.0
REENTRY_SUCCESSES = 2


@dataclass(frozen=True)
class ProbeTiming:
    period: float = 1.0
    timeout: float = 1.0
    failure_threshold: int = 3
    success_threshold: int = 1
    initial_delay: float = 0.0


@dataclass(frozen=True)
class Started:
    reason: str


@dataclass(frozen=True)
class Routable:
    reason: str


@dataclass(frozen=True)
class Unroutable:
    reason: str


@dataclass(frozen=True)
class Kill:
    reason: str


HealthAction = Started | Routable | Unroutable | Kill


@dataclass
class _Counter:
    successes: int = 0
    failures: int = 0
    last_detail: str = ""
    next_at: float = 0.0


@dataclass
class InstanceHealth:
    """One instance's probe state. ``probes`` maps declared probe names to their timing."""

    probes: dict[ProbeName, ProbeTiming]
    spawned_at: float
    started: bool = False
    routable: bool = False
    was_routable: bool = False
    killed: bool = False
    counters: dict[ProbeName, _Counter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in PROBE_ORDER:
            timing = self.probes.get(name)
            if timing is not None:
                self.counters[name] = _Counter(next_at=self.spawned_at + timing.initial_delay)
        if "startup" not in self.probes:
            self.started = True

    def initial_actions(self) -> list[HealthAction]:
        """Actions owed right after spawn (an instance without a startup probe is started).
        An instance re-adopted while routable owes none: it is past ``started`` already."""
        return [Started("process is up")] if self.started and not self.routable else []

    def active(self) -> list[ProbeName]:
        """The probes that should run now, in a fixed order."""
        if self.killed:
            return []
        if not self.started:
            return ["startup"]
        return [name for name in ("liveness", "readiness") if name in self.probes]

    def next_due(self, now: float) -> float:
        """When the adapter should next call ``due``/``tick`` (never in the past)."""
        times = [self.counters[name].next_at for name in self.active()]
        if self.started and not self.routable and "readiness" not in self.probes:
            times.append(self.spawned_at + SETTLE_SECONDS)
        return max(now, min(times)) if times else now + 3600.0

    def due(self, now: float) -> list[ProbeName]:
        return [name for name in self.active() if self.counters[name].next_at <= now]

    def tick(self, now: float) -> list[HealthAction]:
        """Time-based transitions: routable after settling when there is no readiness probe."""
        if (
            self.started
            and not self.routable
            and not self.killed
            and "readiness" not in self.probes
            and now - self.spawned_at >= SETTLE_SECONDS
        ):
            self.routable = self.was_routable = True
            return [Routable(f"process stayed up {SETTLE_SECONDS:g}s (no readiness probe)")]
        return []

    def observe(self, name: ProbeName, ok: bool, detail: str, now: float) -> list[HealthAction]:
        """Feed one probe result; returns what the adapter must do."""
        if self.killed or name not in self.counters or name not in self.active():
            return []
        timing = self.probes[name]
        counter = self.counters[name]
        counter.next_at = now + timing.period
        counter.last_detail = detail
        if ok:
            counter.successes += 1
            counter.failures = 0
        else:
            counter.failures += 1
            counter.successes = 0
        if name == "startup":
            return self._startup(timing, counter)
        if name == "liveness":
            if counter.failures >= timing.failure_threshold:
                self.killed = True
                return [Kill(f"liveness failed {counter.failures}× ({detail})")]
            return []
        return self._readiness(timing, counter)

    def _startup(self, timing: ProbeTiming, counter: _Counter) -> list[HealthAction]:
        if counter.successes >= timing.success_threshold:
            self.started = True
            for other in ("liveness", "readiness"):
                if other in self.counters:
                    self.counters[other].next_at = min(
                        self.counters[other].next_at, counter.next_at - timing.period
                    )
            return [Started("startup probe passed")]
        if counter.failures >= timing.failure_threshold:
            self.killed = True
            return [Kill(f"startup probe failed {counter.failures}× ({counter.last_detail})")]
        return []

    def _readiness(self, timing: ProbeTiming, counter: _Counter) -> list[HealthAction]:
        if self.routable:
            if counter.failures >= timing.failure_threshold:
                self.routable = False
                return [Unroutable(f"readiness failed {counter.failures}× ({counter.last_detail})")]
            return []
        needed = timing.success_threshold
        if self.was_routable:
            needed = max(REENTRY_SUCCESSES, needed)
        if counter.successes >= needed:
            self.routable = self.was_routable = True
            return [Routable(f"readiness passed {counter.successes}×")]
        return []
