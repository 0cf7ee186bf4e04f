"""Membership and AP-store engines of the simulator: real ``Swim`` and ``corral.kv`` cores on a
faulty network.

Theory of operation (FoundationDB simulation, Jepsen): one seed draws every message fate
(``network.py``), every partition, kill and client operation. Two engines share this module
because the store runs on the membership layer:

``swim`` — N members gossip (joining through one seed) while the nemesis drops, duplicates and
reorders packets, partitions the network (halves, one member isolated, one-way cuts), adds extra
loss on one member, and kills members (a killed member restarts later with incarnation 0 and
rejoins). Checked after every event: **no false dead** — a member is never convicted by a
member when both have been up and unpartitioned for a whole suspicion window (the longest
suspicion timeout plus a stretched protocol period). Checked after each kill: **the dead member
is declared dead at every member within the bound** (when no partition interferes). After
healing: **views converge** — every member sees every member alive at its current incarnation
within ``converge_bound``.

``kv`` — the same members also run the store: clients read-modify-write and delete a few keys
through random coordinators while the nemesis partitions (e.g. 3 | 2 of 5), crashes nodes
(their durable store survives; writes are acknowledged only once durable), drops, duplicates
and reorders. After healing, every node up: **hint stores drain to empty**, **all replicas'
Merkle roots agree within 2 anti-entropy intervals** of the hints draining, **every
acknowledged write is readable** as a value or a sibling unless a later write or delete saw it,
**siblings ≤ concurrent writers** (no client has two acknowledged siblings), and **no deleted
value is resurrected**.

    python -m corral.sim swim --seed 7 [--nodes 10 --drop 0.1 ...]
    python -m corral.sim kv --seed 7 [--nodes 5 --n 3 --r 2 --w 2 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import sys
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from corral.kv import versions
from corral.kv.coordinator import (
    GetRequest,
    HintStore,
    PutRequest,
    Quorum,
    merger,
    new_version,
    sloppy_targets,
)
from corral.kv.merkle import MerkleTree, diff
from corral.kv.ring import Ring
from corral.kv.versions import EMPTY, Context, Dot, LamportClock, Versioned
from corral.membership import (
    PRESETS,
    Ack,
    Config,
    Gossip,
    IndirectPing,
    Nack,
    Ping,
    PushPull,
    State,
    Swim,
)
from corral.sim.core import Simulation, report
from corral.sim.network import NetworkFaults, SimNetwork


class SafetyViolation(AssertionError):
    pass


# =============================================================================== SWIM engine


@dataclass(frozen=True)
class SwimOptions:
    nodes: int = 5
    preset: Literal["lan", "local", "test"] = "lan"
    faults_for: float = 90.0  # simulated seconds with faults on
    heal_for: float = 60.0
    drop: float = 0.01
    duplicate: float = 0.01
    slow: float = 0.02
    lossy_node: float = 0.0  # extra loss on every packet to or from n1
    partitions: bool = True
    kills: bool = True


@dataclass
class SwimResult:
    seed: int
    replay: str
    ok: bool
    problem: str = ""
    steps: int = 0
    sim_seconds: float = 0.0
    kills: int = 0
    false_dead: int = 0
    dead_everywhere: list[float] = field(default_factory=list)  # seconds after each kill
    first_suspicion: list[float] = field(default_factory=list)
    converged_after: float = -1.0
    messages: int = 0
    events: list[str] = field(default_factory=list)

    def report(self) -> str:
        worst = max(self.dead_everywhere, default=0.0)
        summary = (
            f"steps: {self.steps}, simulated "
            f"{self.sim_seconds:.1f} s, {self.messages} packets, {self.kills} kills (dead "
            f"everywhere in ≤ {worst:.2f} s), {self.false_dead} false deads, views converged "
            f"{self.converged_after:.2f} s after healing"
        )
        return report(self.ok, self.problem, self.replay, summary, self.events)


@dataclass
class SimMember:
    name: str
    swim: Swim | None = None
    life: int = 0  # bumps on every kill/restart so stale timers are ignored
    disturbed_at: float = 0.0  # last kill, restart or partition change touching it
    wakes: set[float] = field(default_factory=set)  # pending wake-up times (membership tests)


class SwimWorld:
    """Members on one simulated network; the KV world builds on it."""

    def __init__(self, sim: Simulation, names: list[str], config: Config, faults: NetworkFaults):
        self.sim = sim
        self.rng = sim.random
        self.config = config
        self.names = names
        self.net: SimNetwork[object] = SimNetwork(sim, self._deliver, faults)
        self.members = {n: SimMember(n) for n in names}
        self.lossy: dict[str, float] = {}
        self.partitioned_since: float | None = None
        self.violation = ""
        self.log: list[str] = []
        self.false_dead = 0
        self.check_false_dead = True

    # ------------------------------------------------------------------ helpers

    def note(self, text: str) -> None:
        self.log.append(f"{self.sim.now:9.4f} {text}")
        if len(self.log) > 400:
            del self.log[:200]

    def fail(self, problem: str) -> None:
        if not self.violation:
            self.violation = f"t={self.sim.now:.4f}: {problem}"
            self.note(f"VIOLATION {problem}")
            raise SafetyViolation(self.violation)

    def up(self) -> list[SimMember]:
        return [m for m in self.members.values() if m.swim is not None]

    @property
    def window(self) -> float:
        """How long two members must have been undisturbed before a conviction is false:
        the longest suspicion timeout plus a protocol period at the worst local health."""
        c = self.config
        n = len(self.names)
        longest = c.suspicion_max_timeout_mult * c.suspicion_mult * max(1.0, math.log10(n))
        return (longest + 2 * c.awareness_max_multiplier) * c.probe_interval

    # ------------------------------------------------------------------ lifecycle

    def start(self, m: SimMember, seeds: Sequence[str]) -> None:
        m.life += 1
        m.disturbed_at = self.sim.now
        rng = random.Random(self.rng.getrandbits(64))  # the simulator's stream seeds each one
        m.swim = Swim(m.name, m.name, self.config, rng, self.sim.now)
        m.wakes = set()
        m.swim.join([s for s in seeds if s != m.name], self.sim.now)
        self.flush(m)

    def kill(self, m: SimMember) -> None:
        if m.swim is None:
            return
        m.swim = None
        m.life += 1
        m.disturbed_at = self.sim.now
        self.note(f"{m.name} killed")

    def disturb_all(self) -> None:
        for m in self.members.values():
            m.disturbed_at = self.sim.now

    # ------------------------------------------------------------------ traffic

    def flush(self, m: SimMember) -> None:
        swim = m.swim
        if swim is None:
            return
        for out in swim.take_outbox():
            self.send(m.name, out.to, out.message)
        for ev in swim.take_events():
            self.on_event(m.name, ev.kind, ev.member.name, ev.source)
        self.arm(m)

    def arm(self, m: SimMember) -> None:
        swim = m.swim
        if swim is None:
            return
        at = swim.deadline()
        if at in m.wakes or math.isinf(at):
            return
        m.wakes.add(at)
        life = m.life
        self.sim.schedule(at - self.sim.now, lambda: self._wake(m, life, at))

    def _wake(self, m: SimMember, life: int, at: float) -> None:
        m.wakes.discard(at)
        if m.swim is None or m.life != life:
            return
        m.swim.tick(self.sim.now)
        self.flush(m)
        self.after_tick(m)

    def after_tick(self, m: SimMember) -> None:
        """Hook for the KV world."""

    def send(self, frm: str, to: str, message: object) -> None:
        loss = max(self.lossy.get(frm, 0.0), self.lossy.get(to, 0.0))
        if loss and self.rng.random() < loss:
            self.net.stats.sent += 1
            self.net.stats.dropped += 1
            return
        self.net.send(frm, to, message)

    def _deliver(self, frm: Hashable, to: Hashable, message: object) -> None:
        m = self.members.get(str(to))
        if m is None or m.swim is None:
            return
        self.deliver(m, str(frm), message)

    def deliver(self, m: SimMember, frm: str, message: object) -> None:
        assert m.swim is not None
        m.swim.receive(message, self.sim.now)  # type: ignore[arg-type]  # only Swim messages here
        self.flush(m)

    # ------------------------------------------------------------------ checks

    def on_event(self, observer: str, kind: str, subject: str, source: str) -> None:
        if kind in ("dead", "suspect", "alive", "left"):
            self.note(f"{observer}: {subject} {kind} (by {source or '-'})")
        if kind != "dead" or source != observer or not self.check_false_dead:
            return
        accused = self.members[subject]
        accuser = self.members[observer]
        now = self.sim.now
        calm = self.partitioned_since is None and all(
            now - x.disturbed_at > self.window for x in (accused, accuser)
        )
        if accused.swim is not None and calm:
            self.false_dead += 1
            self.fail(
                f"false dead: {observer} convicted {subject}, which was up and reachable for "
                f"{now - accused.disturbed_at:.1f} s"
            )

    def views_converged(self) -> bool:
        up = self.up()
        for m in up:
            assert m.swim is not None
            for other in up:
                assert other.swim is not None
                seen = m.swim.member(other.name)
                if seen is None or seen.state != State.ALIVE:
                    return False
                if seen.incarnation != other.swim.incarnation:
                    return False
        return True


class SwimEngine(SwimWorld):
    def __init__(self, seed: int, options: SwimOptions) -> None:
        sim = Simulation(seed, "swim", **_nondefault(options, SwimOptions()))
        faults = NetworkFaults(
            drop=options.drop,
            duplicate=options.duplicate,
            slow=options.slow,
            slow_delay=0.3,
        )
        names = [f"n{i}" for i in range(1, options.nodes + 1)]
        super().__init__(sim, names, PRESETS[options.preset], faults)
        self.opt = options
        self.kills = 0
        self.dead_everywhere: list[float] = []
        self.first_suspicion: list[float] = []
        self.killed_at: dict[str, float] = {}
        self.suspected: set[str] = set()
        self.convicted: set[str] = set()
        self.heal_at = options.faults_for
        self.converged_at: float | None = None

    @property
    def kill_bound(self) -> float:
        """First probe within a round, one period to fail, the longest suspicion timeout, and
        twice that again for a member that learned the verdict only by push-pull, plus gossip."""
        c = self.config
        n = len(self.names)
        longest = c.suspicion_max_timeout_mult * c.suspicion_mult * max(1.0, math.log10(n))
        return (n + 1 + 2 * longest) * c.probe_interval + 5 * c.gossip_interval * n

    def on_event(self, observer: str, kind: str, subject: str, source: str) -> None:
        super().on_event(observer, kind, subject, source)
        killed = self.killed_at.get(subject)
        if killed is None:
            return
        if kind == "suspect" and subject not in self.suspected:
            self.suspected.add(subject)
            self.first_suspicion.append(self.sim.now - killed)
        if kind == "dead" and subject not in self.convicted and self._dead_everywhere(subject):
            self.convicted.add(subject)
            self.dead_everywhere.append(self.sim.now - killed)

    def _dead_everywhere(self, subject: str) -> bool:
        for m in self.up():
            assert m.swim is not None
            seen = m.swim.member(subject)
            if seen is not None and seen.state not in (State.DEAD, State.LEFT):
                return False
        return True

    def nemesis(self) -> None:
        if self.sim.now >= self.heal_at:
            return
        roll = self.rng.random()
        ids = self.names
        opt = self.opt
        if roll < 0.2 and opt.partitions and self.partitioned_since is None:
            kind = self.rng.choice(["halves", "one", "one-way"])
            if kind == "one":
                self.net.isolate(self.rng.choice(ids), ids)
            elif kind == "one-way":
                a, b = self.rng.sample(ids, 2)
                self.net.block(a, b)
            else:
                shuffled = self.rng.sample(ids, len(ids))
                cut = self.rng.randrange(1, len(ids))
                self.net.partition(shuffled[:cut], shuffled[cut:])
            self.partitioned_since = self.sim.now
            self.disturb_all()
            self.note(f"nemesis: partition {kind}")
            self.sim.schedule(self.rng.uniform(3, 20), self.heal_network)
        elif roll < 0.45 and opt.kills:
            up = [m for m in self.up() if m.name not in self.killed_at]
            if len(up) > 2:
                victim = self.rng.choice(up)
                self.kill(victim)
                self.kills += 1
                self.killed_at[victim.name] = self.sim.now
                self.suspected.discard(victim.name)
                self.convicted.discard(victim.name)
                self.sim.schedule(self.kill_bound, lambda: self.check_dead(victim))
        self.sim.schedule(self.rng.uniform(2, 8), self.nemesis)

    def heal_network(self) -> None:
        if self.partitioned_since is not None:
            self.net.heal()
            self.partitioned_since = None
            self.disturb_all()
            self.note("nemesis: network healed")

    def check_dead(self, victim: SimMember) -> None:
        """The bound has passed since ``victim`` was killed: every member must say dead."""
        if victim.name not in self.killed_at or victim.swim is not None:
            return  # healing restarted it first
        killed = self.killed_at.pop(victim.name)
        clean = self.partitioned_since is None and all(
            m.disturbed_at <= killed or m is victim for m in self.members.values()
        )
        for m in self.up():
            assert m.swim is not None
            seen = m.swim.member(victim.name)
            if clean and seen is not None and seen.state not in (State.DEAD, State.LEFT):
                self.fail(
                    f"{m.name} still sees killed {victim.name} as {seen.state.name.lower()} "
                    f"{self.kill_bound:.1f} s after the kill"
                )
        self.start(victim, self.names)
        self.note(f"{victim.name} restarts")

    def heal(self) -> None:
        self.note("heal: network healed, every member up, no more faults")
        self.heal_network()
        self.net.faults = NetworkFaults()
        self.lossy = {}
        for m in self.members.values():
            if m.swim is None:
                self.killed_at.pop(m.name, None)
                self.start(m, self.names)
        self.sim.schedule(0.0, self.watch_convergence)

    def watch_convergence(self) -> None:
        if self.converged_at is not None:
            return
        if self.views_converged():
            self.converged_at = self.sim.now
            self.note("views converged")
            return
        self.sim.schedule(0.1, self.watch_convergence)


def _nondefault(options: object, defaults: object) -> dict[str, object]:
    return {
        f.name: getattr(options, f.name)
        for f in dataclasses.fields(options)  # type: ignore[arg-type]  # a dataclass instance
        if getattr(options, f.name) != getattr(defaults, f.name)
    }


def converge_bound(config: Config) -> float:
    """Reconnect finds one dead-believed member per interval; its refutation then gossips."""
    return 3 * config.reconnect_interval + config.push_pull_interval + 10 * config.probe_interval


def run_swim(seed: int, options: SwimOptions | None = None) -> SwimResult:
    options = options or SwimOptions()
    world = SwimEngine(seed, options)
    sim = world.sim
    first = world.members[world.names[0]]
    world.start(first, [])
    for name in world.names[1:]:
        world.start(world.members[name], [first.name])
    if options.lossy_node:
        world.lossy = {world.names[0]: options.lossy_node}
    sim.schedule(world.rng.uniform(5, 10), world.nemesis)
    sim.schedule(options.faults_for, world.heal)
    problem = ""
    try:
        sim.run_until(options.faults_for + options.heal_for)
        limit = converge_bound(world.config)
        took = None if world.converged_at is None else world.converged_at - world.heal_at
        if took is None or took > limit:
            problem = (
                f"liveness: views did not converge within {limit:.1f} s of healing "
                f"(took {'never' if took is None else f'{took:.1f} s'})"
            )
    except SafetyViolation as exc:
        problem = str(exc)
    return SwimResult(
        seed=seed,
        replay=sim.replay_line(),
        ok=not problem,
        problem=problem,
        steps=sim.steps,
        sim_seconds=sim.now,
        kills=world.kills,
        false_dead=world.false_dead,
        dead_everywhere=world.dead_everywhere,
        first_suspicion=world.first_suspicion,
        converged_after=-1.0 if world.converged_at is None else world.converged_at - world.heal_at,
        messages=world.net.stats.sent,
        events=world.log,
    )


@dataclass
class KillFigures:
    first_suspicion: list[float]
    dead_everywhere: list[float]
    false_dead: int
    packets: int


def measure_kills(
    seed: int,
    nodes: int,
    kills: int,
    preset: Literal["lan", "local", "test"] = "lan",
    drop: float = 0.0,
) -> KillFigures:
    """Kill one member at a time in an otherwise healthy cluster; time the first suspicion
    and the moment every other member says dead, then restart it and let views reconverge."""
    options = SwimOptions(
        nodes=nodes, preset=preset, partitions=False, kills=False, drop=drop, duplicate=0.0,
        slow=0.0, faults_for=0.0,
    )  # fmt: skip
    world = SwimEngine(seed, options)
    sim = world.sim
    first = world.members[world.names[0]]
    world.start(first, [])
    for name in world.names[1:]:
        world.start(world.members[name], [first.name])
    sim.run_until(20.0)
    for _ in range(kills):
        # A random phase: kills on a fixed grid would sample only a few phases of each
        # survivor's probe schedule and bias the figures of one seed.
        sim.run_until(sim.now + world.rng.uniform(0.0, 1.0))
        victim = world.members[world.rng.choice(world.names)]
        world.kill(victim)
        world.killed_at[victim.name] = sim.now
        world.suspected.discard(victim.name)
        world.convicted.discard(victim.name)
        deadline = sim.now + 120.0
        while victim.name not in world.convicted and sim.now < deadline:
            sim.run_until(sim.now + 0.5)
        world.killed_at.pop(victim.name, None)
        world.start(victim, world.names)
        world.converged_at = None
        sim.schedule(0.0, world.watch_convergence)
        sim.run_until(sim.now + 30.0)
    return KillFigures(
        world.first_suspicion, world.dead_everywhere, world.false_dead, world.net.stats.sent
    )


def measure_lossy_member(seed: int, nodes: int, loss: float, seconds: float) -> int:
    """False convictions while one member loses ``loss`` of its packets both ways."""
    options = SwimOptions(
        nodes=nodes, partitions=False, kills=False, drop=0.0, duplicate=0.0, slow=0.0,
        lossy_node=loss, faults_for=seconds, heal_for=0.0,
    )  # fmt: skip
    result = run_swim(seed, options)
    return result.false_dead if result.ok or result.false_dead else -1


# =============================================================================== KV engine


@dataclass(frozen=True)
class KvOptions:
    nodes: int = 5
    n: int = 3
    r: int = 2
    w: int = 2
    conflicts: Literal["siblings", "lww"] = "siblings"
    faults_for: float = 30.0
    heal_for: float = 60.0
    drop: float = 0.02
    duplicate: float = 0.02
    slow: float = 0.05
    partitions: bool = True
    crashes: bool = True
    clients: int = 4
    keys: int = 4
    ae_interval: float = 5.0
    handoff_interval: float = 2.0
    request_timeout: float = 1.0
    replica_timeout: float = 0.25
    grace: float = 3600.0  # tombstone grace period
    skew: float = 0.0  # n1's wall clock runs this many seconds behind (lww's anomaly)


# What nodes and clients exchange (the simulator's stand-ins for the HTTP API and RPCs).
@dataclass(frozen=True)
class ClientPut:
    req: int
    client: str
    key: str
    value: bytes | None
    context: Context


@dataclass(frozen=True)
class ClientGet:
    req: int
    client: str
    key: str


@dataclass(frozen=True)
class ClientReply:
    req: int
    ok: bool
    obj: Versioned
    dot: Dot | None = None


@dataclass(frozen=True)
class Replicate:
    req: int
    key: str
    obj: Versioned
    hint_for: str | None


@dataclass(frozen=True)
class ReplicateAck:
    req: int
    key: str


@dataclass(frozen=True)
class Fetch:
    req: int
    key: str


@dataclass(frozen=True)
class FetchReply:
    req: int
    key: str
    obj: Versioned


@dataclass(frozen=True)
class Handoff:
    key: str
    obj: Versioned
    digest: bytes


@dataclass(frozen=True)
class HandoffAck:
    owner: str
    key: str
    digest: bytes


@dataclass(frozen=True)
class AeTree:
    hashes: bytes  # the sender's tree over keys both should hold (MerkleTree.hashes)


@dataclass(frozen=True)
class AeRepair:
    leaves: tuple[int, ...]
    objects: tuple[tuple[str, Versioned], ...]
    answer: bool  # the receiver sends its objects for the same leaves back


AE_LEAVES = 64


@dataclass
class KvNode:
    """A store node's durable state (store, hints, actor epoch) and its in-flight requests."""

    name: str
    store: dict[str, Versioned] = field(default_factory=dict)
    hints: HintStore = field(default_factory=HintStore)
    epochs: LamportClock = field(default_factory=LamportClock)
    puts: dict[int, tuple[PutRequest, str, int, Dot | None]] = field(default_factory=dict)
    gets: dict[int, tuple[GetRequest, str, int]] = field(default_factory=dict)


