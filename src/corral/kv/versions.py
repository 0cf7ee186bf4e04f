"""Causality for the AP store: dotted version vectors, last-writer-wins, Lamport clocks.

Theory of operation (Preguiça, Baquero, Almeida et al., "Dotted Version Vectors", 2010/2012;
Almeida et al., "Scalable and Accurate Causality Tracking", 2014 — the DVV *set* / dotted
causal container; riak_kv's dvvset and Riak 2.0's per-key actor epochs):

A ``Versioned`` object holds its *siblings*, each tagged with the **dot** (actor, counter) of the
write that made it, and a *context*: a version vector of every dot the object has seen.
- ``write(local, client_context, actor, value)``: the coordinator issues the next dot of
  ``actor`` for this key and keeps only the local siblings the client did **not** see (dots not
  covered by its context). One client writing with the context it last read therefore replaces
  what it read and leaves concurrent writers' values as siblings: at most one sibling per
  concurrent writer, and a write with the latest context collapses them all.
- ``merge(a, b)``: a sibling survives if the other side has it too, or has not seen its dot.
  Merge is commutative, associative and idempotent (a join), so replicas may exchange objects
  in any order, any number of times (hinted handoff, read repair, anti-entropy).
- ``context_of(obj)`` is what a read returns and the next write sends back.

The contiguity rule that makes a vector (rather than a set of dots) a sound context: an actor
issues dots for a key only from a local copy holding that key's history, so dot (a, n) implies
the writer had seen (a, 1..n-1). So a home replica writes as an actor ``node.epoch`` kept with its
own copy of the key (``Versioned.actor``: local bookkeeping that ``merge`` never takes from the
other side), and takes a fresh epoch whenever it holds no copy (after a tombstone was reaped); a
stand-in holding a hint takes a fresh epoch for every write, since the hint is forgotten once
handed off. Old counters are never reused.

Deletes write a **tombstone** sibling (value ``None``) with the writer's timestamp; a key whose
siblings are all tombstones reads as not found but keeps its context, so a delete is ordered
like any write and is never undone by a stale replica. Tombstones may be reaped after a grace
period (``reapable``) longer than any replica stays unreachable (Cassandra's gc_grace).

**LWW mode** keeps one sibling: the write with the highest (timestamp, actor, counter). It needs
no context, but *timestamps come from the writers' wall clocks*: a writer whose clock runs
behind loses to an older write from a node whose clock runs ahead — an acknowledged write
silently disappears. ``tests/kv/test_versions.py`` shows it with a 5-second skew.

A node holds every object it stores in memory for as long as it runs, so ``Dot``, ``Sibling``
and ``Versioned`` are structs the cyclic collector never tracks (``gc=False``; they hold only
strings, numbers, bytes and tuples of them, so no cycle can run through one), and the tuples
holding them are untracked at their first collection. As dataclasses they were four tracked
objects per key: every full collection walked them, and those pauses of 10–40 ms, on either
survivor, were the tail of every write while a replica was down.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

Value = bytes | None  # None is a tombstone
Context = tuple[tuple[str, int], ...]  # a version vector, sorted by actor


class Dot(msgspec.Struct, frozen=True, order=True, gc=False):
    actor: str
    counter: int


class Sibling(msgspec.Struct, frozen=True, gc=False):
    dot: Dot
    value: Value
    stamp: float = 0.0  # the writer's wall clock: tombstone age, and LWW's order


class Versioned(msgspec.Struct, frozen=True, gc=False):
    """One key's object. Equality (and hash) ignore ``actor``, which is local bookkeeping."""

    siblings: tuple[Sibling, ...] = ()  # sorted by dot
    context: Context = ()
    actor: str = ""  # local: the actor this node writes as

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Versioned):
            return NotImplemented
        return self.siblings == other.siblings and self.context == other.context

    def __hash__(self) -> int:
        return hash((self.siblings, self.context))

    @property
    def exists(self) -> bool:
        return any(s.value is not None for s in self.siblings)

    @property
    def values(self) -> list[bytes]:
        return [s.value for s in self.siblings if s.value is not None]

    @property
    def empty(self) -> bool:
        return not self.siblings and not self.context


EMPTY = Versioned()


def vv(context: Context | Mapping[str, int]) -> dict[str, int]:
    return dict(context.items() if isinstance(context, Mapping) else context)


def _context(counts: Mapping[str, int]) -> Context:
    return tuple(sorted((a, c) for a, c in counts.items() if c > 0))


