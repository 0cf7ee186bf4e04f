"""Unit behaviour of the Raft core that transcripts do not show well: timing, flow control,
durability across restarts, contract misuse, configuration presets."""

from __future__ import annotations

import random

import pytest

from corral.consensus import (
    DEFAULT,
    FAST,
    Config,
    Entry,
    InvalidRaftConfig,
    MemoryStorage,
    MessageType,
    ProposalDropped,
    RaftNode,
    RaftSafetyError,
    RaftStorageError,
    RaftUsageError,
    Role,
)
from corral.consensus.log import RaftLog
from tests.consensus.harness import Harness


def elected(nodes: int = 3, **config: object) -> Harness:
    h = Harness()
    h.run(f"add-nodes {nodes} " + " ".join(f"{k}={v}" for k, v in config.items()))
    h.run("campaign 1")
    h.run("stabilize")
    assert h.members[1].node.role == Role.LEADER
    return h


def test_presets_are_valid_and_bad_settings_are_refused_with_every_problem_named() -> None:
    assert DEFAULT.validate() is DEFAULT and FAST.validate() is FAST
    assert DEFAULT.election_timeout_seconds == pytest.approx((0.5, 1.0))
    assert FAST.election_timeout_seconds == pytest.approx((0.15, 0.3))
    with pytest.raises(InvalidRaftConfig) as caught:
        Config(election_ticks=2, heartbeat_ticks=1, lease_reads=True, check_quorum=False).validate()
    assert "election_ticks (2) must exceed" in caught.value.message
    assert "lease_reads needs check_quorum" in caught.value.message
    assert caught.value.hint


def test_election_timeouts_are_randomized_within_one_to_two_timeouts() -> None:
    seen = set()
    for seed in range(40):
        node = RaftNode(1, [1, 2, 3], DEFAULT, MemoryStorage(), random.Random(seed))
        timeout = node.randomized_election_timeout
        assert DEFAULT.election_ticks <= timeout < 2 * DEFAULT.election_ticks
        seen.add(timeout)
    assert len(seen) >= 5


def test_a_follower_campaigns_only_after_its_randomized_timeout() -> None:
    node = RaftNode(1, [1, 2, 3], DEFAULT, MemoryStorage(), random.Random(3))
    for _ in range(node.randomized_election_timeout - 1):
        node.tick()
    assert node.role == Role.FOLLOWER
    node.tick()
    role: Role = node.role
    assert role == Role.PRE_CANDIDATE and node.term == 0  # pre-vote keeps the term


def test_a_single_node_cluster_elects_itself_and_commits_alone() -> None:
    h = Harness()
    h.run("add-nodes 1")
    h.run("campaign 1")
    h.run("propose 1 solo")
    h.run("stabilize")
    assert h.members[1].node.role == Role.LEADER
    assert h.members[1].applied[-1] == "solo"


def test_term_and_vote_survive_a_restart_and_block_a_second_vote() -> None:
    h = Harness()
    h.run("add-nodes 3 pre-vote=false")
    h.run("campaign 1")
    h.run("stabilize")
    assert "term=1 vote=1" in h.run("restart 2")
    node2 = h.members[2].node
    assert (node2.term, node2.vote) == (1, 1)
    # a rival candidate of the same term gets no vote from the restarted node
    from corral.consensus import Message

    node2.step(Message(type=MessageType.VOTE, frm=3, to=2, term=1, index=9, log_term=9))
    replies = node2.ready().messages
    assert [m.reject for m in replies if m.type == MessageType.VOTE_RESP] == [True]


def test_pipelining_stops_at_max_inflight_messages_for_a_silent_follower() -> None:
    h = elected(max_inflight_msgs=3, max_size_per_msg=1)
    leader = h.members[1].node
    for i in range(10):
        leader.propose(f"e{i}".encode())
    rd = leader.ready()
    to2 = [m for m in rd.messages if m.to == 2 and m.type == MessageType.APP]
    assert len(to2) == 3
    assert all(len(m.entries) == 1 for m in to2)  # max bytes per message: one entry each