@dataclass
class ClientOp:
    client: str
    kind: str  # put, delete, get
    key: str
    value: bytes | None
    context: Context
    status: str = "pending"  # ok, failed (in doubt for writes)
    dot: Dot | None = None
    blind: bool = False  # written without the client's context: a writer of its own


@dataclass
class KvResult:
    seed: int
    replay: str
    ok: bool
    problem: str = ""
    steps: int = 0
    sim_seconds: float = 0.0
    acked_writes: int = 0
    failed_writes: int = 0
    reads: int = 0
    max_siblings: int = 0
    hinted: int = 0
    converged_after: float = -1.0
    shipped_keys: int = 0
    lost_writes: int = 0
    events: list[str] = field(default_factory=list)

    def report(self) -> str:
        summary = (
            f"steps: {self.steps}, simulated "
            f"{self.sim_seconds:.1f} s, {self.acked_writes} writes acknowledged "
            f"({self.lost_writes} lost), "
            f"{self.failed_writes} in doubt, {self.reads} reads, {self.hinted} hints written, "
            f"at most {self.max_siblings} siblings, replicas converged "
            f"{self.converged_after:.2f} s after healing"
        )
        return report(self.ok, self.problem, self.replay, summary, self.events)


class KvWorld(SwimWorld):
    def __init__(self, seed: int, options: KvOptions) -> None:
        sim = Simulation(seed, "kv", **_nondefault(options, KvOptions()))
        faults = NetworkFaults(
            drop=options.drop, duplicate=options.duplicate, slow=options.slow, slow_delay=0.3
        )
        names = [f"n{i}" for i in range(1, options.nodes + 1)]
        super().__init__(sim, names, PRESETS["lan"], faults)
        self.opt = options
        self.quorum = Quorum(options.n, options.r, options.w).validate(options.nodes)
        self.ring = Ring(names, 64)
        self.kv = {n: KvNode(n, hints=HintStore(options.conflicts)) for n in names}
        self.merge = merger(options.conflicts)
        self.clients = [f"c{i}" for i in range(1, options.clients + 1)]
        self.keys = [f"k{i}" for i in range(options.keys)]
        self.ops: dict[int, ClientOp] = {}
        self.client_ctx: dict[tuple[str, str], Context] = {}
        self.req = 0
        self.heal_at = options.faults_for
        self.healed = False
        self.hinted = 0
        self.shipped = 0
        self.check_false_dead = False  # crashes and partitions are the point here
        self.converged_at: float | None = None
        self.lost_writes = 0  # acknowledged, never superseded, gone (LWW's anomaly)

    # ------------------------------------------------------------------ helpers

    def healthy_for(self, node: str) -> Callable[[str], bool]:
        swim = self.members[node].swim

        def ok(other: str) -> bool:
            if other == node:
                return True
            if swim is None:
                return False
            m = swim.member(other)
            return m is not None and m.state == State.ALIVE

        return ok

    def wall(self, node: str) -> float:
        return self.sim.now - (self.opt.skew if node == "n1" else 0.0)

    def local(self, node: KvNode, key: str) -> Versioned:
        return self.merge(node.store.get(key, EMPTY), node.hints.for_key(key))

    def store(
        self, node: KvNode, key: str, obj: Versioned, hint_for: str | None, actor: str = ""
    ) -> Versioned:
        """Merge ``obj`` into the node's copy (or its hint); ``actor`` only for local writes."""
        if hint_for is not None and hint_for != node.name:
            if not node.hints.for_key(key).siblings and key not in node.store:
                self.hinted += 1
            return node.hints.add(hint_for, key, obj)
        local = node.store.get(key, EMPTY)
        merged = self.merge(local, obj)
        node.store[key] = Versioned(merged.siblings, merged.context, actor or local.actor)
        return merged

    def node_send(self, frm: str, to: str, message: object) -> None:
        if to.startswith("c") or frm.startswith("c"):
            # clients talk to nodes over a reliable local link (the HTTP API on the same host)
            self.sim.schedule(0.0005, lambda: self._deliver(frm, to, message))
            return
        self.send(frm, to, message)

    # ------------------------------------------------------------------ delivery

    def _deliver(self, frm: Hashable, to: Hashable, message: object) -> None:
        dest = str(to)
        if dest.startswith("c"):
            self.client_reply(dest, message)
            return
        m = self.members.get(dest)
        if m is None or m.swim is None:
            return
        if isinstance(message, (Ping, IndirectPing, Ack, Nack, Gossip, PushPull)):
            self.deliver(m, str(frm), message)
        else:
            self.on_kv(self.kv[dest], str(frm), message)

    def on_kv(self, node: KvNode, frm: str, msg: object) -> None:
        now = self.sim.now
        if isinstance(msg, ClientPut):
            self.coordinate_put(node, frm, msg)
        elif isinstance(msg, ClientGet):
            targets = self.ring.preference_list(msg.key, self.quorum.n, self.healthy_for(node.name))
            self.req += 1
            g = GetRequest(msg.key, targets, self.quorum.r, now, self.opt.request_timeout,
                           self.opt.conflicts)  # fmt: skip
            node.gets[self.req] = (g, msg.client, msg.req)
            for t in targets:
                if t == node.name:
                    g.reply(t, self.local(node, msg.key), now)
                else:
                    self.send(node.name, t, Fetch(self.req, msg.key))
            self.sim.schedule(self.opt.request_timeout, lambda: self.expire(node))
            self.settle(node)
        elif isinstance(msg, Replicate):
            self.store(node, msg.key, msg.obj, msg.hint_for)
            self.send(node.name, frm, ReplicateAck(msg.req, msg.key))
        elif isinstance(msg, ReplicateAck):
            entry = node.puts.get(msg.req)
            if entry is not None:
                entry[0].ack(frm, now)
                self.settle(node)
        elif isinstance(msg, Fetch):
            self.send(node.name, frm, FetchReply(msg.req, msg.key, self.local(node, msg.key)))
        elif isinstance(msg, FetchReply):
            got = node.gets.get(msg.req)
            if got is not None:
                got[0].reply(frm, msg.obj, now)
                self.settle(node)
        elif isinstance(msg, Handoff):
            self.store(node, msg.key, msg.obj, None)
            self.send(node.name, frm, HandoffAck(node.name, msg.key, msg.digest))
        elif isinstance(msg, HandoffAck):
            node.hints.delivered(msg.owner, msg.key, msg.digest)
        elif isinstance(msg, AeTree):
            self.ae_answer(node, frm, msg)
        elif isinstance(msg, AeRepair):
            for key, obj in msg.objects:
                self.store(node, key, obj, None)
            self.shipped += len(msg.objects)
            if msg.answer:
                mine = self.ae_objects(node, frm, msg.leaves)
                self.send(node.name, frm, AeRepair(msg.leaves, mine, answer=False))

    # ------------------------------------------------------------------ coordination

    def coordinate_put(self, node: KvNode, client: str, msg: ClientPut) -> None:
        now = self.sim.now
        healthy = self.healthy_for(node.name)
        targets = sloppy_targets(self.ring, msg.key, self.quorum.n, healthy)
        mine = next((t for t in targets if t.node == node.name), None)
        if mine is None:
            if targets:  # only a replica may issue a dot for the key: forward to one
                self.send(node.name, targets[0].node, msg)
            return
        if mine.hint_for is None:
            local = node.store.get(msg.key, EMPTY)
            actor = local.actor or f"{node.name}.{node.epochs.tick()}"
        else:  # a stand-in: its hint is forgotten after handoff, so a one-write actor
            local = node.hints.for_key(msg.key)
            actor = f"{node.name}.{node.epochs.tick()}"
        obj = new_version(local, msg.context, actor, msg.value, self.wall(node.name),
                          self.opt.conflicts)  # fmt: skip
        # Durable locally before anything is sent: the dot must never be issued twice.
        stored = self.store(node, msg.key, obj, mine.hint_for, actor)
        dot = max((s.dot for s in obj.siblings if s.dot.actor == actor), default=None)
        self.req += 1
        req = PutRequest(msg.key, stored, node.name, targets, self.ring.walk(msg.key),
                         self.quorum.w, now, self.opt.request_timeout,
                         self.opt.replica_timeout)  # fmt: skip
        node.puts[self.req] = (req, client, msg.req, dot)
        for t in req.start():
            self.send(node.name, t.node, Replicate(self.req, msg.key, stored, t.hint_for))
        self.sim.schedule(self.opt.replica_timeout, lambda: self.escalate(node, self.req))
        self.sim.schedule(self.opt.request_timeout, lambda: self.expire(node))
        self.settle(node)

    def escalate(self, node: KvNode, req_id: int) -> None:
        entry = node.puts.get(req_id)
        if entry is None or self.members[node.name].swim is None:
            return
        req = entry[0]
        for t in req.tick(self.sim.now, self.healthy_for(node.name)):
            self.send(node.name, t.node, Replicate(req_id, req.key, req.obj, t.hint_for))
        if req.outcome == "pending":
            self.sim.schedule(self.opt.replica_timeout, lambda: self.escalate(node, req_id))
        self.settle(node)

    def expire(self, node: KvNode) -> None:
        now = self.sim.now
        for entry in node.puts.values():
            entry[0].expire(now)
        for got in node.gets.values():
            got[0].tick(now)
        self.settle(node)

    def settle(self, node: KvNode) -> None:
        if self.members[node.name].swim is None:
            return
        for rid in sorted(node.puts):
            req, client, creq, dot = node.puts[rid]
            if req.outcome != "pending":
                del node.puts[rid]
                self.node_send(
                    node.name, client, ClientReply(creq, req.outcome == "ok", req.obj, dot)
                )
        for rid in sorted(node.gets):
            g, client, creq = node.gets[rid]
            if g.outcome != "pending":
                del node.gets[rid]
                self.node_send(node.name, client, ClientReply(creq, g.outcome == "ok", g.merged))
                home = self.ring.home(g.key, self.quorum.n)
                for stale in g.repairs():  # read repair, of home replicas (stand-ins hand off)
                    if stale in home:
                        self.send(node.name, stale, Replicate(0, g.key, g.merged, None))

    # ------------------------------------------------------------------ background work

    def handoff(self, name: str) -> None:
        node = self.kv[name]
        if self.members[name].swim is not None:
            for owner, key, obj in node.hints.due(self.healthy_for(name)):
                self.send(name, owner, Handoff(key, obj, versions.digest(obj)))
        self.sim.schedule(self.opt.handoff_interval, lambda: self.handoff(name))

    def shared_tree(self, node: KvNode, peer: str) -> MerkleTree:
        items = [
            (k, versions.digest(obj))
            for k, obj in sorted(node.store.items())
            if peer in self.ring.home(k, self.quorum.n)
        ]
        return MerkleTree.build(items, AE_LEAVES)

    def anti_entropy(self, name: str) -> None:
        node = self.kv[name]
        if self.members[name].swim is not None:
            now = self.sim.now
            for key in sorted(node.store):
                if versions.reapable(node.store[key], now, self.opt.grace):
                    del node.store[key]
            healthy = self.healthy_for(name)
            for peer in self.names:
                if peer != name and healthy(peer):
                    tree = self.shared_tree(node, peer)
                    self.send(name, peer, AeTree(tree.hashes()))
        self.sim.schedule(self.opt.ae_interval, lambda: self.anti_entropy(name))

    def ae_answer(self, node: KvNode, frm: str, msg: AeTree) -> None:
        mine = self.shared_tree(node, frm)
        theirs = MerkleTree.peer_view(msg.hashes)
        leaves = tuple(diff(mine, theirs))
        if leaves:
            objects = self.ae_objects(node, frm, leaves)
            self.send(node.name, frm, AeRepair(leaves, objects, answer=True))

    def ae_objects(
        self, node: KvNode, peer: str, leaves: Sequence[int]
    ) -> tuple[tuple[str, Versioned], ...]:
        tree = self.shared_tree(node, peer)
        return tuple((k, node.store[k]) for leaf in leaves for k in tree.keys_in(leaf))

    # ------------------------------------------------------------------ clients

    def client_step(self, client: str) -> None:
        if self.sim.now >= self.heal_at:
            return  # clients stop at healing so convergence is measured on a quiet store
        rng = self.rng
        key = rng.choice(self.keys)
        roll = rng.random()
        ctx = self.client_ctx.get((client, key), ())
        self.req += 1
        seq = self.req
        if roll < 0.4:
            op = ClientOp(client, "get", key, None, ())
            msg: object = ClientGet(seq, client, key)
        else:
            if roll < 0.5:
                ctx = ()  # a blind write: concurrent with everything it did not see
            kind = "delete" if roll > 0.85 else "put"
            value = None if kind == "delete" else f"{client}.{seq}".encode()
            op = ClientOp(client, kind, key, value, ctx, blind=roll < 0.5)
            msg = ClientPut(seq, client, key, value, ctx)
        self.ops[seq] = op
        self.node_send(client, rng.choice(self.names), msg)
        self.sim.schedule(2 * self.opt.request_timeout, lambda: self.client_timeout(seq))

    def client_reply(self, client: str, msg: object) -> None:
        if not isinstance(msg, ClientReply):
            return
        op = self.ops.get(msg.req)
        if op is None or op.status != "pending":
            return
        op.status = "ok" if msg.ok else "failed"
        op.dot = msg.dot
        if msg.ok:
            # The reply carries the body (Riak's return_body): the client has seen every
            # sibling in it, so its next write may supersede them.
            key = (client, op.key)
            self.client_ctx[key] = versions.join_contexts(
                self.client_ctx.get(key, ()), versions.context_of(msg.obj)
            )
        self.sim.schedule(self.rng.uniform(0.01, 0.1), lambda: self.client_step(client))

    def client_timeout(self, seq: int) -> None:
        op = self.ops[seq]
        if op.status == "pending":
            op.status = "failed"
            self.sim.schedule(0.0, lambda: self.client_step(op.client))

    # ------------------------------------------------------------------ nemesis

    def crash(self, name: str) -> None:
        m = self.members[name]
        if m.swim is None:
            return
        self.kill(m)
        node = self.kv[name]
        node.puts.clear()  # in-flight requests die with the process; the store is durable
        node.gets.clear()

    def nemesis(self) -> None:
        if self.sim.now >= self.heal_at:
            return
        roll = self.rng.random()
        ids = self.names
        if roll < 0.3 and self.opt.partitions:
            self.net.heal()
            shuffled = self.rng.sample(ids, len(ids))
            cut = self.rng.randrange(1, len(ids))
            self.net.partition(shuffled[:cut], shuffled[cut:])
            self.note(f"nemesis: partition {sorted(shuffled[:cut])} | {sorted(shuffled[cut:])}")
        elif roll < 0.45 and self.opt.partitions:
            self.net.heal()
            self.note("nemesis: heal network")
        elif roll < 0.65 and self.opt.crashes:
            name = self.rng.choice(ids)
            self.crash(name)
            down = self.rng.uniform(0.5, 8.0)
            self.sim.schedule(down, lambda: self.restart(name))
        self.sim.schedule(self.rng.uniform(1.0, 5.0), self.nemesis)

    def restart(self, name: str) -> None:
        m = self.members[name]
        if m.swim is None:
            self.start(m, self.names)
            self.note(f"{name} restarts")

    def heal(self) -> None:
        self.note("heal: network healed, every node up, no more faults")
        self.net.heal()
        self.net.faults = NetworkFaults()
        for name in self.names:
            self.restart(name)
        self.healed = True
        self.sim.schedule(0.0, self.watch)

    def watch(self) -> None:
        if self.converged_at is None and self.replicas_converged():
            self.converged_at = self.sim.now
            self.note("replicas converged, hint stores empty")
        self.sim.schedule(0.25, self.watch)

    # ------------------------------------------------------------------ checks

    def replicas_converged(self) -> bool:
        if any(len(n.hints) for n in self.kv.values()):
            return False
        for a in self.names:
            for b in self.names:
                if a < b:
                    ta = self.shared_tree(self.kv[a], b)
                    tb = self.shared_tree(self.kv[b], a)
                    if ta.root != tb.root:
                        return False
        return True

    def final_state(self, key: str) -> Versioned:
        return merge_all_with(
            self.merge,
            [self.kv[h].store.get(key, EMPTY) for h in self.ring.home(key, self.quorum.n)],
        )

    def final_checks(self, views_at: float | None) -> str:
        if views_at is None:
            return "liveness: membership views never converged after healing"
        leftover = {n: len(k.hints) for n, k in self.kv.items() if len(k.hints)}
        if leftover:
            return f"hint stores not empty after healing: {leftover}"
        if self.converged_at is None:
            return "replicas' Merkle roots still differ at the end of the run"
        limit = views_at + self.opt.handoff_interval + 2 * self.opt.ae_interval + 1.0
        if self.converged_at > limit:
            return (
                f"replicas converged {self.converged_at - views_at:.2f} s after the views did, "
                f"more than one handoff and 2 anti-entropy intervals "
                f"({limit - views_at:.2f} s)"
            )
        by_value = {op.value: op for op in self.ops.values() if op.kind == "put"}
        writes = [op for op in self.ops.values() if op.kind in ("put", "delete")]
        for key in self.keys:
            final = self.final_state(key)
            live = [s for s in final.siblings if s.value is not None]
            ctx_final = versions.vv(versions.context_of(final))
            present = {s.value for s in live}
            acked_by: dict[str, int] = {}
            for s in live:
                op = by_value.get(s.value)
                if op is None:
                    return f"{key}: sibling {s.value!r} was never written by any client"
                if op.status == "ok" and not op.blind:
                    acked_by[op.client] = acked_by.get(op.client, 0) + 1
            many = {c: n for c, n in sorted(acked_by.items()) if n > 1}
            if many and self.opt.conflicts == "siblings":
                return f"{key}: one client has several acknowledged siblings {many}"
            writers = {op.client for op in writes if op.key == key and not op.blind}
            doubtful = sum(1 for op in writes if op.key == key and (op.status != "ok" or op.blind))
            if len(live) > len(writers) + doubtful:
                return f"{key}: {len(live)} siblings from {len(writers)} writers"
            for op in writes:
                if op.key != key or op.status != "ok" or op.dot is None:
                    continue
                if op.kind == "delete":
                    seen = versions.vv(op.context)
                    for s in live:
                        if versions.covers(seen, s.dot):
                            return f"{key}: deleted value {s.value!r} came back (resurrected)"
                    continue
                if op.value in present:
                    continue
                superseded = any(
                    other.key == key and versions.covers(versions.vv(other.context), op.dot)
                    for other in writes
                )
                if not superseded:
                    self.lost_writes += 1
                if not superseded and self.opt.conflicts == "siblings":
                    return (
                        f"{key}: acknowledged write {op.value!r} (dot {op.dot.actor}:"
                        f"{op.dot.counter}) is lost; final context {ctx_final}"
                    )
        return ""