def join_contexts(*contexts: Context) -> Context:
    out: dict[str, int] = {}
    for ctx in contexts:
        for actor, counter in ctx:
            if counter > out.get(actor, 0):
                out[actor] = counter
    return _context(out)


def covers(context: Mapping[str, int], dot: Dot) -> bool:
    return dot.counter <= context.get(dot.actor, 0)


def descends(a: Context, b: Context) -> bool:
    """Context ``a`` has seen everything ``b`` has."""
    av = vv(a)
    return all(av.get(actor, 0) >= counter for actor, counter in b)


def context_of(obj: Versioned) -> Context:
    """What a read hands the client: every dot the object has seen, its siblings' included."""
    return join_contexts(obj.context, tuple((s.dot.actor, s.dot.counter) for s in obj.siblings))


def write(
    local: Versioned,
    client_context: Context,
    actor: str,
    value: Value,
    stamp: float = 0.0,
) -> Versioned:
    """A new version at the coordinator ``actor``: supersedes what ``client_context`` saw."""
    seen = vv(client_context)
    counter = vv(context_of(local)).get(actor, 0) + 1
    dot = Dot(actor, counter)
    kept = [s for s in local.siblings if not covers(seen, s.dot)]
    siblings = tuple(sorted([*kept, Sibling(dot, value, stamp)], key=lambda s: s.dot))
    context = join_contexts(local.context, client_context, ((actor, counter),))
    return Versioned(siblings, context, local.actor)


def merge(a: Versioned, b: Versioned) -> Versioned:
    """The join of two replicas' objects (commutative, associative, idempotent). Pass the
    local copy first: the result keeps ``a.actor`` — an actor never travels to another node."""
    if a.empty:
        return Versioned(b.siblings, b.context, a.actor)
    if b.empty:
        return a
    ac, bc = vv(context_of(a)), vv(context_of(b))
    a_dots = {s.dot for s in a.siblings}
    b_dots = {s.dot for s in b.siblings}
    kept: dict[Dot, Sibling] = {}
    for s in a.siblings:
        if s.dot in b_dots or not covers(bc, s.dot):
            kept[s.dot] = s
    for s in b.siblings:
        if s.dot in a_dots or not covers(ac, s.dot):
            kept.setdefault(s.dot, s)
    siblings = tuple(kept[d] for d in sorted(kept))
    return Versioned(siblings, join_contexts(a.context, b.context), a.actor)


def merge_all(objects: Iterable[Versioned]) -> Versioned:
    out = EMPTY
    for obj in objects:
        out = merge(out, obj)
    return out


# ----------------------------------------------------------------------------- last writer wins


def _lww_key(s: Sibling) -> tuple[float, str, int]:
    return (s.stamp, s.dot.actor, s.dot.counter)


def lww_write(local: Versioned, actor: str, value: Value, stamp: float) -> Versioned:
    """LWW: one sibling; the context only keeps dots unique. Ignores what the client saw."""
    counter = vv(context_of(local)).get(actor, 0) + 1
    mine = Sibling(Dot(actor, counter), value, stamp)
    return lww_merge(local, Versioned((mine,), ((actor, counter),), local.actor))


def lww_merge(a: Versioned, b: Versioned) -> Versioned:
    both = [*a.siblings, *b.siblings]
    winner = (max(both, key=_lww_key),) if both else ()
    return Versioned(winner, join_contexts(context_of(a), context_of(b)), a.actor)


# ----------------------------------------------------------------------------- helpers


def digest(obj: Versioned) -> bytes:
    """A canonical fingerprint (Merkle leaves, read-repair checks); ignores local ``actor``."""
    h = hashlib.blake2b(digest_size=8)
    for s in obj.siblings:
        h.update(f"{s.dot.actor}\0{s.dot.counter}\0{s.stamp!r}\0".encode())
        h.update(b"\1" if s.value is None else b"\2" + s.value)
    h.update(repr(obj.context).encode())
    return h.digest()


def reapable(obj: Versioned, now: float, grace: float) -> bool:
    """A tombstone-only object older than ``grace``: it may be forgotten."""
    return (
        bool(obj.siblings)
        and all(s.value is None for s in obj.siblings)
        and now - max(s.stamp for s in obj.siblings) >= grace
    )


@dataclass
class LamportClock:
    """Lamport's logical clock (1978): ``tick`` for a local event, ``observe`` on receipt."""

    time: int = 0

    def tick(self) -> int:
        self.time += 1
        return self.time

    def observe(self, other: int) -> int:
        self.time = max(self.time, other) + 1
        return self.time
