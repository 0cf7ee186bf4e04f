"""The replicated control plane's pure decisions: when the controllers run, and how the
membership reads (peer lists, API URL order, transfer target, the status table)."""

from __future__ import annotations

import pytest

from corral.control.cluster_view import (
    MemberRecord,
    api_urls,
    parse_member,
    parse_peers,
    status_rows,
    transfer_target,
)
from corral.control.leadership import Act, Leadership
from corral.errors import UserError

# -- leadership ---------------------------------------------------------------------------


def test_controllers_start_only_after_leading_for_the_settle_time() -> None:
    machine = Leadership(settle=0.5)
    assert machine.observe(False, 0.0) is None
    assert machine.observe(True, 1.0) is None
    assert machine.observe(True, 1.4) is None
    assert machine.observe(True, 1.5) is Act.START
    machine.started()
    assert machine.observe(True, 9.0) is None


def test_controllers_stop_at_once_when_leadership_is_lost_even_mid_start() -> None:
    machine = Leadership(settle=0.0)
    assert machine.observe(True, 0.0) is Act.START
    assert machine.observe(False, 0.01) is Act.STOP  # start not even confirmed yet
    machine.stopped()
    assert machine.observe(False, 0.02) is None


def test_a_brief_loss_of_leadership_restarts_the_settle_wait() -> None:
    machine = Leadership(settle=0.5)
    machine.observe(True, 0.0)
    machine.observe(False, 0.3)
    assert machine.observe(True, 0.6) is None  # only 0 s into the new term
    assert machine.observe(True, 1.1) is Act.START


def test_a_failed_start_is_retried_after_a_pause_not_in_a_busy_loop() -> None:
    machine = Leadership(settle=0.0, retry_after=1.0)
    assert machine.observe(True, 0.0) is Act.START
    machine.start_failed(0.2)
    assert machine.observe(True, 0.5) is None
    assert machine.observe(True, 1.2) is Act.START


# -- membership -----------------------------------------------------------------------------


def test_peers_parse_into_ids_and_addresses() -> None:
    assert parse_peers("1=127.0.0.1:7001, 2=127.0.0.1:7002,3=h:7003") == {
        1: "127.0.0.1:7001",
        2: "127.0.0.1:7002",
        3: "h:7003",
    }
    assert parse_member("4=10.0.0.4:7004") == (4, "10.0.0.4:7004")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1=a:1,1=b:2", "names node 1 twice"),
        ("1=a:1,2=a:1", "the same address"),
        ("x=a:1", "positive integer id"),
        ("0=a:1", "positive integer id"),
        ("1=a", "not HOST:PORT"),
        ("1=a:99999", "not HOST:PORT"),
        ("", "empty"),
    ],
)
def test_a_bad_peer_list_is_refused_with_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(UserError) as caught:
        parse_peers(text)
    assert says in caught.value.message
    assert caught.value.hint


def test_api_urls_put_the_leader_first_then_the_others_by_id() -> None:
    members = {3: "http://c", 1: "http://a", 2: "http://b", 4: "http://a"}
    assert api_urls(members, leader=2) == ["http://b", "http://a", "http://c"]
    assert api_urls(members, leader=0) == ["http://a", "http://b", "http://c"]


def test_leadership_goes_to_the_most_caught_up_other_voter() -> None:
    assert transfer_target((1, 2, 3), 1, {1: 50, 2: 40, 3: 48}) == 3
    assert transfer_target((1, 2, 3), 1, {2: 48, 3: 48}) == 2
    assert transfer_target((1,), 1, {}) is None


def test_status_shows_unreachable_members_and_lag_behind_the_highest_commit() -> None:
    def view(node: int, role: str, applied: int, commit: int) -> dict[str, object]:
        return {
            "node": node,
            "role": role,
            "term": 4,
            "leader": 1,
            "commit": commit,
            "applied": applied,
            "voters": [1, 2, 3],
            "learners": [],
        }

    members = {i: MemberRecord(i, f"h:{7000 + i}", f"http://h:{8000 + i}") for i in (1, 2, 3)}
    rows = status_rows(
        {1: view(1, "leader", 90, 100), 2: view(2, "follower", 97, 99), 3: None}, members
    )
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert [r["lag"] for r in rows] == [10, 3, None]
    assert rows[2]["role"] == "unreachable"
    assert rows[2]["api"] == "http://h:8003"
    assert all(r["voter"] for r in rows)
