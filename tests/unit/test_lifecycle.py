"""The lifecycle tables: instance phases, readiness hysteresis, service states, generated docs."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.control import lifecycle
from corral.control.lifecycle import (
    INSTANCE_TRANSITIONS,
    ImpossibleTransition,
    InstanceEvent,
    Readiness,
    ServiceFacts,
    next_phase,
    readiness_observed,
    service_state,
)
from corral.errors import CorralError
from corral.model import Phase

DOC = Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md"


def test_normal_start_goes_provision_ready_run() -> None:
    phase: Phase = lifecycle.INITIAL_PHASE
    events: list[InstanceEvent] = ["spawned", "started", "readiness_passed"]
    for event in events:
        phase = next_phase(phase, event)
    assert phase == "run"


def test_run_instance_that_fails_readiness_drops_to_ready_and_comes_back() -> None:
    assert next_phase("run", "readiness_failed") == "ready"
    assert next_phase("ready", "readiness_passed") == "run"


def test_crash_loop_shows_failed_and_is_still_restarted() -> None:
    assert next_phase("run", "exited_crash_looping") == "failed"
    assert next_phase("failed", "spawned") == "provision"


def test_completed_task_and_stopped_instance_end_in_destroy() -> None:
    assert next_phase("run", "task_completed") == "destroy"
    assert next_phase("provision", "stop_requested") == "destroy"
    assert next_phase("destroy", "stopped") == "destroy"


def test_destroy_is_final() -> None:
    assert lifecycle.allowed_events("destroy") == ["stopped"]


def test_impossible_transition_names_event_phase_instance_and_what_is_allowed() -> None:
    with pytest.raises(ImpossibleTransition) as info:
        next_phase("provision", "readiness_passed", subject="web-x7k2p")
    err = info.value
    assert isinstance(err, CorralError)
    assert "web-x7k2p" in err.message
    assert "'readiness_passed'" in err.message and "'provision'" in err.message
    assert "started" in err.hint and "docs/lifecycle.md" in err.hint


def test_every_phase_is_reachable_and_every_event_is_used() -> None:
    reached = {lifecycle.INITIAL_PHASE}
    frontier = [lifecycle.INITIAL_PHASE]
    while frontier:
        src = frontier.pop()
        for (p, _), dst in sorted(INSTANCE_TRANSITIONS.items()):
            if p == src and dst not in reached:
                reached.add(dst)
                frontier.append(dst)
    assert reached == set(lifecycle.PHASES)
    assert {e for _, e in INSTANCE_TRANSITIONS} == set(lifecycle.INSTANCE_EVENTS)
    assert set(lifecycle.EVENT_DESCRIPTIONS) == set(lifecycle.INSTANCE_EVENTS)


def test_every_live_phase_can_exit_and_be_stopped() -> None:
    phases: list[Phase] = ["provision", "ready", "run"]
    events: list[InstanceEvent] = ["exited_will_restart", "exited_crash_looping", "stop_requested"]
    for phase in phases:
        for event in events:
            assert lifecycle.can_transition(phase, event), (phase, event)


def _feed(phase: Phase, results: list[bool], threshold: int = 1) -> list[Phase]:
    state = Readiness()
    seen = []
    for passed in results:
        event, state = readiness_observed(phase, state, passed, threshold)
        if event is not None:
            phase = next_phase(phase, event)
        seen.append(phase)
    return seen


def test_first_readiness_success_enters_run() -> None:
    assert _feed("ready", [True]) == ["run"]


def test_success_threshold_applies_to_first_entry() -> None:
    assert _feed("ready", [True, True, True], threshold=3) == ["ready", "ready", "run"]


def test_readiness_needs_two_consecutive_successes_after_a_failure() -> None:
    # run, fail → ready, pass (1), fail (resets), pass, pass → run
    seen = _feed("run", [False, True, False, True, True])
    assert seen == ["ready", "ready", "ready", "ready", "run"]


def test_after_reentering_run_one_failure_demotes_again() -> None:
    seen = _feed("run", [False, True, True, True, False])
    assert seen == ["ready", "ready", "run", "run", "ready"]


def test_readiness_results_are_ignored_outside_ready_and_run() -> None:
    assert readiness_observed("provision", Readiness(), True) == (None, Readiness())


def _facts(**changes: Any) -> ServiceFacts:
    base = ServiceFacts(
        stopping=False, desired=3, counted=3, ready=3, failed=0, pending=False, was_running=True
    )
    return dataclasses.replace(base, **changes)


def test_service_states_follow_the_rules_in_order() -> None:
    assert service_state(_facts()) == "run"
    assert service_state(_facts(stopping=True, failed=1)) == "destroy"
    assert service_state(_facts(failed=1)) == "failed"
    assert service_state(_facts(counted=2, ready=2)) == "scale"
    assert service_state(_facts(ready=1, previous="scale")) == "scale"
    assert service_state(_facts(ready=1, previous="run")) == "provision"
    assert service_state(_facts(ready=0, counted=0, was_running=False)) == "provision"
    assert service_state(_facts(pending=True)) == "provision"


def test_committed_lifecycle_doc_matches_the_tables() -> None:
    assert DOC.read_text() == lifecycle.render_markdown(), (
        "docs/lifecycle.md is stale: run `python -m corral.control.lifecycle > docs/lifecycle.md`"
    )


def test_doc_is_printed_by_running_the_module() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "corral.control.lifecycle"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("# Lifecycle") and "stateDiagram-v2" in out
