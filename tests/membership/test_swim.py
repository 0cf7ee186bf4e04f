"""The SWIM core on an in-memory network with instant delivery and a hand-driven clock.

References: SWIM (Das et al. 2002) §4 for probes and suspicion; Lifeguard (Dadgar et al. 2018)
§4 for local health and dynamic suspicion; hashicorp/memberlist for the details."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.membership import (
    LAN,
    LOCAL,
    PRESETS,
    TEST,
    Ack,
    Alive,
    Config,
    Dead,
    Gossip,
    IndirectPing,
    InvalidMembershipConfig,
    Nack,
    Ping,
    State,
    Suspect,
    Swim,
    retransmit_limit,
    suspicion_timeout,
)


class Cluster:
    """Members on a lossless instant network; ``cut`` blocks directed links."""

    def __init__(self, names: list[str], config: Config = LAN, join: bool = True) -> None:
        self.now = 0.0
        self.cut: set[tuple[str, str]] = set()
        self.down: set[str] = set()
        self.members = {
            n: Swim(n, n, config, random.Random(i), 0.0, role="kv", tags={"zone": f"z{i % 2}"})
            for i, n in enumerate(names)
        }
        if join:
            for n in names[1:]:
                self.members[n].join([names[0]], 0.0)
        self.flush()

    def flush(self) -> None:
        for _ in range(10_000):
            moved = False
            for name in sorted(self.members):
                if name in self.down:
                    self.members[name].take_outbox()
                    continue
                for out in self.members[name].take_outbox():
                    moved = True
                    if (name, out.to) in self.cut or out.to in self.down:
                        continue
                    self.members[out.to].receive(out.message, self.now)
            if not moved:
                return
        raise AssertionError("messages never stopped")

    def run(self, seconds: float, step: float = 0.05) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = round(self.now + step, 6)
            for name in sorted(self.members):
                if name not in self.down:
                    self.members[name].tick(self.now)
            self.flush()

    def state(self, observer: str, subject: str) -> State:
        m = self.members[observer].member(subject)
        assert m is not None
        return m.state


NAMES = ["a", "b", "c", "d", "e"]


def test_members_joining_through_one_seed_learn_everyone_and_their_metadata() -> None:
    c = Cluster(NAMES)
    c.run(2.0)
    for name in NAMES:
        view = c.members[name].members()
        assert [m.name for m in view] == NAMES
        assert all(m.state == State.ALIVE for m in view)
        assert view[3].role == "kv" and view[3].tag("zone") == "z1"


def test_a_killed_member_is_suspected_then_declared_dead_everywhere() -> None:
    c = Cluster(NAMES)
    c.run(2.0)
    c.down.add("e")
    c.run(3.5)
    assert any(c.state(n, "e") == State.SUSPECT for n in "abcd")
    c.run(20.0)
    assert all(c.state(n, "e") == State.DEAD for n in "abcd")
    assert all(c.state(n, x) == State.ALIVE for n in "abcd" for x in "abcd")


def test_a_suspected_member_refutes_with_a_higher_incarnation() -> None:
    c = Cluster(NAMES)
    c.run(1.0)
    before = c.members["b"].incarnation
    c.members["a"].receive(Gossip("x", (Suspect("b", before, "c"),)), c.now)
    assert c.state("a", "b") == State.SUSPECT
    c.run(1.5)
    assert c.members["b"].incarnation == before + 1
    assert all(c.state(n, "b") == State.ALIVE for n in NAMES)
    assert c.members["b"].health_score >= 0  # refuting counts against b's own health


def test_indirect_probes_keep_a_member_alive_when_only_the_direct_link_fails() -> None:
    c = Cluster(NAMES)
    c.run(2.0)
    c.cut |= {("a", "b"), ("b", "a")}
    c.run(30.0)
    assert c.state("a", "b") == State.ALIVE and c.state("b", "a") == State.ALIVE
    assert c.members["a"].stats["probe_failures"] == 0


def test_suspicion_timeout_shrinks_with_each_independent_confirmation() -> None:
    # memberlist's remainingSuspicionTime with min 4 s, max 24 s, k = 2
    assert suspicion_timeout(0, 2, 4.0, 24.0) == 24.0
    assert 11.0 < suspicion_timeout(1, 2, 4.0, 24.0) < 12.0
    assert suspicion_timeout(2, 2, 4.0, 24.0) == 4.0
    assert suspicion_timeout(5, 2, 4.0, 24.0) == 4.0
    assert suspicion_timeout(0, 0, 4.0, 24.0) == 4.0  # too few members to expect confirmations


def test_a_lone_suspicion_takes_the_long_timeout_and_confirmations_cut_it() -> None:
    c = Cluster(NAMES)
    c.run(1.0)
    c.down.add("e")  # e cannot refute
    inc = c.members["e"].incarnation
    a = c.members["a"]
    a.receive(Gossip("b", (Suspect("e", inc, "b"),)), c.now)
    start = c.now
    a.take_outbox()
    assert a.deadline() <= start + 24.0
    a.receive(Gossip("c", (Suspect("e", inc, "c"),)), c.now)
    a.receive(Gossip("d", (Suspect("e", inc, "d"),)), c.now)
    assert a.deadline() <= start + 4.0
    a.tick(start + 4.0)
    assert c.state("a", "e") == State.DEAD


def test_a_member_that_loses_its_own_packets_slows_its_probing() -> None:
    c = Cluster(NAMES)
    c.run(2.0)
    c.cut |= {("a", x) for x in NAMES} | {(x, "a") for x in NAMES}
    c.run(10.0)
    a = c.members["a"]
    assert a.health_score >= 3  # its probes fail and no nacks come back
    assert all(c.members[n].health_score == 0 for n in "bcde")
    probes = a.stats["probes"]
    c.run(10.0)
    assert a.stats["probes"] - probes <= 3  # at score >= 3, one probe per >= 4 s


def test_updates_are_retransmitted_lambda_log_n_times() -> None:
    assert retransmit_limit(4, 10) == 8
    assert retransmit_limit(4, 1000) == 16
    c = Cluster(NAMES)
    c.run(3.0)
    a = c.members["a"]
    a.update_metadata(c.now, tags={"zone": "moved"})
    assert a.pending_broadcasts() == 1
    c.run(3.0)
    assert a.pending_broadcasts() == 0
    assert all(c.members[n].member("a").tag("zone") == "moved" for n in NAMES)  # type: ignore[union-attr]


def test_a_restarted_member_comes_back_with_a_higher_incarnation_via_push_pull() -> None:
    c = Cluster(NAMES, TEST)
    c.run(1.0)
    c.down.add("c")
    c.run(10.0)
    assert c.state("a", "c") == State.DEAD
    dead_incarnation = c.members["a"].member("c").incarnation  # type: ignore[union-attr]
    c.members["c"] = Swim("c", "c", TEST, random.Random(9), c.now)
    c.down.discard("c")
    c.members["c"].join(["a"], c.now)
    c.run(3.0)
    assert c.members["c"].incarnation > dead_incarnation
    assert all(c.state(n, x) == State.ALIVE for n in NAMES for x in NAMES)


def test_halves_of_a_healed_partition_find_each_other_again() -> None:
    c = Cluster(NAMES, TEST)
    c.run(1.0)
    left, right = ["a", "b"], ["c", "d", "e"]
    c.cut = {(x, y) for x in left for y in right} | {(y, x) for x in left for y in right}
    c.run(15.0)
    assert c.state("a", "c") == State.DEAD and c.state("c", "a") == State.DEAD
    c.cut = set()
    c.run(3 * TEST.reconnect_interval + 2.0)
    assert all(c.state(n, x) == State.ALIVE for n in NAMES for x in NAMES)


def test_a_member_that_leaves_is_marked_left_not_dead() -> None:
    c = Cluster(NAMES)
    c.run(2.0)
    c.members["d"].leave(c.now)
    c.flush()
    c.run(2.0)
    assert all(c.state(n, "d") == State.LEFT for n in "abce")


def test_presets_follow_memberlist_and_the_validator_names_every_problem() -> None:
    assert (LAN.probe_interval, LAN.probe_timeout, LAN.indirect_checks) == (1.0, 0.5, 3)
    assert (LAN.suspicion_mult, LAN.gossip_nodes, LAN.gossip_interval) == (4, 3, 0.2)
    assert LAN.push_pull_interval == 30.0
    assert LOCAL.probe_timeout < LAN.probe_timeout and TEST.probe_interval < LAN.probe_interval
    assert set(PRESETS) == {"lan", "local", "test"}
    with pytest.raises(InvalidMembershipConfig) as err:
        LAN.with_(probe_timeout=2.0, gossip_nodes=0)
    assert "probe_timeout" in err.value.message and "gossip_nodes" in err.value.message
    assert err.value.hint


_RANK = {Alive: 0, Suspect: 1, Dead: 2}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([Alive, Suspect, Dead]), st.integers(0, 4)),
        min_size=1,
        max_size=8,
    ),
    st.randoms(use_true_random=False),
)
def test_the_verdict_about_a_member_does_not_depend_on_arrival_order(
    updates: list[tuple[type, int]], order: random.Random
) -> None:
    def make(kind: type, inc: int) -> Alive | Suspect | Dead:
        if kind is Alive:
            return Alive("x", inc, "x")
        return kind("x", inc, "y")  # type: ignore[no-any-return]

    msgs = [make(k, i) for k, i in updates]
    verdicts = set()
    for perm in itertools.islice(itertools.permutations(msgs), 6):
        shuffled = list(perm)
        order.shuffle(shuffled)
        s = Swim("me", "me", LAN, random.Random(0), 0.0)
        s.add_known([Alive("x", 0, "x")], 0.0)
        s.receive(Gossip("y", tuple(shuffled)), 0.0)
        m = s.member("x")
        assert m is not None
        verdicts.add((m.incarnation, m.state))
    best = max(((inc, _RANK[type(u)]) for u, (_, inc) in zip(msgs, updates, strict=True)))
    expected_inc = max(0, best[0])
    assert len(verdicts) == 1
    ((inc, state),) = verdicts
    assert inc == expected_inc
    if best[0] > 0 or best[1] > 0:
        assert state == [State.ALIVE, State.SUSPECT, State.DEAD][best[1]]


def test_a_ping_to_a_suspect_carries_the_suspicion_to_it() -> None:
    s = Swim("a", "a", LAN, random.Random(1), 0.0)
    s.add_known([Alive("b", 0, "b")], 0.0)
    s.receive(Gossip("c", (Suspect("b", 0, "c"),)), 0.0)
    s.tick(1.0)
    pings = [o.message for o in s.take_outbox() if isinstance(o.message, Ping)]
    assert pings and pings[0].updates[0] == Suspect("b", 0, "a")


def test_dead_updates_about_unknown_members_are_ignored() -> None:
    s = Swim("a", "a", LAN, random.Random(1), 0.0)
    s.receive(Gossip("c", (Dead("zz", 3, "c"), Suspect("zz", 3, "c"))), 0.0)
    assert s.member("zz") is None


def lone_member(others: str = "bcde") -> Swim:
    s = Swim("a", "a", LAN, random.Random(7), 0.0)
    s.add_known([Alive(n, 0, n) for n in others], 0.0)
    return s


def next_ping(s: Swim, answer: bool = True) -> tuple[Ping, float]:
    """Drive ``s`` timer by timer until it pings someone; ack it unless told otherwise."""
    for _ in range(1000):
        now = s.deadline()
        s.tick(now)
        pings = [o.message for o in s.take_outbox() if isinstance(o.message, Ping)]
        if pings:
            if answer:
                s.receive(Ack(pings[0].seq, pings[0].target), now)
            return pings[0], now
    raise AssertionError("no ping within 1000 timers")


def test_every_member_is_probed_once_per_round_in_the_same_order_each_round() -> None:
    s = lone_member()
    targets = [next_ping(s)[0].target for _ in range(12)]
    rounds = [targets[i : i + 4] for i in range(0, 12, 4)]
    assert sorted(rounds[0]) == list("bcde")
    assert rounds[0] == rounds[1] == rounds[2]  # gaps of exactly n-1 periods, no long ones


def test_a_member_that_joins_is_probed_within_the_current_round() -> None:
    s = lone_member()
    next_ping(s)
    s.receive(Gossip("b", (Alive("f", 0, "f"),)), s.deadline())
    targets = [next_ping(s)[0].target for _ in range(9)]
    assert "f" in targets[:4] and sorted(targets[:5]) == sorted(set(targets[:5]))


def test_a_member_told_of_a_suspicion_probes_the_suspect_next_then_resumes_its_order() -> None:
    s = lone_member()
    before = [next_ping(s)[0].target for _ in range(4)]
    s.receive(Gossip("c", (Suspect("e", 0, "c"),)), s.deadline())
    ping, _ = next_ping(s)
    assert ping.target == "e" and Suspect("e", 0, "a") in ping.updates
    assert [next_ping(s)[0].target for _ in range(4)] == before


def test_a_probe_whose_relays_all_nack_suspects_before_the_period_ends() -> None:
    s = lone_member()
    ping, start = next_ping(s, answer=False)
    s.tick(start + LAN.probe_timeout)
    relays = [o.message for o in s.take_outbox() if isinstance(o.message, IndirectPing)]
    assert len(relays) == LAN.indirect_checks
    relay_names = sorted(n for n in "bcde" if n != ping.target)
    at = start + 0.9 * LAN.probe_interval
    s.receive(Nack(ping.seq, relay_names[0]), at)
    s.receive(Nack(ping.seq, relay_names[0]), at)  # a duplicate stands for no other relay
    s.receive(Nack(ping.seq, relay_names[1]), at)
    assert s.member(ping.target).state == State.ALIVE  # type: ignore[union-attr]
    s.receive(Nack(ping.seq, relay_names[2]), at)
    assert s.member(ping.target).state == State.SUSPECT  # type: ignore[union-attr]
    assert s.health_score == 0  # every relay answered: our own packets are fine


def test_a_killed_member_is_dead_everywhere_one_minimum_suspicion_after_it_is_suspected() -> None:
    c = Cluster(NAMES)
    c.run(2.0)
    c.down.add("e")
    suspected = dead = None
    while dead is None and c.now < 30.0:
        c.run(0.05)
        states = [c.state(n, "e") for n in "abcd"]
        if suspected is None and State.SUSPECT in states:
            suspected = c.now
        if all(st == State.DEAD for st in states):
            dead = c.now
    assert suspected is not None and dead is not None
    # Every other member probes the suspect at once, so the two confirmations Lifeguard needs
    # for the minimum timeout (4 s with suspicion_mult 4) arrive long before it runs out.
    assert dead - suspected <= LAN.suspicion_mult * LAN.probe_interval + 0.5
