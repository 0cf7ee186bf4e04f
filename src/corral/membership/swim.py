"""SWIM failure detection and gossip membership with the Lifeguard refinements, as a pure core.

Theory of operation (SWIM, Das et al. 2002; Lifeguard, Dadgar et al. 2018; the shape of
hashicorp/memberlist's ``state.go``, ``suspicion.go``, ``awareness.go``, ``broadcast.go``):

- **Protocol period.** Every ``probe_interval`` (stretched by local health; on a fixed grid, like
  memberlist's ticker, so late timers do not add up) a member pings the next member of a
  round-robin list shuffled once (SWIM §4.3: joiners are inserted at random
  positions). The order is kept across traversals, unlike SWIM and memberlist, which reshuffle
  after each one: every member is then probed by each other exactly once per n-1 periods, so
  the worst-case wait for a given prober is n-1 periods instead of 2(n-1). (The mean wait for
  the *first* probe of a dead member barely moves past N=3: it comes from whichever of n-1
  independent schedules is soonest, ≈ (n-1)/n of a period either way.) No ack after
  ``probe_timeout``: it asks ``indirect_checks`` random alive members to ping the target for
  it; each relay answers with the target's ack or, at ``nack_fraction`` of the timeout, a
  *nack* ("I got your request but no answer"). No ack by the end of the period, or nacks
  from every relay before it (the period's rest could only bring a direct ack later than the
  whole timeout): the target becomes *suspect*. A relay's nack carries its own verdict on the
  target (dead, or suspected by its own failed probe): a member that missed those in gossip
  gets them from the relays of its next probe instead of waiting out Lifeguard's long timeout.
- **Out of turn.** Besides its round-robin probe, a member runs at most one *out-of-turn*
  probe at a time, started at once, in a slot of its own so that its round-robin schedule never
  moves (which the overdue check below relies on). Two things queue one:
  - *Suspects.* A member that hears another accuse M probes M. Its probe either confirms (the
    independent confirmations that bring Lifeguard's timeout down to the minimum arrive within
    about a period instead of whenever M's turn comes) or carries the suspicion to M so it
    refutes at once (the buddy system below). While its suspicion of M is still short of
    ``k`` confirmations, it probes M again each period. Cost: one extra probe per member per
    suspicion, more only for a member that missed the others' confirmations in gossip.
  - *Overdue pings* (an addition to SWIM and memberlist). Every round-robin ping carries its
    sender's period, so the member it reaches knows the sender's next ping is due one round
    later (one period per live member but the sender). When it is more than ``overdue_grace``
    of a period late, the member probes the sender. Why: the first probe *of* a dead member
    comes from whichever of n-1 independent schedules is soonest, and that wait has a tail
    (over 2 periods in 6–11 % of kills for N = 5–10), but the dead member's own pings went to
    one member per period, so someone misses one within a period of the death. That bounds
    first suspicion by ≈ 1 + grace + 0.9 periods, and "dead everywhere" by that plus the
    minimum suspicion. A member whose own health is degraded does not check (its missing
    packets are likely its own fault, Lifeguard §4.1). Cost: one probe per lost round-robin
    ping, and per round that a member's view of the live count differs from the sender's.
- **Incarnations.** Every update about member M carries M's incarnation. ``alive`` overrides
  only with a strictly higher incarnation; ``suspect`` applies to the same or higher; ``dead``
  ends it. A member that hears it is suspect (or dead) *refutes*: it bumps its incarnation above
  the accusation and gossips ``alive``. Only M ever raises M's incarnation.
- **Suspicion (Lifeguard LHA-Suspicion).** The timeout starts at ``max`` and shrinks
  logarithmically with each *independent* confirmation (a distinct member that also suspects M)
  down to ``min`` once ``k = suspicion_mult - 2`` confirmations arrive (memberlist's
  ``remainingSuspicionTime``). When it runs out, M is declared ``dead``.
- **Local health (Lifeguard LHA-Probe).** A score 0…``awareness_max_multiplier - 1`` that rises
  when our own probes fail with nacks missing (our packets, not the target, are the problem) or
  when we must refute a suspicion of ourselves, and falls with each successful probe. Probe
  interval and timeout are multiplied by ``score + 1``: a slow member accuses others more slowly.
  A probe of a suspect member carries the suspicion (the Lifeguard "buddy system"), so the
  accused learns at once and can refute; an accused that already refuted that incarnation puts
  its refutation in the ack, since its gossip of it may have run out before reaching the prober.
- **Dissemination.** Updates wait in a queue that sends the least-transmitted first, replaces
  older updates about the same member (but keeps independent suspicions of it side by side,
  where memberlist keeps one: a member relaying another's confirmation in place of its own
  lost confirmations when several probes failed together), and drops each after
  ``retransmit_mult·ceil(log10(n+1))`` sends. They ride on every ping and ack and on gossip
  packets to ``gossip_nodes`` members every ``gossip_interval`` (members dead for less than
  ``gossip_to_the_dead`` included).
- **Push-pull.** Every ``push_pull_interval`` (scaled up past 32 members, as memberlist does) a
  member swaps its whole view with a random alive member; a remote ``dead`` is merged as a
  ``suspect`` so one member's stale view cannot kill others outright. Every
  ``reconnect_interval`` it also pushes to one member it believes dead (Serf's reconnect): that
  is how the halves of a healed partition refute each other's verdicts and reconverge.

The driver contract: call ``tick(now)`` no later than ``deadline()``; ``receive(msg, now)`` for
each packet; then send everything ``take_outbox()`` returns (``Send.to`` is an address) and read
``take_events()``. Randomness comes only from the ``random.Random`` given at construction.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from corral.errors import UserError
from corral.membership.config import LAN, Config


class MembershipUsageError(UserError):
    code = "membership_usage"


class State(enum.IntEnum):
    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


Tags = tuple[tuple[str, str], ...]

# ----------------------------------------------------------------------------- wire types


class Alive(msgspec.Struct, frozen=True, tag=True):
    name: str
    incarnation: int
    address: str
    role: str = ""
    tags: Tags = ()


class Suspect(msgspec.Struct, frozen=True, tag=True):
    name: str
    incarnation: int
    source: str  # who suspects


class Dead(msgspec.Struct, frozen=True, tag=True):
    name: str
    incarnation: int
    source: str  # who declared it; ``source == name`` means the member left


Update = Alive | Suspect | Dead


class Ping(msgspec.Struct, frozen=True, tag=True):
    seq: int
    target: str
    source: str
    source_address: str
    updates: tuple[Update, ...] = ()
    period: float = 0.0  # the sender's period if this is its round-robin ping; 0: out of turn


class IndirectPing(msgspec.Struct, frozen=True, tag=True):
    seq: int
    target: str
    target_address: str
    source: str
    source_address: str
    nack: bool = True


class Ack(msgspec.Struct, frozen=True, tag=True):
    seq: int
    source: str
    updates: tuple[Update, ...] = ()


class Nack(msgspec.Struct, frozen=True, tag=True):
    seq: int
    source: str
    # The relay's own verdict on the target, if it has one (module docstring, "Protocol period").
    updates: tuple[Update, ...] = ()


class Gossip(msgspec.Struct, frozen=True, tag=True):
    source: str
    updates: tuple[Update, ...]


class MemberState(msgspec.Struct, frozen=True):
    name: str
    incarnation: int
    address: str
    role: str
    tags: Tags
    state: State


class PushPull(msgspec.Struct, frozen=True, tag=True):
    source: str
    source_address: str
    members: tuple[MemberState, ...]
    reply: bool  # the receiver answers with its own view


Message = Ping | IndirectPing | Ack | Nack | Gossip | PushPull


@dataclass(frozen=True)
class Send:
    to: str  # an address
    message: Message


@dataclass(frozen=True)
class Member:
    """What applications read: identity, metadata and the current verdict."""

    name: str
    address: str
    role: str
    tags: Tags
    incarnation: int
    state: State
    since: float

    def tag(self, key: str, default: str = "") -> str:
        return dict(self.tags).get(key, default)


EventKind = Literal["join", "update", "suspect", "alive", "dead", "left"]


@dataclass(frozen=True)
class MemberEvent:
    kind: EventKind
    member: Member
    at: float
    source: str = ""  # who accused (suspect) or convicted (dead); the member itself for left


# ----------------------------------------------------------------------------- internals


@dataclass
class _Node:
    name: str
    address: str
    role: str
    tags: Tags
    incarnation: int
    state: State
    since: float

    def view(self) -> Member:
        return Member(
            self.name, self.address, self.role, self.tags, self.incarnation, self.state, self.since
        )

    def as_state(self) -> MemberState:
        return MemberState(
            self.name, self.incarnation, self.address, self.role, self.tags, self.state
        )


@dataclass
class _Suspicion:
    incarnation: int
    start: float
    k: int
    min_timeout: float
    max_timeout: float
    confirmers: set[str] = field(default_factory=set)  # only counted and tested, never iterated

    def deadline(self) -> float:
        return self.start + suspicion_timeout(
            len(self.confirmers) - 1, self.k, self.min_timeout, self.max_timeout
        )


@dataclass
class _Probe:
    target: str
    seq: int
    indirect_at: float
    end: float
    indirect_sent: bool = False
    acked: bool = False
    expected_nacks: int = 0
    nacks: int = 0
    nackers: set[str] = field(default_factory=set)  # only counted and tested, never iterated


@dataclass
class _Relay:
    requester: str  # address
    requester_seq: int
    nack_at: float
    expires: float
    nack: bool
    target: str = ""
    answered: bool = False


@dataclass
class _Broadcast:
    name: str
    update: Update
    order: int
    transmits: int = 0


def suspicion_timeout(confirmations: int, k: int, min_timeout: float, max_timeout: float) -> float:
    """memberlist's ``remainingSuspicionTime`` (without the elapsed part): ``max`` with no
    confirmation, shrinking with log(c+1)/log(k+1) to ``min`` at ``k`` confirmations."""
    if k < 1:
        return min_timeout
    frac = math.log(max(0, confirmations) + 1) / math.log(k + 1)
    raw = max_timeout - frac * (max_timeout - min_timeout)
    return max(min_timeout, math.floor(raw * 1000) / 1000)


def retransmit_limit(mult: int, n: int) -> int:
    return mult * math.ceil(math.log10(n + 1))


def push_pull_scale(interval: float, n: int) -> float:
    """memberlist ``pushPullScale``: past 32 members the interval grows with log2(n/32)."""
    if n <= 32:
        return interval
    return interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)


class Swim:
    """One member's SWIM state machine. See the module docstring for the driver contract."""

    def __init__(
        self,
        name: str,
        address: str,
        config: Config = LAN,
        rng: random.Random | None = None,
        now: float = 0.0,
        role: str = "",
        tags: Mapping[str, str] | None = None,
    ) -> None:
        if not name or not address:
            raise MembershipUsageError(
                f"membership: a member needs a name and an address (got {name!r}, {address!r})",
                "pass the node name and the host:port its gossip listens on",
            )
        self.name = name
        self.config = config.validate()
        self.rng = rng if rng is not None else random.Random(0)
        self._me = _Node(name, address, role, _tags(tags), 0, State.ALIVE, now)
        self._members: dict[str, _Node] = {name: self._me}
        self._suspicions: dict[str, _Suspicion] = {}
        self._probe: _Probe | None = None  # the round-robin one
        self._check: _Probe | None = None  # the out-of-turn one
        self._checks: list[str] = []  # members waiting for an out-of-turn probe
        # name -> (when its next round-robin ping is overdue, its period): kept as a plain
        # dict of tuples so ``deadline()``, called after every packet, is one C-level min.
        self._due: dict[str, tuple[float, float]] = {}
        self._relays: dict[int, _Relay] = {}
        self._order: list[str] = []
        self._order_at = 0
        self._queue: list[_Broadcast] = []
        self._broadcast_seq = 0
        self._seq = 0
        self._outbox: list[Send] = []
        self._events: list[MemberEvent] = []
        self.health_score = 0
        self.left = False
        self._now = now
        c = self.config
        # Spread the first timers over one period so a cluster started at once does not beat
        # in lockstep.
        self._next_probe = now + self.rng.uniform(0, c.probe_interval)
        self._next_gossip = now + self.rng.uniform(0, c.gossip_interval)
        self._next_push_pull = (
            now + self.rng.uniform(0, c.push_pull_interval) if c.push_pull_interval else math.inf
        )
        self._next_reconnect = now + self.rng.uniform(0, c.reconnect_interval)
        self.stats = {
            "probes": 0,
            "probe_failures": 0,
            "refutes": 0,
            "declared_dead": 0,
            "overdue_checks": 0,
        }

    # ------------------------------------------------------------------ reading

    @property
    def incarnation(self) -> int:
        return self._me.incarnation

    def members(self) -> list[Member]:
        return [self._members[n].view() for n in sorted(self._members)]

    def member(self, name: str) -> Member | None:
        node = self._members.get(name)
        return node.view() if node is not None else None

    def alive(self) -> list[str]:
        """Names of members currently believed alive (suspects included: not yet convicted)."""
        return [
            n
            for n in sorted(self._members)
            if self._members[n].state in (State.ALIVE, State.SUSPECT)
        ]

    def num_members(self) -> int:
        """memberlist's ``estNumNodes``: every member not yet forgotten — the dead count until
        ``gossip_to_the_dead`` has passed, so losing half the cluster does not shrink the
        suspicion timeouts and retransmit budget of the survivors at once."""
        window = self.config.gossip_to_the_dead
        return sum(
            1
            for n in self._members.values()
            if n.state in (State.ALIVE, State.SUSPECT)
            or (n.state == State.DEAD and self._now - n.since < window)
        )

    def pending_broadcasts(self) -> int:
        return len(self._queue)

    def take_outbox(self) -> list[Send]:
        out, self._outbox = self._outbox, []
        return out

    def take_events(self) -> list[MemberEvent]:
        out, self._events = self._events, []
        return out

    def deadline(self) -> float:
        times = [self._next_probe, self._next_gossip, self._next_push_pull, self._next_reconnect]
        for p in (self._probe, self._check):
            if p is not None and not p.acked:
                times.append(p.end if p.indirect_sent else p.indirect_at)
        if self._due:
            times.append(min(self._due.values())[0])
        for relay in self._relays.values():
            times.append(relay.expires if relay.answered or not relay.nack else relay.nack_at)
        times.extend(s.deadline() for s in self._suspicions.values())
        return min(times)

    # ------------------------------------------------------------------ commands

    def join(self, addresses: Sequence[str], now: float) -> None:
        """Push our view to each seed address; their replies bring theirs."""
        for address in addresses:
            if address != self._me.address:
                self._send(address, self._push_pull(reply=True))

    def add_known(self, members: Iterable[Alive], now: float) -> None:
        """Start from a known member list (a restored view, a benchmark) without gossiping it."""
        for a in members:
            if a.name != self.name and a.name not in self._members:
                self._members[a.name] = _Node(
                    a.name, a.address, a.role, a.tags, a.incarnation, State.ALIVE, now
                )

    def update_metadata(
        self, now: float, role: str | None = None, tags: Mapping[str, str] | None = None
    ) -> None:
        """Change our own role/tags: a new incarnation, gossiped like any alive update."""
        if role is not None:
            self._me.role = role
        if tags is not None:
            self._me.tags = _tags(tags)
        self._me.incarnation += 1
        self._broadcast(self._alive_of(self._me))
        self._event("update", self._me, now)

    def leave(self, now: float) -> None:
        """Announce a graceful departure; the member stops probing afterwards."""
        self.left = True
        self._me.state = State.LEFT
        self._broadcast(Dead(self.name, self._me.incarnation, self.name))
        self._gossip(now)

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        self._now = now
        c = self.config
        for p in self._in_flight():
            if not p.indirect_sent and now >= p.indirect_at:
                self._go_indirect(p)
            if now >= p.end:
                self._probe_failed(p, now)
        self._check_overdue(now)
        for seq in sorted(self._relays):
            relay = self._relays[seq]
            if relay.nack and not relay.answered and now >= relay.nack_at:
                relay.answered = True
                verdict = self._verdict(relay.target)
                self._send(relay.requester, Nack(relay.requester_seq, self.name, verdict))
            if now >= relay.expires:
                del self._relays[seq]
        for name in sorted(self._suspicions):
            s = self._suspicions[name]
            if now >= s.deadline():
                self._declare_dead(name, s.incarnation, now)
        if self.left:
            self._next_probe = self._next_push_pull = self._next_reconnect = math.inf
        if now >= self._next_probe:
            # Drift-free, like memberlist's ticker: the overdue check expects our pings exactly
            # one round apart, and a timer that fires a little late every period would add
            # up over a round. A process so late that the probe would lose its indirect
            # stage (paused, overloaded) starts a whole period from now.
            period = self._scale(c.probe_interval)
            following = self._next_probe + period
            late = following - now <= self._scale(c.probe_timeout)
            self._next_probe = now + period if late else following
            target = self._next_target()
            if target is not None:
                # It ends when the next one starts, so it has failed before it is replaced.
                self._probe = self._launch(target, now, self._next_probe, in_turn=True)
            self._recheck_suspects()
        self._start_check(now)
        if now >= self._next_gossip:
            self._gossip(now)
            self._next_gossip = now + c.gossip_interval
        if now >= self._next_push_pull:
            peers = self._pick(1, lambda n: n.state in (State.ALIVE, State.SUSPECT))
            if peers:
                self._send(peers[0].address, self._push_pull(reply=True))
            self._next_push_pull = now + push_pull_scale(c.push_pull_interval, self.num_members())
        if now >= self._next_reconnect:
            dead = self._pick(1, lambda n: n.state == State.DEAD)
            if dead:
                self._send(dead[0].address, self._push_pull(reply=True))
            self._next_reconnect = now + c.reconnect_interval

    def _scale(self, seconds: float) -> float:
        return seconds * (self.health_score + 1)

    def _health(self, delta: int) -> None:
        top = self.config.awareness_max_multiplier - 1
        self.health_score = min(top, max(0, self.health_score + delta))

    # ------------------------------------------------------------------ probing

    def _in_flight(self) -> list[_Probe]:
        return [p for p in (self._probe, self._check) if p is not None and not p.acked]

    def _launch(self, target: _Node, now: float, end: float, in_turn: bool) -> _Probe:
        c = self.config
        self._seq += 1
        probe = _Probe(
            target.name, self._seq, indirect_at=now + self._scale(c.probe_timeout), end=end
        )
        self.stats["probes"] += 1
        first: list[Update] = []
        if target.state == State.SUSPECT:
            # Lifeguard's buddy system: tell the accused directly so it can refute now.
            first.append(Suspect(target.name, target.incarnation, self.name))
        rest = self._take_updates(c.max_piggyback - len(first))
        updates = tuple(first + [u for u in rest if u not in first])
        ping = Ping(
            self._seq,
            target.name,
            self.name,
            self._me.address,
            updates,
            self._scale(c.probe_interval) if in_turn else 0.0,
        )
        self._send(target.address, ping)
        return probe

    def _start_check(self, now: float) -> None:
        while self._check is None and self._checks and not self.left:
            node = self._members.get(self._checks.pop(0))
            if node is not None and node.state in (State.ALIVE, State.SUSPECT):
                end = now + self._scale(self.config.probe_interval)
                self._check = self._launch(node, now, end, in_turn=False)

    def _round(self) -> int:
        """Periods between two round-robin pings of one member to us: it pings every live
        member but itself once per round."""
        live = sum(1 for n in self._members.values() if n.state in (State.ALIVE, State.SUSPECT))
        return max(1, live - 1)

    def _verdict(self, name: str) -> tuple[Update, ...]:
        """What a relay adds to its nack: its own conviction of the target, or its own
        independent suspicion of it, so a member that missed those in gossip gets them from
        the relays of its next probe."""
        node = self._members.get(name)
        if node is None:
            return ()
        if node.state == State.DEAD:
            return (Dead(name, node.incarnation, self.name),)
        timer = self._suspicions.get(name)
        if timer is not None and self.name in timer.confirmers:
            return (Suspect(name, timer.incarnation, self.name),)
        return ()

    def _recheck_suspects(self) -> None:
        """Once a period, a suspicion still short of its k confirmations gets one more
        out-of-turn probe: its relays' nacks carry their verdicts, and the suspect, if alive,
        hears the accusation and refutes."""
        for name in sorted(self._suspicions):
            timer = self._suspicions[name]
            busy = self._check is not None and self._check.target == name
            if len(timer.confirmers) - 1 < timer.k and name not in self._checks and not busy:
                self._checks.append(name)

    def _check_overdue(self, now: float) -> None:
        if not self._due or now < min(self._due.values())[0]:
            return
        rounds = self._round()
        for name in sorted(self._due):
            due, period = self._due[name]
            if now < due:
                continue
            # Keep the phase: the sender's next ping is still due a whole round after the missed
            # one (several rounds on, if we were paused).
            while due <= now:
                due += rounds * period
            self._due[name] = (due, period)
            node = self._members.get(name)
            if (
                self.health_score == 0
                and node is not None
                and node.state == State.ALIVE
                and name not in self._checks
                and not (self._check is not None and self._check.target == name)
            ):
                self.stats["overdue_checks"] += 1
                self._checks.append(name)

    def _next_target(self) -> _Node | None:
        for _ in range(2):
            while self._order_at < len(self._order):
                name = self._order[self._order_at]
                self._order_at += 1
                node = self._members.get(name)
                if node is not None and node.state in (State.ALIVE, State.SUSPECT):
                    return node
            self._order_at = 0
            self._refresh_order()
        return None

    def _refresh_order(self) -> None:
        """Keep the probe order across traversals; only members missing from it are inserted,
        each at a random position (SWIM §4.3's rule for joiners). Reshuffling every traversal,
        as SWIM and memberlist do, lets the gap between two of our probes of a member reach
        2(n-1) periods; with a kept order it is always n-1."""
        known = set(self._order)
        self._order = [n for n in self._order if n in self._members]
        for name in sorted(self._members):
            if name != self.name and name not in known:
                self._order.insert(self.rng.randint(0, len(self._order)), name)

    def _go_indirect(self, p: _Probe) -> None:
        p.indirect_sent = True
        target = self._members.get(p.target)
        if target is None:
            return
        relays = self._pick(
            self.config.indirect_checks,
            lambda n: n.state == State.ALIVE and n.name != p.target,
        )
        p.expected_nacks = len(relays)
        for relay in relays:
            self._send(
                relay.address,
                IndirectPing(p.seq, target.name, target.address, self.name, self._me.address),
            )

    def _probe_failed(self, p: _Probe, now: float) -> None:
        self._finish(p)
        self.stats["probe_failures"] += 1
        # Missing nacks mean our own packets are not getting through: that is our health, not
        # the target's (Lifeguard §4.1). With no relays at all, any failure counts against us.
        self._health(p.expected_nacks - p.nacks if p.expected_nacks else 1)
        target = self._members.get(p.target)
        if target is not None and target.state in (State.ALIVE, State.SUSPECT):
            # Already suspect: our failed probe is an independent confirmation (Lifeguard).
            self._on_suspect(Suspect(target.name, target.incarnation, self.name), now)

    # ------------------------------------------------------------------ receiving

    def receive(self, msg: Message, now: float) -> None:
        self._now = now
        if self.left and not isinstance(msg, PushPull):
            return
        if isinstance(msg, Ping):
            self._apply_all(msg.updates, now)
            grace = self.config.overdue_grace
            if msg.target == self.name and msg.period > 0 and grace > 0:
                due = now + (self._round() + grace) * msg.period
                self._due[msg.source] = (due, msg.period)
            if msg.target == self.name:
                updates = self._take_updates(self.config.max_piggyback)
                me = self._me
                if any(
                    isinstance(u, (Suspect, Dead))
                    and u.name == me.name
                    and u.incarnation < me.incarnation
                    for u in msg.updates
                ):
                    # The prober accuses an incarnation we already refuted: our refutation may
                    # have run out of retransmits before reaching it, so answer it directly.
                    others = [u for u in updates if u.name != me.name]
                    updates = [self._alive_of(me), *others[: self.config.max_piggyback - 1]]
                self._send(msg.source_address, Ack(msg.seq, self.name, tuple(updates)))
        elif isinstance(msg, Ack):
            self._apply_all(msg.updates, now)
            self._on_ack(msg.seq)
        elif isinstance(msg, Nack):
            self._apply_all(msg.updates, now)
            p = self._in_flight_with(msg.seq)
            if p is not None and msg.source not in p.nackers:
                # Distinct relays only: a duplicated nack must not stand for a missing one.
                p.nackers.add(msg.source)
                p.nacks += 1
                if p.expected_nacks and p.nacks >= p.expected_nacks:
                    # Every relay is up and reached us, and none reached the target: waiting
                    # out the period can bring only a direct ack already late by more than
                    # the whole probe timeout, so suspect now rather than at the period's end.
                    self._probe_failed(p, now)
        elif isinstance(msg, IndirectPing):
            self._seq += 1
            c = self.config
            self._relays[self._seq] = _Relay(
                msg.source_address,
                msg.seq,
                nack_at=now + c.probe_timeout * c.nack_fraction,
                expires=now + c.probe_interval,
                nack=msg.nack,
                target=msg.target,
            )
            self._send(msg.target_address, Ping(self._seq, msg.target, self.name, self._me.address))
        elif isinstance(msg, Gossip):
            self._apply_all(msg.updates, now)
        else:
            self._merge(msg, now)
            if msg.reply:
                self._send(msg.source_address, self._push_pull(reply=False))
        self._start_check(now)

    def _on_ack(self, seq: int) -> None:
        relay = self._relays.get(seq)
        if relay is not None:
            if not relay.answered:
                relay.answered = True
                self._send(relay.requester, Ack(relay.requester_seq, self.name))
            return
        p = self._in_flight_with(seq)
        if p is not None:
            p.acked = True
            self._finish(p)
            self._health(-1)

    def _in_flight_with(self, seq: int) -> _Probe | None:
        for p in self._in_flight():
            if p.seq == seq:
                return p
        return None

    def _finish(self, p: _Probe) -> None:
        if p is self._probe:
            self._probe = None
        if p is self._check:
            self._check = None

    def _apply_all(self, updates: Iterable[Update], now: float) -> None:
        for u in updates:
            if isinstance(u, Alive):
                self._on_alive(u, now)
            elif isinstance(u, Suspect):
                self._on_suspect(u, now)
            else:
                self._on_dead(u, now)

    def _merge(self, msg: PushPull, now: float) -> None:
        for s in msg.members:
            if s.state in (State.ALIVE, State.SUSPECT):
                self._on_alive(Alive(s.name, s.incarnation, s.address, s.role, s.tags), now)
            if s.state == State.LEFT:
                self._on_dead(Dead(s.name, s.incarnation, s.name), now)
            elif s.state != State.ALIVE:
                # memberlist's mergeState: a remote verdict becomes our suspicion, never our
                # conviction, so one stale view cannot kill a member outright.
                self._on_suspect(Suspect(s.name, s.incarnation, msg.source), now)

    # ------------------------------------------------------------------ state changes

    def _on_alive(self, a: Alive, now: float) -> None:
        if a.name == self.name:
            me = self._me
            same = (a.address, a.role, a.tags) == (me.address, me.role, me.tags)
            if a.incarnation < me.incarnation or (a.incarnation == me.incarnation and same):
                return
            self._refute(a.incarnation, now)  # someone speaks for us with a newer incarnation
            return
        node = self._members.get(a.name)
        if node is None:
            node = _Node(a.name, a.address, a.role, a.tags, a.incarnation, State.ALIVE, now)
            self._members[a.name] = node
            # Probe newcomers soon: insert at a random place in the rest of this round.
            at = self.rng.randint(self._order_at, len(self._order))
            self._order.insert(at, a.name)
            self._event("join", node, now)
            self._broadcast(a)
            return
        if a.incarnation <= node.incarnation:
            return
        was = node.state
        changed = (a.address, a.role, a.tags) != (node.address, node.role, node.tags)
        node.address, node.role, node.tags, node.incarnation = (
            a.address,
            a.role,
            a.tags,
            a.incarnation,
        )
        self._suspicions.pop(a.name, None)
        if was != State.ALIVE:
            node.state, node.since = State.ALIVE, now
            self._event("alive" if was == State.SUSPECT else "join", node, now)
        elif changed:
            self._event("update", node, now)
        self._broadcast(a)

    def _on_suspect(self, s: Suspect, now: float) -> None:
        node = self._members.get(s.name)
        if node is None or s.incarnation < node.incarnation:
            return
        timer = self._suspicions.get(s.name)
        if timer is not None and s.incarnation > timer.incarnation:
            # It refuted and was accused again: a new suspicion, at the new incarnation.
            del self._suspicions[s.name]
            node.state = State.ALIVE
            timer = None
        if timer is not None:
            if s.source not in timer.confirmers and len(timer.confirmers) <= timer.k:
                timer.confirmers.add(s.source)
                self._broadcast(s)  # independent confirmations must travel too
            return
        if node.state != State.ALIVE and s.incarnation <= node.incarnation:
            return
        # (A suspicion at a newer incarnation than a death means it came back and refuted.)
        if s.name == self.name:
            self._refute(s.incarnation, now)
            return
        c = self.config
        n = self.num_members()
        k = c.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        min_timeout = c.suspicion_mult * max(1.0, math.log10(max(1, n))) * c.probe_interval
        self._suspicions[s.name] = _Suspicion(
            s.incarnation,
            now,
            k,
            min_timeout,
            c.suspicion_max_timeout_mult * min_timeout,
            {s.source},
        )
        node.incarnation, node.state, node.since = s.incarnation, State.SUSPECT, now
        if s.source != self.name and s.name not in self._checks:
            self._checks.append(s.name)
        self._event("suspect", node, now, s.source)
        self._broadcast(s)

    def _on_dead(self, d: Dead, now: float) -> None:
        node = self._members.get(d.name)
        if node is None or d.incarnation < node.incarnation:
            return
        self._suspicions.pop(d.name, None)
        self._due.pop(d.name, None)
        if node.state in (State.DEAD, State.LEFT):
            if d.incarnation > node.incarnation:
                node.incarnation = d.incarnation  # still dead, but a later verdict
                self._broadcast(d)
            return
        if d.name == self.name:
            if not self.left:
                self._refute(d.incarnation, now)
            return
        left = d.source == d.name
        node.incarnation, node.since = d.incarnation, now
        node.state = State.LEFT if left else State.DEAD
        self._event("left" if left else "dead", node, now, d.source)
        self._broadcast(d)

    def _declare_dead(self, name: str, incarnation: int, now: float) -> None:
        self.stats["declared_dead"] += 1
        self._on_dead(Dead(name, incarnation, self.name), now)

    def _refute(self, accused: int, now: float) -> None:
        self.stats["refutes"] += 1
        self._me.incarnation = max(self._me.incarnation, accused) + 1
        self._health(1)  # being accused means we were too slow to answer (Lifeguard)
        self._broadcast(self._alive_of(self._me))

    # ------------------------------------------------------------------ dissemination

    def _broadcast(self, update: Update) -> None:
        self._queue = [b for b in self._queue if b.name != update.name or _distinct(update, b)]
        self._broadcast_seq += 1
        self._queue.append(_Broadcast(update.name, update, self._broadcast_seq))

    def _take_updates(self, limit: int) -> list[Update]:
        if limit <= 0 or not self._queue:
            return []
        self._queue.sort(key=lambda b: (b.transmits, -b.order))
        chosen = self._queue[:limit]
        cap = retransmit_limit(self.config.retransmit_mult, self.num_members())
        for b in chosen:
            b.transmits += 1
        self._queue = [b for b in self._queue if b.transmits < cap]
        return [b.update for b in chosen]

    def _gossip(self, now: float) -> None:
        if not self._queue:
            return
        window = self.config.gossip_to_the_dead
        targets = self._pick(
            self.config.gossip_nodes,
            lambda n: (
                n.state in (State.ALIVE, State.SUSPECT)
                or (n.state == State.DEAD and now - n.since < window)
            ),
        )
        for node in targets:
            updates = self._take_updates(self.config.max_piggyback)
            if not updates:
                break
            self._send(node.address, Gossip(self.name, tuple(updates)))

    def _push_pull(self, reply: bool) -> PushPull:
        states = tuple(self._members[n].as_state() for n in sorted(self._members))
        return PushPull(self.name, self._me.address, states, reply)

    # ------------------------------------------------------------------ helpers

    def _pick(self, k: int, want: Callable[[_Node], bool]) -> list[_Node]:
        eligible = [
            self._members[n]
            for n in sorted(self._members)
            if n != self.name and want(self._members[n])
        ]
        if len(eligible) <= k:
            self.rng.shuffle(eligible)
            return eligible
        return self.rng.sample(eligible, k)

    def _send(self, address: str, message: Message) -> None:
        self._outbox.append(Send(address, message))

    def _event(self, kind: EventKind, node: _Node, now: float, source: str = "") -> None:
        self._events.append(MemberEvent(kind, node.view(), now, source))

    @staticmethod
    def _alive_of(node: _Node) -> Alive:
        return Alive(node.name, node.incarnation, node.address, node.role, node.tags)


def _distinct(update: Update, queued: _Broadcast) -> bool:
    """Whether a queued update about the same member must stay beside the new one: independent
    suspicions at one incarnation do. Replacing them (as memberlist does) lost confirmations
    when several members' probes failed together: each relayed another's confirmation in place
    of its own, and a member that heard only one kept the long timeout."""
    other = queued.update
    return (
        isinstance(update, Suspect)
        and isinstance(other, Suspect)
        and other.incarnation == update.incarnation
        and other.source != update.source
    )


def _tags(tags: Mapping[str, str] | None) -> Tags:
    return tuple(sorted((tags or {}).items()))
