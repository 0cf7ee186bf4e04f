"""Consistent hashing with virtual nodes (Karger et al.; Dynamo §4.2–4.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.kv import Ring, RingError

NODES = [f"n{i}" for i in range(1, 9)]


def test_preference_list_is_the_first_n_distinct_nodes_of_the_walk() -> None:
    ring = Ring(NODES, 64)
    for i in range(200):
        prefs = ring.preference_list(f"key{i}", 3)
        assert len(prefs) == len(set(prefs)) == 3
        assert prefs[0] == ring.owner(f"key{i}")
        assert tuple(prefs) == ring.walk(f"key{i}")[:3] == ring.home(f"key{i}", 3)


def test_unhealthy_nodes_are_skipped_for_the_next_healthy_ones() -> None:
    ring = Ring(NODES, 64)
    for i in range(200):
        key = f"key{i}"
        down = ring.home(key, 3)[1]
        prefs = ring.preference_list(key, 3, lambda n, d=down: n != d)  # type: ignore[misc]
        assert down not in prefs and len(prefs) == 3
        assert prefs == [n for n in ring.walk(key) if n != down][:3]


def test_the_ring_does_not_depend_on_the_order_nodes_are_given() -> None:
    a, b = Ring(NODES, 32), Ring(list(reversed(NODES)), 32)
    assert all(a.preference_list(f"k{i}", 3) == b.preference_list(f"k{i}", 3) for i in range(100))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=40, unique=True))
def test_adding_a_node_moves_only_keys_it_now_owns(keys: list[str]) -> None:
    before = Ring(NODES, 32)
    after = Ring([*NODES, "n9"], 32)
    for key in keys:
        if before.owner(key) != after.owner(key):
            assert after.owner(key) == "n9"


def test_busiest_node_holds_at_most_1_15_times_its_share_with_256_vnodes() -> None:
    for count in (5, 10, 20):
        ring = Ring([f"node-{i}" for i in range(count)], 256)
        shares = ring.shares()
        assert abs(sum(shares.values()) - 1.0) < 1e-9
        assert max(shares.values()) * count <= 1.16  # primary ranges; replicas average better


def test_a_ring_needs_nodes_and_vnodes() -> None:
    with pytest.raises(RingError):
        Ring([], 8)
    with pytest.raises(RingError):
        Ring(["a"], 0)
