"""Quorum coordination for the AP store: N/R/W, sloppy quorum, hinted handoff, read repair.

Theory of operation (Dynamo, DeCandia et al. 2007, §4.5–4.6; Riak KV; Aurora's 6/4/3 quorums):
- **Quorum.** A key lives on N nodes. A put is acknowledged once W of its targets report it
  *durable*; a get answers after R replies, merging them. With R + W > N every read quorum meets
  every write quorum (read-your-writes while the targets are the home nodes); R + W ≤ N is
  allowed but reported as not read-your-writes (``Quorum.read_your_writes``).
- **Sloppy quorum.** Targets are the first N *healthy* nodes of the key's ring walk, not the
  home nodes: a target outside the home list stands in for a skipped home node and keeps the
  write as a **hint** naming it (``sloppy_targets``). A target that does not answer within
  ``replica_timeout`` is replaced the same way by the next untried node of the walk
  (``PutRequest.tick``), so writes succeed on both sides of a partition.
- **Hinted handoff.** A hint is delivered when its owner is healthy again, and removed only if it
  did not change since it was sent (``HintStore.delivered`` compares digests); delivery is a
  merge, so repeats and duplicates are harmless and the hint store drains to empty.
- **Read repair.** After a get, every replier whose object differs from the merged one is sent
  the merged object (``GetRequest.repairs``), late repliers included.
- **Tombstones.** A delete is a write of a tombstone (``versions.write`` with ``None``), carried
  through the same quorum, hints and repairs; see ``versions.reapable`` for the grace period.

Every class here is a plain state machine: feed it replies and ``now``, read its decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, field
from typing import Literal

from corral.errors import UserError
from corral.kv import versions
from corral.kv.ring import Ring
from corral.kv.versions import Context, Value, Versioned

Conflicts = Literal["siblings", "lww"]


class InvalidQuorum(UserError):
    code = "invalid_quorum"


@dataclass(frozen=True)
class Quorum:
    n: int = 3
    r: int = 2
    w: int = 2

    def validate(self, nodes: int | None = None) -> Quorum:
        problems = []
        if self.n < 1:
            problems.append(f"n must be >= 1, got {self.n}")
        for name in ("r", "w"):
            value = getattr(self, name)
            if not 1 <= value <= self.n:
                problems.append(f"{name} must be between 1 and n ({self.n}), got {value}")
        if nodes is not None and self.n > nodes:
            problems.append(f"n ({self.n}) is more than the {nodes} nodes of the ring")
        if problems:
            raise InvalidQuorum(
                "kv quorum: " + "; ".join(problems),
                "pick r + w > n for read-your-writes, e.g. n=3 r=2 w=2 or Aurora's n=6 w=4 r=3",
            )
        return self

    @property
    def read_your_writes(self) -> bool:
        return self.r + self.w > self.n

    @property
    def warning(self) -> str:
        if self.read_your_writes:
            return ""
        return (
            f"r + w = {self.r + self.w} ≤ n = {self.n}: a read quorum may miss every node of the "
            "last write quorum, so reads may not see acknowledged writes (not read-your-writes)"
        )


AURORA = Quorum(n=6, r=3, w=4)


@dataclass(frozen=True)
class Target:
    node: str
    hint_for: str | None = None  # the home node this target stands in for


def sloppy_targets(
    ring: Ring, key: str, n: int, healthy: Container[str] | Callable[[str], bool]
) -> list[Target]:
    """The first ``n`` healthy nodes of the walk; stand-ins carry the home node they replace."""
    home = ring.home(key, n)
    chosen = ring.preference_list(key, n, healthy)
    missing = [h for h in home if h not in chosen]
    out = []
    for node in chosen:
        if node in home:
            out.append(Target(node))
        else:
            out.append(Target(node, missing.pop(0) if missing else None))
    return out


def new_version(
    local: Versioned,
    context: Context,
    actor: str,
    value: Value,
    stamp: float,
    conflicts: Conflicts = "siblings",
) -> Versioned:
    if conflicts == "lww":
        return versions.lww_write(local, actor, value, stamp)
    return versions.write(local, context, actor, value, stamp)


def merger(conflicts: Conflicts) -> Callable[[Versioned, Versioned], Versioned]:
    return versions.lww_merge if conflicts == "lww" else versions.merge


Outcome = Literal["pending", "ok", "failed"]


@dataclass
class _Slot:
    target: Target
    sent_at: float
    acked: bool = False
    replaced: bool = False


class PutRequest:
    """One put (or delete) at its coordinator. The coordinator already wrote ``obj`` locally
    and durably if it is a target; ``start`` lists the replicas to send it to."""

    def __init__(
        self,
        key: str,
        obj: Versioned,
        coordinator: str,
        targets: Sequence[Target],
        walk: Sequence[str],
        w: int,
        now: float,
        timeout: float,
        replica_timeout: float,
    ) -> None:
        self.key = key
        self.obj = obj
        self.w = w
        self.deadline = now + timeout
        self.replica_timeout = replica_timeout
        self._walk = list(walk)
        self._tried = {t.node for t in targets}
        self._slots = [_Slot(t, now) for t in targets]
        self._outcome: Outcome = "pending"
        for slot in self._slots:
            if slot.target.node == coordinator:
                slot.acked = True
        self._decide(now)

    @property
    def outcome(self) -> Outcome:
        return self._outcome

    def start(self) -> list[Target]:
        return [s.target for s in self._slots if not s.acked]

    @property
    def acks(self) -> int:
        return sum(1 for s in self._slots if s.acked)

    def ack(self, node: str, now: float) -> None:
        for slot in self._slots:
            if slot.target.node == node:
                slot.acked = True
        self._decide(now)

    def tick(self, now: float, healthy: Callable[[str], bool]) -> list[Target]:
        """Replace silent targets with the next untried healthy node of the walk."""
        extra: list[Target] = []
        if self.outcome != "pending":
            return extra
        for slot in list(self._slots):
            if slot.acked or slot.replaced or now - slot.sent_at < self.replica_timeout:
                continue
            nxt = next((n for n in self._walk if n not in self._tried and healthy(n)), None)
            if nxt is None:
                break
            slot.replaced = True
            self._tried.add(nxt)
            owner = slot.target.hint_for or slot.target.node
            target = Target(nxt, owner if owner != nxt else None)
            self._slots.append(_Slot(target, now))
            extra.append(target)
        self._decide(now)
        return extra

    def expire(self, now: float) -> None:
        """Decide at the deadline even when no reply arrives."""
        self._decide(now)

    def _decide(self, now: float) -> None:
        if self._outcome != "pending":
            return
        if self.acks >= self.w:
            self._outcome = "ok"
        elif now >= self.deadline:
            self._outcome = "failed"


class GetRequest:
    """One get at its coordinator: R replies, merged; read repair for stale repliers."""

    def __init__(
        self,
        key: str,
        targets: Sequence[str],
        r: int,
        now: float,
        timeout: float,
        conflicts: Conflicts = "siblings",
    ) -> None:
        self.key = key
        self.targets = list(targets)
        self.r = r
        self.deadline = now + timeout
        self.replies: dict[str, Versioned] = {}
        self._merge = merger(conflicts)
        self._outcome: Outcome = "pending"
        self.merged = versions.EMPTY

    @property
    def outcome(self) -> Outcome:
        return self._outcome

    def reply(self, node: str, obj: Versioned, now: float) -> None:
        if node in self.replies:
            return
        self.replies[node] = obj
        self.merged = self._merge(self.merged, obj)
        self.tick(now)

    def tick(self, now: float) -> None:
        if self._outcome == "pending":
            if len(self.replies) >= self.r:
                self._outcome = "ok"
            elif now >= self.deadline:
                self._outcome = "failed"

    def repairs(self) -> list[str]:
        """Repliers whose copy is not the merged object (call again after late replies)."""
        want = versions.digest(self.merged)
        return [n for n in sorted(self.replies) if versions.digest(self.replies[n]) != want]


@dataclass
class HintStore:
    """Writes held for unreachable home nodes: (owner, key) → object, merged on arrival."""

    conflicts: Conflicts = "siblings"
    hints: dict[tuple[str, str], Versioned] = field(default_factory=dict)

    def add(self, owner: str, key: str, obj: Versioned) -> Versioned:
        merged = merger(self.conflicts)(self.hints.get((owner, key), versions.EMPTY), obj)
        self.hints[(owner, key)] = merged
        return merged

    def for_key(self, key: str) -> Versioned:
        out = versions.EMPTY
        for (_, k), obj in sorted(self.hints.items()):
            if k == key:
                out = merger(self.conflicts)(out, obj)
        return out

    def due(self, healthy: Callable[[str], bool]) -> list[tuple[str, str, Versioned]]:
        return [(o, k, obj) for (o, k), obj in sorted(self.hints.items()) if healthy(o)]

    def delivered(self, owner: str, key: str, digest: bytes) -> bool:
        """The owner stored the hint as it was when sent: drop it (unless it changed since)."""
        obj = self.hints.get((owner, key))
        if obj is not None and versions.digest(obj) == digest:
            del self.hints[(owner, key)]
            return True
        return False

    def __len__(self) -> int:
        return len(self.hints)
