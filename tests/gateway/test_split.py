"""Traffic split: targeting first, sticky buckets per user, weights, mirroring."""

from __future__ import annotations

from random import Random

import pytest

from corral.gateway.split import Target, TrafficSplit, bucket_of


def _none(name: str) -> str | None:
    return None


def test_a_targeting_header_or_cookie_wins_over_weights() -> None:
    split = TrafficSplit(
        "orders",
        [("canary", 0), ("stable", 100)],
        [Target("canary", "1", header="x-canary"), Target("canary", "yes", cookie="beta")],
    )
    rng = Random(1)
    assert split.choose("u1", {"x-canary": "1"}.get, _none, rng) == "canary"
    assert split.choose("u1", _none, {"beta": "yes"}.get, rng) == "canary"
    assert split.choose("u1", {"x-canary": "0"}.get, _none, rng) == "stable"


def test_a_user_stays_on_one_side_and_a_ramp_only_moves_users_onto_the_canary() -> None:
    small = TrafficSplit("orders", [("canary", 5), ("stable", 95)])
    large = TrafficSplit("orders", [("canary", 50), ("stable", 50)])
    rng = Random(2)
    for user in (f"user-{i}" for i in range(2000)):
        first = small.choose(user, _none, _none, rng)
        assert all(small.choose(user, _none, _none, rng) == first for _ in range(3))
        if first == "canary":
            assert large.choose(user, _none, _none, rng) == "canary"


def test_different_splits_place_a_user_independently() -> None:
    same = sum(bucket_of(b"a", f"u{i}") == bucket_of(b"b", f"u{i}") for i in range(1000))
    assert same < 10


def test_mirroring_sends_about_its_percentage() -> None:
    split = TrafficSplit("s", [("stable", 1)], mirror_backend="shadow", mirror_percent=10)
    rng = Random(3)
    mirrored = sum(split.mirror(rng) == "shadow" for _ in range(10_000))
    assert 900 < mirrored < 1100
    assert TrafficSplit("s", [("stable", 1)]).mirror(rng) is None


def test_a_split_without_weight_is_refused() -> None:
    with pytest.raises(ValueError, match="positive weight"):
        TrafficSplit("s", [("a", 0)])
