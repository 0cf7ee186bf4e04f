"""The autoscale rule in the deterministic simulator: a service whose load changes, instances
that take a random time to start, an evaluation every period — a load step, a flapping metric
and missing metrics, with the rule's promises checked after every event.

The load is requests per second shared by the instances in ``run`` (the rps metric, per
instance, with ±5 % noise); a scale-out starts instances that are ready after 2–8 s; a
scale-in stops one at once. Seeds are swept; a failure names its seed and scenario."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.control.autoscale import Policy, State, decide
from corral.sim.core import Simulation

PERIOD = 15.0
START = (2.0, 8.0)  # seconds from scale-out to ready
POLICY = Policy(metric="rps", target=100.0, min=1, max=12, scale_down_window=300.0)


@dataclass
class Run:
    seed: int
    scenario: str
    sim: Simulation
    load: Callable[[float], float]
    missing: Callable[[float], bool] = lambda now: False
    desired: int = 1
    ready_at: list[float] = field(default_factory=lambda: [0.0])  # one entry per instance
    timeline: list[tuple[float, int]] = field(default_factory=lambda: [(-1e9, 1)])
    probed: dict[float, int] = field(default_factory=dict)  # time → instances ready
    decisions: list[tuple[float, str, int, int]] = field(default_factory=list)
    state: State = field(default_factory=State)

    def where(self) -> str:
        return f"seed {self.seed}, scenario {self.scenario!r}, t={self.sim.now:g}"

    def ready(self) -> int:
        return sum(1 for at in self.ready_at if at <= self.sim.now)

    def count_at(self, t: float) -> int:
        return [count for at, count in self.timeline if at <= t][-1]

    def evaluate(self) -> None:
        now = self.sim.now
        ready = self.ready()
        observed: float | None = None
        if ready and not self.missing(now):
            observed = self.load(now) / ready * self.sim.random.uniform(0.95, 1.05)
        decision = decide(
            POLICY,
            self.state,
            current=self.desired,
            observed=observed,
            measured=ready if observed is not None else 0,
            now=now,
        )
        self.decisions.append((now, decision.kind, decision.current, decision.desired))
        if observed is None:
            assert decision.desired == self.desired, (
                f"missing metric changed the count: {self.where()}"
            )
        if decision.changed:
            self.state.scaled(now, decision.current, decision.desired)
            self._resize(decision.desired)
        self.sim.schedule(PERIOD, self.evaluate)

    def _resize(self, desired: int) -> None:
        now = self.sim.now
        while len(self.ready_at) < desired:
            self.ready_at.append(now + self.sim.random.uniform(*START))
        # Scale-in removes the newest first (as the planner does for cattle).
        self.ready_at = sorted(self.ready_at)[:desired]
        self.desired = desired
        self.timeline.append((now, desired))

    def probe(self, at: float) -> None:
        self.probed[at] = self.ready()

    def check(self) -> None:
        """The rule's promises, after every event."""
        now = self.sim.now
        assert POLICY.min <= self.desired <= POLICY.max, self.where()
        start = self.count_at(now - POLICY.limits.up_period)
        assert self.desired <= max(2 * start, start + POLICY.limits.up_instances), self.where()
        assert self.desired >= self.count_at(now - POLICY.limits.down_period) - 1, self.where()


def simulate(
    seed: int,
    scenario: str,
    load: Callable[[float], float],
    until: float,
    missing: Callable[[float], bool] = lambda now: False,
    probes: tuple[float, ...] = (),
) -> Run:
    sim = Simulation(seed, engine="autoscale", scenario=scenario)
    run = Run(seed, scenario, sim, load, missing)
    for at in probes:
        sim.schedule(at, functools.partial(run.probe, at))
    # Evaluations start at a random phase within the first period, as after any restart.
    sim.schedule(sim.random.uniform(0.0, PERIOD), run.evaluate)
    sim.run_until(until, check=run.check)
    return run


# From the load step: two evaluation periods, plus the slowest start.
SERVED = 100.0 + 2 * PERIOD + START[1]


def test_a_load_step_is_served_within_two_periods_plus_start_time_and_scaled_back_in() -> None:
    for seed in range(40):
        run = simulate(
            seed,
            "step",
            lambda now: 400.0 if 100.0 <= now < 700.0 else 50.0,
            until=1400.0,
            probes=(SERVED,),
        )
        reached = next(at for at, _, _, desired in run.decisions if desired >= 4)
        assert 100.0 <= reached <= 100.0 + 2 * PERIOD, f"seed {seed}: reached 4 at {reached}"
        assert run.probed[SERVED] >= 4, f"seed {seed}: {run.probed[SERVED]} ready at {SERVED}"
        # Never below what the load needs (4) while it lasts, nor within the window after it.
        held_until = 700.0 + POLICY.scale_down_window - PERIOD
        during = [count for at, count in run.timeline if reached <= at < held_until]
        assert min(during) >= 4, f"seed {seed}: scaled in too early: {run.timeline}"
        assert run.desired == 1, f"seed {seed}: still {run.desired} at the end"


def test_a_flapping_metric_does_not_flap_the_scale() -> None:
    for seed in range(40):
        flips = Simulation(seed).random
        # Every 15–40 s the load jumps between far above and far below what 2 instances serve.
        edges: list[float] = []
        t = 0.0
        while t < 1800.0:
            t += flips.uniform(15.0, 40.0)
            edges.append(t)

        def load(now: float, edges: list[float] = edges) -> float:
            return 300.0 if sum(1 for e in edges if e <= now) % 2 == 0 else 20.0

        run = simulate(seed, "flapping", load, until=1800.0)
        counts = [count for _, count in run.timeline]
        directions = [b > a for a, b in itertools.pairwise(counts) if b != a]
        reversals = sum(1 for a, b in itertools.pairwise(directions) if a != b)
        # Up to what the peaks need (3), then at most one settling step down: never back up.
        assert reversals <= 1 and directions[0], f"seed {seed}: the count went {counts}"
        assert min(counts[1:]) >= 3, f"seed {seed}: the count went {counts}"


def test_missing_metrics_change_nothing_and_scaling_resumes_when_they_return() -> None:
    for seed in range(40):
        gaps = Simulation(seed).random
        lost = gaps.uniform(0.3, 0.7)
        marks = {round(i * 0.5, 1): gaps.random() < lost for i in range(0, 4000)}

        def missing(now: float, marks: dict[float, bool] = marks) -> bool:
            # A 200 s outage of the metric right when the load steps up, then random gaps.
            return 100.0 <= now < 300.0 or marks.get(round(now * 2) / 2, False)

        run = simulate(
            seed, "missing", lambda now: 500.0 if now >= 100.0 else 50.0, 1200.0, missing
        )
        during = [d for d in run.decisions if 100.0 <= d[0] < 300.0]
        assert during and all(
            kind == "missing" and before == after for _, kind, before, after in during
        )
        assert run.desired == 5, f"seed {seed}: {run.desired} instances for 500 rps at 100 each"
