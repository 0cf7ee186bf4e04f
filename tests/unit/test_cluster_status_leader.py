"""`corral cluster status` names the leader even while the members' views disagree."""

from __future__ import annotations

from typing import Any

from corral.cli.cluster import leader_seen


def _row(node: int, term: int | None, leader: int | None) -> dict[str, Any]:
    return {"id": node, "term": term, "leader": leader}


def test_status_names_the_leader_seen_at_the_highest_term_when_views_disagree() -> None:
    # node 3 was cut off and still follows the old leader; 1 and 2 moved on to term 7
    rows = [_row(1, 7, 2), _row(2, 7, 2), _row(3, 5, 1)]
    assert leader_seen(rows) == (2, 7)


def test_a_candidate_at_a_newer_term_does_not_hide_the_known_leader() -> None:
    rows = [_row(1, 8, 0), _row(2, 7, 2), _row(3, None, None)]
    assert leader_seen(rows) == (2, 7)


def test_no_member_naming_a_leader_is_no_leader() -> None:
    assert leader_seen([_row(1, 4, 0), _row(2, None, None)]) == (None, 0)
