"""The SWIM core on an in-memory network with instant delivery and a hand-driven clock.

References: SWIM (Das et al. 2002) §4 for probes and suspicion; Lifeguard (Dadgar et al. 2018)
§4 for local health and dynamic suspicion; hashicorp/memberlist for the details."""

from __future__ import annotations

import itertools
import random
import statistics

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
from corral.sim.kv import measure_kills


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


def next_round_robin_ping(s: Swim) -> tuple[Ping, float]:
    """Like ``next_ping``, with every member answering every ping (out-of-turn ones too)."""
    for _ in range(1000):
        now = s.deadline()
        s.tick(now)
        pings = [o.message for o in s.take_outbox() if isinstance(o.message, Ping)]
        for p in pings:
            s.receive(Ack(p.seq, p.target), now)
        in_turn = [p for p in pings if p.period > 0]
        if in_turn:
            return in_turn[0], now
    raise AssertionError("no round-robin ping within 1000 timers")


def test_a_member_told_of_a_suspicion_probes_the_suspect_at_once_without_moving_its_order() -> None:
    s = lone_member()
    before = [next_round_robin_ping(s) for _ in range(4)]
    told = before[-1][1] + 0.3
    s.receive(Gossip("c", (Suspect("e", 0, "c"),)), told)
    pings = [o.message for o in s.take_outbox() if isinstance(o.message, Ping)]
    assert [p.target for p in pings] == ["e"] and Suspect("e", 0, "a") in pings[0].updates
    assert pings[0].period == 0.0  # out of turn: not a round-robin ping
    s.receive(Ack(pings[0].seq, "e"), told)
    after = [next_round_robin_ping(s) for _ in range(4)]
    assert [p.target for p, _ in after] == [p.target for p, _ in before]
    gaps = [at - was for (_, at), (_, was) in zip(after, before, strict=True)]
    assert gaps == pytest.approx([4 * LAN.probe_interval] * 4)


def test_round_robin_pings_carry_the_period_and_stay_on_their_grid_when_timers_fire_late() -> None:
    s = lone_member()
    first, start = next_ping(s)
    assert first.period == LAN.probe_interval
    late = 0.03
    times: list[float] = []
    while len(times) < 8:
        now = s.deadline() + late  # every timer fires a little late, as asyncio's do
        s.tick(now)
        for o in s.take_outbox():
            if isinstance(o.message, Ping):
                assert o.message.period == LAN.probe_interval
                s.receive(Ack(o.message.seq, o.message.target), now)
                times.append(now)
    # Ping k is due at start + k periods: lateness does not add up over a round.
    for k, at in enumerate(times, start=1):
        assert 0 <= at - (start + k * LAN.probe_interval) <= late + 1e-9


def overdue_ping(s: Swim, sender: str, at: float) -> float:
    """``sender``'s round-robin ping reaches ``s`` at ``at``; returns when ``s`` probes the
    sender out of turn (no further ping from it arrives)."""
    s.receive(Ping(99, s.name, sender, sender, (), LAN.probe_interval), at)
    s.take_outbox()
    for _ in range(100):
        now = s.deadline()
        s.tick(now)
        for o in s.take_outbox():
            m = o.message
            if isinstance(m, Ping) and m.target == sender and m.period == 0.0:
                return now
            if isinstance(m, Ping):
                s.receive(Ack(m.seq, m.target), now)
    raise AssertionError(f"{sender} was never probed out of turn")


def test_a_member_whose_round_robin_ping_is_overdue_is_probed_out_of_turn() -> None:
    s = lone_member()  # five members: b pings a once every 4 periods
    at = overdue_ping(s, "b", 10.0)
    assert at == pytest.approx(10.0 + (4 + LAN.overdue_grace) * LAN.probe_interval)
    assert s.stats["overdue_checks"] == 1


def test_a_member_that_pings_on_time_is_never_probed_out_of_turn() -> None:
    c = Cluster(NAMES)
    c.run(10.0)  # joins lengthen rounds once (a false alarm costs one probe): let them settle
    before = {n: dict(m.stats) for n, m in c.members.items()}
    c.run(40.0)
    for n, m in c.members.items():
        assert m.stats["overdue_checks"] == before[n]["overdue_checks"]
        assert m.stats["probes"] - before[n]["probes"] <= 41  # one a period, nothing extra


def test_a_member_with_degraded_health_does_not_check_overdue_pings() -> None:
    s = lone_member()
    s.health_score = 2  # its own packets are going missing: a late ping is likely its fault
    s.receive(Ping(99, "a", "b", "b", (), LAN.probe_interval), 10.0)
    for _ in range(40):
        now = s.deadline()
        s.tick(now)
        s.take_outbox()
        s.health_score = 2
    assert s.stats["overdue_checks"] == 0


def test_the_overdue_check_can_be_turned_off() -> None:
    s = Swim("a", "a", LAN.with_(overdue_grace=0.0), random.Random(7), 0.0)
    s.add_known([Alive(n, 0, n) for n in "bcde"], 0.0)
    s.receive(Ping(99, "a", "b", "b", (), LAN.probe_interval), 10.0)
    for _ in range(40):
        now = s.deadline()
        s.tick(now)
        for o in s.take_outbox():
            if isinstance(o.message, Ping):
                s.receive(Ack(o.message.seq, o.message.target), now)
    assert s.stats["overdue_checks"] == 0


