"""Quorum coordination: N/R/W, sloppy quorum, hinted handoff, read repair (Dynamo §4.5–4.6)."""

from __future__ import annotations

import pytest

from corral.kv import (
    AURORA,
    EMPTY,
    GetRequest,
    HintStore,
    InvalidQuorum,
    PutRequest,
    Quorum,
    Ring,
    Target,
    sloppy_targets,
    write,
)
from corral.kv.versions import digest

NODES = ["n1", "n2", "n3", "n4", "n5"]


def outcome(req: PutRequest | GetRequest) -> str:
    return req.outcome  # read fresh each time (mypy would narrow the property)


RING = Ring(NODES, 64)


def test_any_quorum_with_r_plus_w_above_n_is_read_your_writes_including_aurora() -> None:
    assert Quorum(3, 2, 2).validate(5).read_your_writes
    assert AURORA.validate(6).read_your_writes and (AURORA.n, AURORA.w, AURORA.r) == (6, 4, 3)
    weak = Quorum(3, 1, 1).validate()
    assert not weak.read_your_writes and "not read-your-writes" in weak.warning


def test_an_impossible_quorum_is_refused_with_every_problem() -> None:
    with pytest.raises(InvalidQuorum) as err:
        Quorum(3, 4, 0).validate(2)
    assert "r must be" in err.value.message and "w must be" in err.value.message
    assert "more than the 2 nodes" in err.value.message


def test_sloppy_targets_stand_in_for_down_home_nodes_and_name_them() -> None:
    key = "cart:42"
    home = RING.home(key, 3)
    down = {home[0], home[2]}
    targets = sloppy_targets(RING, key, 3, lambda n: n not in down)
    assert [t.node for t in targets] == [n for n in RING.walk(key) if n not in down][:3]
    hinted = sorted(t.hint_for for t in targets if t.hint_for)
    assert hinted == sorted(down)
    assert all(t.hint_for is None for t in targets if t.node in home)


def test_a_put_is_acknowledged_after_w_durable_replies_and_fails_at_its_deadline() -> None:
    obj = write(EMPTY, (), "n1.1", b"v")
    targets = [Target("n1"), Target("n2"), Target("n3")]
    req = PutRequest("k", obj, "n1", targets, NODES, w=2, now=0.0, timeout=1.0, replica_timeout=0.2)
    assert [t.node for t in req.start()] == ["n2", "n3"] and outcome(req) == "pending"
    req.ack("n3", 0.01)
    assert outcome(req) == "ok"
    slow = PutRequest("k", obj, "n1", targets, NODES, w=3, now=0.0, timeout=1.0,
                      replica_timeout=0.2)  # fmt: skip
    slow.ack("n2", 0.1)
    slow.tick(1.0, lambda n: True)
    assert outcome(slow) == "failed"


def test_a_silent_replica_is_replaced_by_the_next_node_with_a_hint_for_it() -> None:
    obj = write(EMPTY, (), "n1.1", b"v")
    walk = ["n1", "n2", "n3", "n4", "n5"]
    targets = [Target("n1"), Target("n2"), Target("n3")]
    req = PutRequest("k", obj, "n1", targets, walk, w=3, now=0.0, timeout=2.0, replica_timeout=0.2)
    req.ack("n2", 0.05)
    assert req.tick(0.1, lambda n: True) == []  # not silent yet
    extra = req.tick(0.25, lambda n: True)
    assert extra == [Target("n4", "n3")]
    req.ack("n4", 0.3)
    assert outcome(req) == "ok"


def test_a_get_merges_r_replies_and_repairs_the_stale_ones() -> None:
    old = write(EMPTY, (), "n1.1", b"old")
    new = write(old, (("n1.1", 1),), "n1.1", b"new")
    req = GetRequest("k", ["n1", "n2", "n3"], r=2, now=0.0, timeout=1.0)
    req.reply("n1", new, 0.01)
    assert outcome(req) == "pending"
    req.reply("n2", old, 0.02)
    assert outcome(req) == "ok" and req.merged.values == [b"new"]
    assert req.repairs() == ["n2"]
    req.reply("n3", EMPTY, 0.05)  # a late reply is repaired too
    assert req.repairs() == ["n2", "n3"]


def test_hints_are_delivered_idempotently_and_the_store_drains_to_empty() -> None:
    hints = HintStore()
    v1 = write(EMPTY, (), "n4.1", b"v1")
    hints.add("n2", "k", v1)
    hints.add("n2", "k", v1)  # a duplicated replicate changes nothing
    assert len(hints) == 1 and hints.due(lambda n: n != "n2") == []
    ((owner, key, obj),) = hints.due(lambda n: True)
    sent = digest(obj)
    v2 = write(obj, (), "n4.2", b"v2")
    hints.add("n2", "k", v2)  # changed after sending: the ack of the old copy keeps it
    assert not hints.delivered(owner, key, sent) and len(hints) == 1
    ((_, _, latest),) = hints.due(lambda n: True)
    assert hints.delivered("n2", "k", digest(latest)) and len(hints) == 0
    assert not hints.delivered("n2", "k", digest(latest))  # a duplicate ack is harmless
