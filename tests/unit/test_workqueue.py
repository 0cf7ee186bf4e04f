"""The reconciler's work queue: dedup, one key in flight at a time, delays, rate limits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.control.workqueue import WorkQueue


def test_ready_keys_come_out_in_fifo_order() -> None:
    q = WorkQueue()
    for key in ("web", "orders", "db"):
        q.add(key)
    assert [q.get(0.0), q.get(0.0), q.get(0.0), q.get(0.0)] == ["web", "orders", "db", None]


def test_duplicate_adds_of_a_waiting_key_are_processed_once() -> None:
    q = WorkQueue()
    q.add("web")
    q.add("web")
    q.add("web")
    assert len(q) == 1
    assert q.get(0.0) == "web"
    assert q.get(0.0) is None


def test_a_key_is_never_handed_out_twice_at_once() -> None:
    q = WorkQueue()
    q.add("web")
    assert q.get(0.0) == "web"
    q.add("web")  # a change arrived while the reconciler works on web
    assert q.get(0.0) is None
    q.done("web")
    assert q.get(0.0) == "web"  # …and it is processed again afterwards


def test_done_without_readd_does_not_requeue() -> None:
    q = WorkQueue()
    q.add("web")
    q.get(0.0)
    q.done("web")
    assert q.get(0.0) is None and len(q) == 0


def test_add_after_waits_until_its_time() -> None:
    q = WorkQueue()
    q.add_after("web", 5.0)
    assert q.get(4.9) is None
    assert q.next_deadline() == 5.0
    assert q.get(5.0) == "web"
    assert q.next_deadline() is None


def test_earlier_add_after_wins() -> None:
    q = WorkQueue()
    q.add_after("web", 10.0)
    q.add_after("web", 3.0)
    q.add_after("web", 7.0)
    assert q.next_deadline() == 3.0
    assert q.get(3.0) == "web"
    q.done("web")
    assert q.get(100.0) is None  # the superseded times do not fire again
    assert q.next_deadline() is None


def test_delayed_key_that_is_already_waiting_is_deduplicated() -> None:
    q = WorkQueue()
    q.add("web")
    q.add_after("web", 1.0)
    assert q.get(2.0) == "web"
    assert q.get(2.0) is None


def test_rate_limited_requeues_double_from_50ms_to_30s_and_reset_on_forget() -> None:
    q = WorkQueue()
    times = []
    for _ in range(12):
        at = q.add_rate_limited("web", 0.0)
        times.append(at)
        assert q.get(at) == "web"
        q.done("web")
    assert times[:4] == [0.05, 0.1, 0.2, 0.4]
    assert times[-1] == 30.0
    assert q.num_requeues("web") == 12
    q.forget("web")
    assert q.add_rate_limited("web", 0.0) == 0.05


def test_next_deadline_is_the_earliest_parked_key() -> None:
    q = WorkQueue()
    q.add_after("a", 9.0)
    q.add_after("b", 4.0)
    assert q.next_deadline() == 4.0
    assert len(q) == 2 and q.ready() == 0


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "add_after", "get", "done"]),
        st.sampled_from(["a", "b", "c"]),
        st.floats(0.0, 10.0),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_no_key_is_ever_processed_twice_at_once_and_no_add_is_lost(
    script: list[tuple[str, str, float]],
) -> None:
    q = WorkQueue()
    now = 0.0
    in_flight: set[str] = set()
    owed: set[str] = set()  # keys added since they were last handed out
    for op, key, t in script:
        if op == "add":
            q.add(key)
            owed.add(key)
        elif op == "add_after":
            q.add_after(key, now + t)
        elif op == "get":
            now += t
            got = q.get(now)
            if got is not None:
                assert got not in in_flight
                in_flight.add(got)
                owed.discard(got)
        elif key in in_flight:
            q.done(key)
            in_flight.discard(key)
    # Drain: finish everything and let all time pass; every owed key comes out.
    for key in sorted(in_flight):
        q.done(key)
    seen = set()
    while (got := q.get(now + 1000.0)) is not None:
        seen.add(got)
        q.done(got)
    assert owed <= seen