def test_independent_confirmations_queued_together_are_all_sent() -> None:
    s = lone_member()
    s.receive(Gossip("b", (Suspect("e", 0, "b"),)), 1.0)
    s.receive(Gossip("c", (Suspect("e", 0, "c"),)), 1.0)
    s.receive(Gossip("d", (Suspect("e", 0, "d"),)), 1.0)
    s.take_outbox()
    s.tick(s.deadline())
    sent = {
        u.source
        for o in s.take_outbox()
        if isinstance(o.message, (Gossip, Ping))
        for u in o.message.updates
        if isinstance(u, Suspect) and u.name == "e"
    }
    assert sent >= {"b", "c"}  # the first accusation and each confirmation travel
    s.receive(Gossip("b", (Alive("e", 1, "e"),)), 2.0)
    s.take_outbox()
    s.tick(s.deadline())
    about_e = {
        u
        for o in s.take_outbox()
        if isinstance(o.message, (Gossip, Ping))
        for u in o.message.updates
        if u.name == "e"
    }
    assert about_e == {Alive("e", 1, "e")}  # a refutation replaces them all


def test_a_member_that_already_refuted_answers_a_stale_accusation_with_its_refutation() -> None:
    accused = Swim("e", "e", LAN, random.Random(3), 0.0)
    accused.add_known([Alive(n, 0, n) for n in "abcd"], 0.0)
    accused.receive(Gossip("b", (Suspect("e", 0, "b"),)), 1.0)  # refutes: incarnation 1
    assert accused.incarnation == 1
    for _ in range(40):  # its refutation's retransmits run out
        accused.tick(accused.deadline())
        for o in accused.take_outbox():
            if isinstance(o.message, Ping):
                accused.receive(Ack(o.message.seq, o.message.target), accused.deadline())
    assert accused.pending_broadcasts() == 0
    accused.receive(Ping(5, "e", "a", "a", (Suspect("e", 0, "a"),)), 30.0)
    acks = [o.message for o in accused.take_outbox() if isinstance(o.message, Ack)]
    assert acks and Alive("e", 1, "e") in acks[0].updates


def test_a_relays_nack_carries_its_own_verdict_on_the_target() -> None:
    relay = lone_member()
    relay.receive(Gossip("b", (Suspect("e", 0, "b"),)), 1.0)
    relay.take_outbox()
    relay.tick(1.0 + LAN.probe_timeout)  # its own probe of e fails too: every relay nacks
    for o in relay.take_outbox():
        if isinstance(o.message, IndirectPing):
            relay.receive(Nack(o.message.seq, o.to), 1.0 + LAN.probe_timeout + 0.4)
    relay.take_outbox()
    relay.receive(IndirectPing(7, "e", "e", "c", "c"), 2.0)
    relay.take_outbox()
    relay.tick(2.0 + LAN.probe_timeout)
    nacks = [o.message for o in relay.take_outbox() if isinstance(o.message, Nack)]
    assert nacks and nacks[0].updates == (Suspect("e", 0, "a"),)
    asker = lone_member("bde")  # never heard of the suspicion
    asker.receive(Nack(1, "a", nacks[0].updates), 2.5)
    assert asker.member("e").state == State.SUSPECT  # type: ignore[union-attr]


def test_a_suspicion_short_of_confirmations_reprobes_the_suspect_each_period() -> None:
    s = lone_member()
    s.receive(Gossip("b", (Suspect("e", 0, "b"),)), 0.5)
    probes_of_e = [0.5] if any(o.to == "e" for o in s.take_outbox()) else []
    while s.deadline() <= 5.0:
        now = s.deadline()
        s.tick(now)
        for o in s.take_outbox():
            m = o.message
            if isinstance(m, Ping) and m.target == "e" and m.period == 0.0:
                probes_of_e.append(now)
            elif isinstance(m, Ping) and m.target != "e":
                s.receive(Ack(m.seq, m.target), now)
            elif isinstance(m, IndirectPing):  # relays are up, e is not: they nack
                s.receive(Nack(m.seq, o.to), now)
    # b's accusation plus a's own failures leave it one confirmation short of k = 2: a keeps
    # asking, a probe a period (each one's relays would bring their own verdicts).
    assert len(probes_of_e) >= 4 and s.health_score == 0
    assert s.member("e").state == State.SUSPECT  # type: ignore[union-attr]


def test_every_kill_is_dead_everywhere_within_seven_seconds_at_a_one_second_period() -> None:
    # Issue 9's figure on the simulator: the overdue check bounds the first suspicion by about
    # two periods, then memberlist's 4 s minimum suspicion (LAN preset, unchanged).
    for nodes in (5, 10):
        figures = measure_kills(seed=nodes, nodes=nodes, kills=10)
        assert figures.false_dead == 0 and len(figures.dead_everywhere) == 10
        assert max(figures.first_suspicion) <= 2.5
        assert 1.0 <= statistics.mean(figures.first_suspicion) <= 1.8
        assert max(figures.dead_everywhere) <= 7.0


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
