"""The linearizability checker on histories whose verdict is known."""

from __future__ import annotations

import random
import time

from corral.sim.linearizability import History, check


def test_sequential_put_then_get_is_linearizable() -> None:
    h = History()
    h.ok(h.invoke(1, "put", "k", 0, value="1"), 1)
    h.ok(h.invoke(2, "get", "k", 2), 3, "1")
    assert check(h)


def test_a_read_of_an_overwritten_value_after_the_write_finished_is_not() -> None:
    h = History()
    h.ok(h.invoke(1, "put", "k", 0, value="1"), 1)
    h.ok(h.invoke(1, "put", "k", 2, value="2"), 3)
    h.ok(h.invoke(2, "get", "k", 4), 5, "1")
    verdict = check(h)
    assert not verdict and verdict.key == "k"
    assert "get(k) = '1'" in verdict.message


def test_a_read_concurrent_with_a_write_may_see_either_value() -> None:
    for seen in ("1", None):
        h = History()
        h.ok(h.invoke(1, "put", "k", 0, value="1"), 10)
        h.ok(h.invoke(2, "get", "k", 1), 2, seen)
        assert check(h), seen


def test_two_reads_may_not_see_the_new_value_then_the_old_one() -> None:
    h = History()
    h.ok(h.invoke(1, "put", "k", 0, value="1"), 1)
    h.ok(h.invoke(1, "put", "k", 2, value="2"), 20)  # slow write
    h.ok(h.invoke(2, "get", "k", 3), 4, "2")
    h.ok(h.invoke(3, "get", "k", 5), 6, "1")  # after a read that already saw "2"
    assert not check(h)


def test_a_write_of_unknown_outcome_may_take_effect_late_or_never() -> None:
    h = History()
    h.info(h.invoke(1, "put", "k", 0, value="1"))
    h.ok(h.invoke(2, "get", "k", 5), 6, None)
    h.ok(h.invoke(2, "get", "k", 7), 8, "1")  # it took effect between the reads
    assert check(h)
    h.ok(h.invoke(2, "get", "k", 9), 10, None)  # ...and cannot un-happen
    assert not check(h)


def test_failed_operations_have_no_effect() -> None:
    h = History()
    h.fail(h.invoke(1, "put", "k", 0, value="1"), 1)
    h.ok(h.invoke(2, "get", "k", 2), 3, "1")
    assert not check(h)


def test_compare_and_set_succeeds_only_on_the_expected_value() -> None:
    h = History()
    h.ok(h.invoke(1, "put", "k", 0, value="a"), 1)
    h.ok(h.invoke(1, "cas", "k", 2, value="b", expected="a"), 3, True)
    h.ok(h.invoke(2, "cas", "k", 4, value="c", expected="a"), 5, False)
    h.ok(h.invoke(2, "get", "k", 6), 7, "b")
    assert check(h)
    bad = History()
    bad.ok(bad.invoke(1, "put", "k", 0, value="a"), 1)
    bad.ok(bad.invoke(1, "cas", "k", 2, value="b", expected="x"), 3, True)
    assert not check(bad)


def test_keys_are_checked_independently() -> None:
    h = History()
    h.ok(h.invoke(1, "put", "a", 0, value="1"), 1)
    h.ok(h.invoke(1, "put", "b", 0, value="2"), 1)
    h.ok(h.invoke(2, "get", "a", 2), 3, "1")
    h.ok(h.invoke(2, "get", "b", 2), 3, "1")
    verdict = check(h)
    assert not verdict and verdict.key == "b"


def _concurrent_register_history(seed: int, clients: int, ops: int) -> History:
    """A history produced by a real atomic register: linearizable by construction."""
    rng = random.Random(seed)
    h = History()
    value: str | None = None
    now = 0.0
    open_ops: list[tuple[float, object]] = []
    for i in range(ops):
        now += rng.uniform(0.0, 1.0)
        kind = rng.choice(["put", "get", "cas"])
        invoke = now - rng.uniform(0, 3)  # invoked a while before it took effect
        complete = now + rng.uniform(0, 3)  # and answered a while after
        if kind == "put":
            value = f"v{i}"
            op = h.invoke(i % clients, "put", "k", invoke, value=value)
            result: str | bool | None = None
        elif kind == "get":
            op = h.invoke(i % clients, "get", "k", invoke)
            result = value
        else:
            expected = rng.choice([value, f"v{rng.randrange(i + 1)}"])
            op = h.invoke(i % clients, "cas", "k", invoke, value=f"v{i}", expected=expected)
            result = value == expected
            if result:
                value = f"v{i}"
        if kind != "get" and rng.random() < 0.05:
            h.info(op)
        else:
            h.ok(op, complete, result)
        open_ops.append((complete, op))
    return h


def test_long_concurrent_histories_from_a_real_register_pass_quickly() -> None:
    started = time.perf_counter()
    for seed in range(5):
        verdict = check(_concurrent_register_history(seed, clients=5, ops=300))
        assert verdict, verdict.message
    assert time.perf_counter() - started < 10


def test_a_single_corrupted_read_in_a_long_history_is_found() -> None:
    h = _concurrent_register_history(7, clients=5, ops=200)
    reads = [op for op in h.ops if op.kind == "get" and op.status == "ok"]
    reads[len(reads) // 2].result = "never-written"
    assert not check(h)
