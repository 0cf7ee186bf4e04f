"""SWIM in the deterministic simulator: loss, duplication, reordering, partitions, extra loss on
one member, kills and restarts. No false deads while calm, every kill convicted everywhere
within the bound, views converged after healing. A failure prints its replay line."""

from __future__ import annotations

import statistics

import pytest

import corral.membership.swim as swim
from corral.sim.kv import SwimOptions, SwimResult, measure_kills, measure_lossy_member, run_swim


def sweep(seeds: range, options: SwimOptions) -> list[SwimResult]:
    results = [run_swim(seed, options) for seed in seeds]
    failures = [r for r in results if not r.ok]
    assert not failures, f"{len(failures)} seeds failed; first:\n{failures[0].report()}"
    return results


def test_five_members_survive_partitions_kills_and_loss_and_reconverge() -> None:
    results = sweep(range(20), SwimOptions())
    assert sum(r.kills for r in results) > 20
    assert all(r.converged_after >= 0 for r in results)


def test_ten_members_under_heavy_loss_duplication_and_reordering() -> None:
    sweep(range(6), SwimOptions(nodes=10, drop=0.1, duplicate=0.05, slow=0.1))


def test_a_kill_is_suspected_in_about_two_periods_and_dead_everywhere_in_seconds() -> None:
    figures = measure_kills(seed=3, nodes=8, kills=10)
    assert figures.false_dead == 0
    assert 1.0 <= statistics.mean(figures.first_suspicion) <= 2.5  # 1 s protocol period
    assert len(figures.dead_everywhere) == 10
    assert statistics.mean(figures.dead_everywhere) <= 7.0
    assert max(figures.dead_everywhere) <= 7.0


def test_no_false_dead_with_ten_percent_loss_on_one_member_for_five_minutes() -> None:
    assert measure_lossy_member(seed=1, nodes=8, loss=0.1, seconds=300.0) == 0


def test_same_seed_replays_the_same_run() -> None:
    first, again = run_swim(4, SwimOptions(drop=0.05)), run_swim(4, SwimOptions(drop=0.05))
    assert first.ok and (first.steps, first.events) == (again.steps, again.events)
    assert first.replay == "python -m corral.sim swim --seed 4 --drop 0.05"


def test_checker_catches_members_that_never_refute(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without refutation every suspicion ends in a conviction: a false dead while calm.
    monkeypatch.setattr(swim.Swim, "_refute", lambda self, accused, now: None)
    results = [run_swim(seed, SwimOptions(drop=0.1, kills=False)) for seed in range(4)]
    bad = [r for r in results if not r.ok]
    assert bad and "replay: python -m corral.sim swim --seed" in bad[0].report()
