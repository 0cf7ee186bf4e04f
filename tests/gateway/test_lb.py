"""Load-balancer pickers: distribution, load awareness, consistency, bounded load."""

from __future__ import annotations

from collections import Counter
from random import Random

from hypothesis import given
from hypothesis import strategies as st

from corral.gateway.lb import (
    Endpoint,
    EwmaP2C,
    LeastRequestP2C,
    Maglev,
    RingHash,
    SmoothRoundRobin,
)


def pool(*weights: int) -> list[Endpoint]:
    return [Endpoint(f"10.0.0.{i}:80", w) for i, w in enumerate(weights)]


@given(weights=st.lists(st.integers(1, 6), min_size=1, max_size=6))
def test_smooth_round_robin_gives_each_endpoint_exactly_its_weight_per_cycle(
    weights: list[int],
) -> None:
    endpoints = pool(*weights)
    picker = SmoothRoundRobin()
    rng = Random(1)
    for _ in range(3):
        picks = Counter(picker.pick(endpoints, rng, None).address for _ in range(sum(weights)))
        assert picks == {e.address: e.weight for e in endpoints}


def test_smooth_round_robin_interleaves_instead_of_bursting() -> None:
    endpoints = pool(5, 1, 1)
    picker = SmoothRoundRobin()
    seq = [picker.pick(endpoints, Random(1), None).address[-4] for _ in range(7)]
    assert "".join(seq) != "0000012"  # nginx's smooth order spreads the heavy one out


def test_least_request_avoids_the_busy_endpoint() -> None:
    endpoints = pool(1, 1, 1)
    endpoints[0].active = 50
    picker = LeastRequestP2C()
    rng = Random(7)
    picks = Counter(picker.pick(endpoints, rng, None).address for _ in range(3000))
    assert picks[endpoints[0].address] == 0  # it loses every comparison it is part of


def test_least_request_spreads_evenly_when_idle() -> None:
    endpoints = pool(1, 1, 1, 1)
    picker = LeastRequestP2C()
    rng = Random(3)
    picks = Counter(picker.pick(endpoints, rng, None).address for _ in range(8000))
    assert min(picks.values()) > 1600


def test_ewma_prefers_the_faster_endpoint() -> None:
    endpoints = pool(1, 1)
    endpoints[0].observe(0.200, now=0.0)
    endpoints[1].observe(0.002, now=0.0)
    picker = EwmaP2C()
    picks = Counter(picker.pick(endpoints, Random(1), None).address for _ in range(100))
    assert picks[endpoints[1].address] == 100


def test_peak_ewma_jumps_up_and_decays_down() -> None:
    e = Endpoint("10.0.0.1:80")
    e.observe(0.010, now=0.0)
    e.observe(0.500, now=1.0)
    assert e.ewma == 0.5
    e.observe(0.010, now=100.0)
    assert e.ewma < 0.02


def test_hash_pickers_send_a_key_to_the_same_endpoint_every_time() -> None:
    for picker in (RingHash(), Maglev()):
        endpoints = pool(1, 1, 1, 1, 1)
        first = {k: picker.pick(endpoints, Random(1), f"user{k}".encode()) for k in range(200)}
        again = {k: picker.pick(endpoints, Random(2), f"user{k}".encode()) for k in range(200)}
        assert first == again
        assert len(set(first.values())) == 5


def test_removing_an_endpoint_moves_only_its_keys_on_the_ring() -> None:
    picker = RingHash()
    endpoints = pool(1, 1, 1, 1, 1)
    before = {k: picker.pick(endpoints, Random(1), b"k%d" % k).address for k in range(2000)}
    fewer = endpoints[:4]
    after = {k: picker.pick(fewer, Random(1), b"k%d" % k).address for k in range(2000)}
    moved = [k for k in before if before[k] != after[k]]
    assert all(before[k] == endpoints[4].address for k in moved)


def test_maglev_spreads_keys_evenly() -> None:
    picker = Maglev()
    endpoints = pool(*[1] * 8)
    counts = Counter(picker.pick(endpoints, Random(1), b"k%d" % k).address for k in range(16000))
    assert max(counts.values()) / min(counts.values()) < 1.3


def test_bounded_load_moves_a_hot_key_off_a_full_endpoint() -> None:
    for picker in (RingHash(bounded_load=1.25), Maglev(bounded_load=1.25)):
        endpoints = pool(1, 1, 1, 1)
        home = picker.pick(endpoints, Random(1), b"hot")
        home.active = 10  # over ceil(1.25 * 11 / 4) = 4
        other = picker.pick(endpoints, Random(1), b"hot")
        assert other is not home
        home.active = 0


def test_a_missing_key_falls_back_to_least_request() -> None:
    endpoints = pool(1, 1)
    endpoints[0].active = 5
    assert RingHash().pick(endpoints, Random(1), None) is endpoints[1]