def test_ready_twice_without_advance_is_a_contract_error() -> None:
    h = elected()
    leader = h.members[1].node
    leader.propose(b"x")
    leader.ready()
    assert not leader.has_ready()
    with pytest.raises(RaftUsageError):
        leader.ready()


def test_proposals_without_a_leader_are_dropped_with_a_hint() -> None:
    node = RaftNode(1, [1, 2, 3], DEFAULT, MemoryStorage(), random.Random(1))
    with pytest.raises(ProposalDropped) as caught:
        node.propose(b"x")
    assert "knows no leader" in caught.value.message and caught.value.hint


def test_lease_reads_answer_without_a_heartbeat_round_only_with_a_fresh_quorum() -> None:
    h = elected(lease_reads="true")
    leader = h.members[1].node
    h.run("tick-heartbeat 1")
    h.run("stabilize")
    leader.read_index(b"lease")
    rd = leader.ready()
    assert [rs.context for rs in rd.read_states] == [b"lease"]
    assert not [m for m in rd.messages if m.type == MessageType.HEARTBEAT]
    leader.advance(rd)
    h.run("partition 1 | 2 3")
    for _ in range(leader.config.lease_ticks):
        leader.tick()
    leader.read_index(b"stale?")
    rd = leader.ready()
    assert not rd.read_states  # the lease ran out: falls back to a heartbeat round


def test_a_leader_never_overwrites_committed_entries() -> None:
    storage = MemoryStorage()
    log = RaftLog(storage, 1 << 20)
    log.append([Entry(1, 1), Entry(1, 2)])
    log.commit_to(2)
    with pytest.raises(RaftSafetyError):
        log.maybe_append(1, 1, 2, (Entry(2, 2),))


def test_storage_refuses_compaction_past_its_snapshot() -> None:
    storage = MemoryStorage()
    storage.append([Entry(1, 1), Entry(1, 2)])
    with pytest.raises(RaftStorageError) as caught:
        storage.compact(2)
    assert "create_snapshot first" in caught.value.hint


def test_a_leader_waiting_for_a_slow_disk_keeps_its_quorum_through_heartbeats() -> None:
    h = elected()
    leader = h.members[1].node
    followers = [h.members[2].node, h.members[3].node]
    # every disk hangs: each node holds its Ready of "x" un-advanced for three election timeouts
    leader.propose(b"x")
    for m in leader.ready().messages:
        h.members[m.to].node.step(m)
    for f in followers:
        assert f.ready().entries
    for _ in range(3 * h.config.election_ticks):
        leader.tick()
        for m in leader.take_urgent_messages():
            follower = h.members[m.to].node
            follower.step(m)
            for answer in follower.take_urgent_messages():
                leader.step(answer)
        for f in followers:
            f.tick()
    assert leader.role == Role.LEADER
    assert all(f.role == Role.FOLLOWER and f.lead == 1 for f in followers)


def test_heartbeats_sent_before_the_disk_answers_never_reveal_an_unpersisted_commit() -> None:
    h = elected()
    leader = h.members[1].node
    leader.propose(b"x")
    rd = leader.ready()  # the leader's write of "x" is in flight
    [app] = [m for m in rd.messages if m.type == MessageType.APP and m.to == 2]
    follower = h.members[2].node
    follower.step(app)
    ack = follower.ready()
    assert not follower.take_urgent_messages()  # an append ack waits for the follower's disk
    leader.step(next(m for m in ack.messages if m.type == MessageType.APP_RESP))
    entry = rd.entries[-1].index
    assert leader.log.committed == entry  # a majority counting the leader's unsynced copy
    for _ in range(h.config.heartbeat_ticks):
        leader.tick()
    beats = [m for m in leader.take_urgent_messages() if m.type == MessageType.HEARTBEAT]
    assert beats and all(m.commit < entry for m in beats)
    h.members[1].storage.append(rd.entries)
    leader.advance(rd)  # durable now: the next Ready's messages may reveal it
    for _ in range(h.config.heartbeat_ticks):
        leader.tick()
    assert any(m.commit == entry for m in leader.ready().messages if m.to == 2)