def merge_all_with(
    merge: Callable[[Versioned, Versioned], Versioned], objects: Sequence[Versioned]
) -> Versioned:
    out = EMPTY
    for obj in objects:
        out = merge(out, obj)
    return out


def run_kv(seed: int, options: KvOptions | None = None) -> KvResult:
    options = options or KvOptions()
    world = KvWorld(seed, options)
    sim = world.sim
    for name in world.names:
        world.start(world.members[name], world.names)
        sim.schedule(world.rng.uniform(0, options.handoff_interval), partial(world.handoff, name))
        sim.schedule(world.rng.uniform(0, options.ae_interval), partial(world.anti_entropy, name))
    sim.run_until(3.0)  # membership settles before clients start
    world.heal_at += sim.now
    for client in world.clients:
        world.client_step(client)
    sim.schedule(world.rng.uniform(1, 3), world.nemesis)
    sim.schedule(world.heal_at - sim.now, world.heal)
    views_at: float | None = None
    problem = ""
    try:
        end = world.heal_at + options.heal_for
        while sim.now < end:
            sim.run_until(min(end, sim.now + 0.25))
            if views_at is None and world.healed and world.views_converged():
                views_at = sim.now
        problem = world.final_checks(views_at)
    except SafetyViolation as exc:
        problem = str(exc)
    ops = list(world.ops.values())
    return KvResult(
        seed=seed,
        replay=sim.replay_line(),
        ok=not problem,
        problem=problem,
        steps=sim.steps,
        sim_seconds=sim.now,
        acked_writes=sum(1 for o in ops if o.kind != "get" and o.status == "ok"),
        failed_writes=sum(1 for o in ops if o.kind != "get" and o.status != "ok"),
        reads=sum(1 for o in ops if o.kind == "get" and o.status == "ok"),
        max_siblings=max(len(world.final_state(k).values) for k in world.keys),
        hinted=world.hinted,
        converged_after=-1.0 if world.converged_at is None else world.converged_at - world.heal_at,
        shipped_keys=world.shipped,
        lost_writes=world.lost_writes,
        events=world.log,
    )


