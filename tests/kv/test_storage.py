"""Durable local storage of an AP-store node, and the causal-context header (issue 9)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from corral.errors import AlreadyRunning, StoreError
from corral.kv import storage as kv_storage
from corral.kv import versions
from corral.kv.storage import KvStorage
from corral.kv.versions import EMPTY
from corral.kv.wire import BadContext, decode_context, encode_context, from_wire, to_wire


async def test_objects_and_hints_survive_a_reopen(tmp_path: Path) -> None:
    storage = KvStorage(tmp_path, "n1")
    actor = storage.new_actor()
    obj = versions.write(EMPTY, (), actor, b"v1", 1.0)
    storage.store("b/k", obj)
    storage.store("b/h", versions.write(EMPTY, (), "n2.1", b"held", 1.0), hint_for="n3")
    await storage.sync()
    storage.close()
    again = KvStorage(tmp_path, "n1")
    assert again.get("b/k").values == [b"v1"]
    assert again.hints.for_key("b/h").values == [b"held"]
    assert again.local("b/h").values == [b"held"]  # a read sees the hint it holds
    again.close()


async def test_a_restarted_node_never_writes_as_an_actor_it_used_before(tmp_path: Path) -> None:
    storage = KvStorage(tmp_path, "n1")
    before = {storage.new_actor() for _ in range(3)}
    storage.store("b/k", versions.write(EMPTY, (), sorted(before)[0], b"v", 1.0))
    await storage.sync()
    storage.close()
    again = KvStorage(tmp_path, "n1")
    assert again.get("b/k").actor == ""  # the key gets a fresh actor on its next write
    assert again.new_actor() not in before
    again.close()


async def test_delivered_hints_and_reaped_tombstones_are_gone_after_a_reopen(
    tmp_path: Path,
) -> None:
    storage = KvStorage(tmp_path, "n1")
    hint = versions.write(EMPTY, (), "n2.1", b"held", 1.0)
    storage.store("b/h", hint, hint_for="n3")
    storage.store("b/dead", versions.write(EMPTY, (), "n1.1", None, 100.0))
    await storage.sync()
    assert storage.hint_delivered("n3", "b/h", versions.digest(hint))
    assert storage.reap(now=100.0 + 3600, grace=3600) == 1
    await storage.sync()
    storage.close()
    again = KvStorage(tmp_path, "n1")
    assert len(again.hints) == 0 and again.get("b/dead").empty
    again.close()


async def test_reap_forgets_old_tombstones_only_even_after_a_reopen_or_a_rewrite(
    tmp_path: Path,
) -> None:
    """Reaping looks only at keys that are tombstones (not at every key): a tombstone written
    over with a value is kept, one loaded from disk is found, and hint owners are counted."""
    storage = KvStorage(tmp_path, "n1")
    deleted = versions.write(EMPTY, (), "n1.1", None, 100.0)
    storage.store("b/revived", deleted)
    storage.store("b/revived", versions.write(deleted, versions.context_of(deleted), "n1.1",
                                              b"back", 101.0))  # fmt: skip
    storage.store("b/gone", versions.write(EMPTY, (), "n1.1", None, 100.0))
    storage.store("b/live", versions.write(EMPTY, (), "n1.1", b"v", 100.0))
    hint = versions.write(EMPTY, (), "n2.1", b"held", 1.0)
    storage.store("b/h1", hint, hint_for="n3")
    storage.store("b/h1", hint, hint_for="n3")  # the same hint again: still one
    storage.store("b/h2", hint, hint_for="n3")
    storage.store("b/h3", hint, hint_for="n2")
    assert storage.hint_owners() == ["n2", "n3"]
    assert storage.hint_delivered("n2", "b/h3", versions.digest(hint))
    assert storage.hint_owners() == ["n3"]
    await storage.sync()
    storage.close()

    again = KvStorage(tmp_path, "n1")
    assert again.hint_owners() == ["n3"]
    assert again.reap(now=150.0, grace=3600) == 0  # too young
    assert again.reap(now=100.0 + 3600, grace=3600) == 1
    assert again.get("b/gone").empty
    assert again.get("b/revived").values == [b"back"]
    assert again.get("b/live").values == [b"v"]
    again.close()


def test_context_header_round_trips_and_rejects_what_the_store_did_not_issue() -> None:
    ctx = (("n1.4", 2), ("n2.9", 1))
    assert decode_context(encode_context(ctx)) == ctx
    assert decode_context("") == ()
    with pytest.raises(BadContext, match="X-Kv-Context"):
        decode_context("not-a-context!")


def test_objects_cross_the_wire_without_their_local_actor() -> None:
    obj = versions.write(EMPTY, (), "n1.1", b"v", 2.0)
    obj = versions.Versioned(obj.siblings, obj.context, "n1.1")
    back = from_wire(to_wire(obj))
    assert back == obj and back.actor == ""


async def test_concurrent_writers_share_one_commit_and_all_are_durable_after_it(
    tmp_path: Path,
) -> None:
    storage = KvStorage(tmp_path, "n1")
    first = storage.durable()  # nothing stored: already durable
    assert first.done()
    before = storage.commits
    for i in range(20):
        storage.store(f"b/k{i}", versions.write(EMPTY, (), "n1.1", b"v", 1.0))
    waiters = [storage.durable() for _ in range(20)]
    assert len({id(w) for w in waiters}) == 1  # one group commit for all of them
    await asyncio.gather(*waiters)
    assert storage.commits == before + 1
    storage.close()
    again = KvStorage(tmp_path, "n1")
    assert len(list(again.keys())) == 20
    again.close()


async def test_under_load_writes_gather_into_fewer_commits_but_a_lone_write_waits_for_none(
    tmp_path: Path,
) -> None:
    storage = KvStorage(tmp_path, "n1", gather=0.2)
    loop = asyncio.get_running_loop()
    storage.store("b/first", versions.write(EMPTY, (), "n1.1", b"v", 1.0))
    started = loop.time()
    in_flight = storage.durable()  # none in flight: starts at once
    waiters = []
    for i in range(10):  # arriving one by one while a commit is in flight
        storage.store(f"b/k{i}", versions.write(EMPTY, (), "n1.1", b"v", 1.0))
        waiters.append(storage.durable())
        await asyncio.sleep(0)
    await in_flight
    assert loop.time() - started < 0.2  # the first commit did not wait
    await asyncio.gather(*waiters)
    assert loop.time() - started >= 0.2  # the backlog waited for the gather window
    assert storage.commits == 2  # ... and went to disk together
    storage.store("b/lone", versions.write(EMPTY, (), "n1.1", b"v", 1.0))
    lone = loop.time()
    await storage.sync()
    assert loop.time() - lone < 0.2  # right after a gathered commit: nothing in flight
    storage.close()
    again = KvStorage(tmp_path, "n1")
    assert len(list(again.keys())) == 12
    again.close()


def test_a_second_node_on_the_same_data_directory_refuses_to_start(tmp_path: Path) -> None:
    first = KvStorage(tmp_path, "n1")
    with pytest.raises(AlreadyRunning, match="in use by another process") as caught:
        KvStorage(tmp_path, "n2")
    assert "--data" in caught.value.hint
    first.close()
    KvStorage(tmp_path, "n2").close()  # free again once the first node stopped


def test_a_damaged_data_directory_is_reported_and_left_unlocked(tmp_path: Path) -> None:
    KvStorage(tmp_path, "n1").close()
    with sqlite3.connect(tmp_path / "kv.sqlite3") as db:
        db.execute("INSERT INTO objects VALUES ('b/k', x'c1c1c1')")
    with pytest.raises(StoreError, match="is damaged"):
        KvStorage(tmp_path, "n1")
    with sqlite3.connect(tmp_path / "kv.sqlite3") as db:
        db.execute("DELETE FROM objects")
    KvStorage(tmp_path, "n1").close()  # the failed open released its lock


async def test_writes_of_a_failed_commit_are_written_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = KvStorage(tmp_path, "n1")
    write = storage._write
    failures = [StoreError("disk full (injected)")]

    def failing_once(*rows: Any) -> None:
        if failures:
            raise failures.pop()
        write(*rows)

    monkeypatch.setattr(storage, "_write", failing_once)
    storage.store("b/k", versions.write(EMPTY, (), "n1.1", b"v1", 1.0))
    with pytest.raises(StoreError, match="injected"):
        await storage.sync()  # its waiters learn the write is not durable
    storage.store("b/other", versions.write(EMPTY, (), "n1.1", b"v2", 1.0))
    await storage.sync()
    storage.close()
    again = KvStorage(tmp_path, "n1")
    assert again.get("b/k").values == [b"v1"] and again.get("b/other").values == [b"v2"]
    again.close()


async def test_a_node_running_out_of_epochs_mid_commit_reserves_more_and_never_reuses_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kv_storage, "EPOCH_BLOCK", 2)
    storage = KvStorage(tmp_path, "n1")
    for i in range(50):
        storage.store(f"b/k{i}", versions.write(EMPTY, (), "n1.1", b"v", 1.0))
    committing = storage.durable()  # a commit in flight on the commit thread
    actors = {storage.new_actor() for _ in range(7)}  # crosses three blocks meanwhile
    await committing
    assert len(actors) == 7
    storage.close()
    again = KvStorage(tmp_path, "n1")
    assert not actors & {again.new_actor() for _ in range(7)}
    assert len(list(again.keys())) == 50
    again.close()
