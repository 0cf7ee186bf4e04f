"""Dotted version vectors (Preguiça et al.; Almeida et al.'s DVV sets), LWW and Lamport."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.kv import EMPTY, LamportClock, Versioned, context_of, merge, write
from corral.kv.versions import descends, digest, lww_merge, lww_write, reapable


def test_concurrent_writers_make_one_sibling_each_and_a_write_with_context_collapses_them() -> None:
    base = write(EMPTY, (), "a.1", b"v0")
    ctx = context_of(base)
    # three clients read ctx, then write concurrently through the same coordinator
    obj = base
    for i, value in enumerate([b"x", b"y", b"z"]):
        obj = write(obj, ctx, "a.1", value, float(i))
    assert sorted(obj.values) == [b"x", b"y", b"z"]  # v0 superseded, one sibling per writer
    resolved = write(obj, context_of(obj), "a.1", b"merged")
    assert resolved.values == [b"merged"]


def test_a_client_rewriting_with_its_own_context_never_piles_up_siblings() -> None:
    obj = EMPTY
    ctx: tuple[tuple[str, int], ...] = ()
    for i in range(20):
        obj = write(obj, ctx, "a.1", f"v{i}".encode())
        ctx = context_of(obj)
    assert obj.values == [b"v19"]


def test_writes_on_both_sides_of_a_partition_come_back_as_siblings() -> None:
    base = write(EMPTY, (), "a.1", b"v0")
    left = write(base, context_of(base), "a.1", b"left")
    right = write(base, context_of(base), "b.1", b"right")
    healed = merge(left, right)
    assert sorted(healed.values) == [b"left", b"right"]
    assert write(healed, context_of(healed), "a.1", b"one").values == [b"one"]


def test_a_delete_is_a_tombstone_that_stale_replicas_cannot_undo() -> None:
    v = write(EMPTY, (), "a.1", b"v", 1.0)
    deleted = write(v, context_of(v), "b.1", None, 2.0)
    assert not deleted.exists and deleted.values == []
    assert not merge(v, deleted).exists and not merge(deleted, v).exists
    assert not reapable(deleted, 5.0, grace=10.0) and reapable(deleted, 12.0, grace=10.0)


def test_the_local_actor_never_travels_in_a_merge() -> None:
    mine = Versioned((), (), actor="me.1")
    theirs = write(Versioned((), (), actor="them.4"), (), "them.4", b"x")
    assert merge(mine, theirs).actor == "me.1"


def test_lww_loses_a_causally_later_write_from_a_node_whose_clock_runs_behind() -> None:
    # n2's clock is right (t=10); n1's runs 5 s behind. A client reads n2's write, then writes
    # through n1 at real time 12: stamped 7, it loses to the older write. Acknowledged, gone.
    first = lww_write(EMPTY, "n2.1", b"old", stamp=10.0)
    later = lww_write(first, "n1.1", b"new", stamp=12.0 - 5.0)
    assert merge_lww(first, later).values == [b"old"]
    # Dotted version vectors keep causality instead of clocks: the later write wins.
    d_first = write(EMPTY, (), "n2.1", b"old", 10.0)
    d_later = write(d_first, context_of(d_first), "n1.1", b"new", 7.0)
    assert merge(d_first, d_later).values == [b"new"]


def merge_lww(a: Versioned, b: Versioned) -> Versioned:
    return lww_merge(a, b)


def test_lamport_clock_orders_send_before_receive() -> None:
    a, b = LamportClock(), LamportClock()
    sent = a.tick()
    assert b.observe(sent) > sent
    assert b.tick() > sent


# ----------------------------------------------------------------------------- algebra

OPS = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans(), st.integers(0, 2)),
    min_size=1,
    max_size=10,
)


def replicas_from(ops: list[tuple[str, bool, int]]) -> list[Versioned]:
    """Three replicas; each op writes at one of them, with or without reading another first."""
    reps = {"a": EMPTY, "b": EMPTY, "c": EMPTY}
    for i, (at, read_first, src) in enumerate(ops):
        ctx = context_of(reps["abc"[src]]) if read_first else ()
        if read_first:
            reps[at] = merge(reps[at], reps["abc"[src]])
        reps[at] = write(reps[at], ctx, f"{at}.1", f"{at}{i}".encode())
    return list(reps.values())


def same(x: Versioned, y: Versioned) -> bool:
    return digest(x) == digest(y)


@settings(max_examples=80, deadline=None)
@given(OPS)
def test_merge_is_commutative_associative_and_idempotent(ops: list[tuple[str, bool, int]]) -> None:
    a, b, c = replicas_from(ops)
    assert same(merge(a, b), merge(b, a))
    assert same(merge(merge(a, b), c), merge(a, merge(b, c)))
    assert same(merge(a, a), a)
    m = merge(merge(a, b), c)
    assert descends(context_of(m), context_of(a))


@settings(max_examples=80, deadline=None)
@given(OPS)
def test_siblings_never_outnumber_writers_and_the_latest_context_collapses_them(
    ops: list[tuple[str, bool, int]],
) -> None:
    a, b, c = replicas_from(ops)
    merged = merge(merge(a, b), c)
    assert len(merged.siblings) <= len(ops)  # every op is one writer
    assert len({s.dot for s in merged.siblings}) == len(merged.siblings)
    assert write(merged, context_of(merged), "a.1", b"final").values == [b"final"]