# =============================================================================== entry point


def _parser(prog: str, options: type[object]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--seed", type=int, required=True)
    defaults = options()
    for f in dataclasses.fields(options):  # type: ignore[arg-type]  # a dataclass type
        default = getattr(defaults, f.name)
        kind: type[object] = type(default)
        flag = f"--{f.name.replace('_', '-')}"
        if kind is bool:
            parser.add_argument(
                flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=default
            )
        else:
            parser.add_argument(flag, type=kind, default=default)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m corral.sim.kv {swim,kv} --seed N [--option value ...]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    engine = args.pop(0) if args and not args[0].startswith("-") else "kv"
    if engine == "swim":
        ns = _parser("python -m corral.sim swim", SwimOptions).parse_args(args)
        fields = {f.name: getattr(ns, f.name) for f in dataclasses.fields(SwimOptions)}
        result = run_swim(ns.seed, SwimOptions(**fields))
        sys.stdout.write(result.report() + "\n")
        return 0 if result.ok else 1
    if engine == "kv":
        ns = _parser("python -m corral.sim kv", KvOptions).parse_args(args)
        fields = {f.name: getattr(ns, f.name) for f in dataclasses.fields(KvOptions)}
        kv_result = run_kv(ns.seed, KvOptions(**fields))
        sys.stdout.write(kv_result.report() + "\n")
        return 0 if kv_result.ok else 1
    sys.stdout.write(f"unknown engine {engine!r}: expected swim or kv\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
