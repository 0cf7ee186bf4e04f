"""Merkle trees over key ranges (Merkle 1987; Dynamo §4.7)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.kv import MerkleError, MerkleTree, diff, leaves_for


def items(n: int, version: bytes = b"v1") -> list[tuple[str, bytes]]:
    return [(f"key{i}", version) for i in range(n)]


def test_equal_ranges_have_equal_roots_whatever_the_insertion_order() -> None:
    data = items(500)
    a = MerkleTree.build(data, 256)
    b = MerkleTree.build(list(reversed(data)), 256)
    assert a.root == b.root and diff(a, b) == []


@settings(max_examples=40, deadline=None)
@given(st.sets(st.integers(0, 299), max_size=20), st.sets(st.integers(0, 299), max_size=5))
def test_diff_finds_exactly_the_leaves_holding_changed_or_missing_keys(
    changed: set[int], removed: set[int]
) -> None:
    a = MerkleTree.build(items(300), 64)
    b = MerkleTree.build(items(300), 64)
    for i in sorted(changed):
        b.update(f"key{i}", b"v2")
    for i in sorted(removed):
        b.update(f"key{i}", None)
    expected = sorted({a.leaf_of(f"key{i}") for i in changed | removed})
    assert diff(a, b) == expected


def test_incremental_updates_match_a_rebuild() -> None:
    a = MerkleTree.build(items(200), 128)
    a.update("key7", b"v9")
    a.update("new", b"v1")
    a.update("key3", None)
    data = [(k, b"v9" if k == "key7" else v) for k, v in items(200) if k != "key3"]
    assert a.root == MerkleTree.build([*data, ("new", b"v1")], 128).root
    assert len(a) == 200  # one added, one removed, one changed in place


def test_repairing_one_percent_divergence_ships_at_most_three_times_the_changed_keys() -> None:
    count = 20_000
    leaves = leaves_for(count)
    assert leaves >= count // 8
    a = MerkleTree.build(items(count), leaves)
    b = MerkleTree.build(items(count), leaves)
    changed = random.Random(1).sample(range(count), count // 100)
    for i in changed:
        b.update(f"key{i}", b"v2")
    shipped = sum(len(a.keys_in(leaf)) for leaf in diff(a, b))
    assert shipped <= 3 * len(changed)


def test_trees_of_different_sizes_cannot_be_compared() -> None:
    with pytest.raises(MerkleError):
        diff(MerkleTree(64), MerkleTree(128))
    with pytest.raises(MerkleError):
        MerkleTree(100)


def test_a_tree_sent_as_its_hashes_diffs_like_the_tree_itself() -> None:
    a = MerkleTree.build(items(300), 64)
    b = MerkleTree.build(items(300), 64)
    b.update("key5", b"v2")
    wire = b.hashes()
    assert len(wire) == 2 * 64 * 8  # one u64 per node: copied, not walked, on each exchange
    view = MerkleTree.peer_view(wire)
    assert view.leaves == 64 and view.root == b.root
    assert diff(a, view) == diff(a, b) == [a.leaf_of("key5")]


@pytest.mark.parametrize("size", [0, 8, 24, 7 * 8, 2 * 64 * 8 + 1])
def test_bytes_that_are_not_a_tree_are_refused(size: int) -> None:
    with pytest.raises(MerkleError, match="not the hashes of a tree"):
        MerkleTree.peer_view(bytes(size))
