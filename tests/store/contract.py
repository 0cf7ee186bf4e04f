"""The Store contract: what every backend (SQLite, Raft, etcd) must do, run unchanged on each.

A backend's test module subclasses ``StoreContract`` and provides a ``store_factory`` fixture
returning a ``StoreFactory``: ``open()`` opens (or re-opens, after ``close``) the same durable
location, and ``writer_command(prefix, count)`` is a process that opens that location, puts
``count`` keys ``prefix + str(i)`` = ``str(i).encode()`` one txn at a time and prints
``"<i> <revision>"`` (flushed) after each acknowledged write — the kill -9 durability test kills
it mid-stream. Tests wait on conditions with deadlines; lease TTLs are short real times.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

import pytest

from corral.errors import Compacted, NotFound, StoreError, UserError
from corral.store.base import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteRange,
    Put,
    Store,
    WatchEvent,
    delete,
    put,
)

DEADLINE = 5.0


class StoreFactory(Protocol):
    def open(self) -> AbstractAsyncContextManager[Store]: ...

    def writer_command(self, prefix: str, count: int) -> list[str]: ...


async def eventually(
    condition: Callable[[], Awaitable[bool]], within: float = DEADLINE, what: str = ""
) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took."""
    start = time.monotonic()
    while not await condition():
        if time.monotonic() - start > within:
            pytest.fail(f"not within {within} s: {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def take(events: AsyncIterator[WatchEvent], count: int) -> list[WatchEvent]:
    """The next ``count`` events, failing after a deadline instead of hanging."""

    async def collect() -> list[WatchEvent]:
        return [await anext(events) for _ in range(count)]

    return await asyncio.wait_for(collect(), DEADLINE)


async def absent(store: Store, key: str) -> bool:
    return await store.get(key) is None


# (target, op, value, expected on key "/c/k" written once at revision R, expected when missing)
# "R" / "R-1" / "R+1" stand for that revision; a missing key has revisions and version 0.
COMPARES: list[tuple[CompareTarget, CompareOp, bytes | int | bool | str, bool, bool]] = [
    ("value", "==", b"v", True, False),
    ("value", "!=", b"v", False, True),
    ("value", "==", b"w", False, False),
    ("value", "<", b"w", True, False),
    ("value", ">", b"a", True, False),
    ("value", ">", b"w", False, False),
    ("create_revision", "==", "R", True, False),
    ("create_revision", "==", 0, False, True),
    ("create_revision", "<", "R+1", True, True),
    ("mod_revision", "==", "R", True, False),
    ("mod_revision", ">", "R-1", True, False),
    ("mod_revision", "<", "R", False, True),
    ("mod_revision", "!=", "R", False, True),
    ("version", "==", 1, True, False),
    ("version", ">", 0, True, False),
    ("version", "<", 1, False, True),
    ("version", "==", 0, False, True),
    ("exists", "==", True, True, False),
    ("exists", "==", False, False, True),
    ("exists", "!=", True, False, True),
]


class StoreContract:
    """Every test here must pass for every backend."""

    @pytest.fixture
    async def store(self, store_factory: StoreFactory) -> AsyncIterator[Store]:
        async with store_factory.open() as store:
            yield store

    # -- reads and revisions -------------------------------------------------------------

    async def test_fresh_store_is_empty_and_first_write_moves_revision_forward(
        self, store: Store
    ) -> None:
        listing = await store.range("")
        assert listing.kvs == []
        assert listing.revision >= 1
        assert await put(store, "/a", b"1") == listing.revision + 1

    async def test_get_returns_written_value_and_none_for_missing_key(self, store: Store) -> None:
        rev = await put(store, "/a/x", b"hello")
        kv = await store.get("/a/x")
        assert kv is not None
        assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
            "/a/x",
            b"hello",
            rev,
            rev,
            1,
        )
        assert await store.get("/a/y") is None
        assert await store.get("/a") is None

    async def test_range_lists_keys_under_prefix_sorted_and_limit_reports_more(
        self, store: Store
    ) -> None:
        for key in ["/svc/b", "/svc/a", "/svc/c", "/svcx", "/other/a", "/svc/a/deep"]:
            await put(store, key, key.encode())
        everything = await store.range("/svc/")
        assert [kv.key for kv in everything.kvs] == ["/svc/a", "/svc/a/deep", "/svc/b", "/svc/c"]
        assert not everything.more
        assert everything.revision == (await store.range("")).revision
        cut = await store.range("/svc/", limit=2)
        assert [kv.key for kv in cut.kvs] == ["/svc/a", "/svc/a/deep"]
        assert cut.more
        exact = await store.range("/svc/", limit=4)
        assert len(exact.kvs) == 4 and not exact.more
        assert (await store.range("/")).kvs[0].key == "/other/a"
        assert (await store.range("/nothing/")).kvs == []

    async def test_each_writing_txn_bumps_revision_by_one_and_stamps_all_its_keys(
        self, store: Store
    ) -> None:
        before = (await store.range("")).revision
        result = await store.txn([], [Put("/m/a", b"1"), Put("/m/b", b"2"), Put("/m/c", b"3")])
        assert result.succeeded and result.revision == before + 1
        kvs = (await store.range("/m/")).kvs
        assert {kv.mod_revision for kv in kvs} == {before + 1}
        assert await put(store, "/m/a", b"again") == before + 2

    async def test_version_counts_writes_and_recreate_after_delete_starts_over(
        self, store: Store
    ) -> None:
        created = await put(store, "/k", b"1")
        await put(store, "/other", b"x")
        updated = await put(store, "/k", b"2")
        kv = await store.get("/k")
        assert kv is not None
        assert (kv.create_revision, kv.mod_revision, kv.version) == (created, updated, 2)
        await delete(store, "/k")
        assert await store.get("/k") is None
        recreated = await put(store, "/k", b"3")
        kv = await store.get("/k")
        assert kv is not None
        assert (kv.create_revision, kv.mod_revision, kv.version) == (recreated, recreated, 1)

    async def test_txn_that_changes_nothing_does_not_bump_revision(self, store: Store) -> None:
        rev = await put(store, "/k", b"1")
        assert await delete(store, "/missing") == rev
        result = await store.txn([], [DeleteRange("/nothing-here/")])
        assert result.revision == rev
        assert (await store.txn([Compare("/k", "exists", "==", False)], [])).revision == rev
        assert (await store.range("")).revision == rev

    # -- txn -----------------------------------------------------------------------------

    @pytest.mark.parametrize(("target", "op", "value", "on_existing", "on_missing"), COMPARES)
    async def test_every_compare_target_and_op_on_existing_and_missing_keys(
        self,
        store: Store,
        target: CompareTarget,
        op: CompareOp,
        value: bytes | int | bool | str,
        on_existing: bool,
        on_missing: bool,
    ) -> None:
        rev = await put(store, "/c/k", b"v")
        await put(store, "/c/later", b"x")  # so "R+1" is a real, later revision
        if isinstance(value, str):
            value = {"R": rev, "R-1": rev - 1, "R+1": rev + 1}[value]
        for key, expected in [("/c/k", on_existing), ("/c/missing", on_missing)]:
            result = await store.txn(
                [Compare(key, target, op, value)],
                [Put("/c/result", b"success")],
                [Put("/c/result", b"failure")],
            )
            assert result.succeeded is expected, (key, target, op, value)
            got = await store.get("/c/result")
            assert got is not None and got.value == (b"success" if expected else b"failure")

    async def test_failed_compare_applies_only_the_failure_branch(self, store: Store) -> None:
        await put(store, "/t/a", b"old")
        result = await store.txn(
            [Compare("/t/a", "value", "==", b"old"), Compare("/t/b", "exists", "==", True)],
            [Put("/t/a", b"new"), Put("/t/c", b"from-success")],
            [Put("/t/d", b"from-failure"), Delete("/t/a")],
        )
        assert not result.succeeded
        assert await store.get("/t/a") is None
        assert await store.get("/t/c") is None
        failure_kv = await store.get("/t/d")
        assert failure_kv is not None and failure_kv.mod_revision == result.revision

    async def test_compare_and_swap_lets_only_one_of_two_racing_writers_win(
        self, store: Store
    ) -> None:
        rev = await put(store, "/lock", b"free")
        guard = [Compare("/lock", "mod_revision", "==", rev)]
        first = await store.txn(guard, [Put("/lock", b"writer-1")])
        second = await store.txn(guard, [Put("/lock", b"writer-2")])
        assert (first.succeeded, second.succeeded) == (True, False)
        kv = await store.get("/lock")
        assert kv is not None and kv.value == b"writer-1"

    async def test_txn_with_a_bad_op_changes_nothing(self, store: Store) -> None:
        rev = await put(store, "/keep", b"1")
        with pytest.raises(UserError):
            await store.txn([], [Put("/new", b"1"), Delete("/keep"), Put("", b"empty key")])
        with pytest.raises(NotFound):
            await store.txn([], [Put("/new", b"1"), Delete("/keep"), Put("/x", b"1", lease=987654)])
        assert await store.get("/new") is None
        assert await store.get("/keep") is not None
        assert (await store.range("")).revision == rev

    async def test_txn_that_writes_a_key_twice_is_refused(self, store: Store) -> None:
        rev = await put(store, "/dup/a", b"1")
        with pytest.raises(UserError):
            await store.txn([], [Put("/dup/b", b"1"), Put("/dup/b", b"2")])
        with pytest.raises(UserError):
            await store.txn([], [Put("/dup/a", b"2"), Delete("/dup/a")])
        assert await store.get("/dup/b") is None
        assert (await store.range("")).revision == rev

    async def test_delete_range_removes_only_keys_under_prefix_in_one_revision(
        self, store: Store
    ) -> None:
        for key in ["/d/a", "/d/b", "/d/b/c", "/dx", "/e"]:
            await put(store, key, b"1")
        events = store.watch("/", 0)
        result = await store.txn([], [DeleteRange("/d/")])
        assert [kv.key for kv in (await store.range("")).kvs] == ["/dx", "/e"]
        seen = await take(events, 3)
        assert [(e.type, e.kv.key, e.kv.mod_revision) for e in seen] == [
            ("delete", "/d/a", result.revision),
            ("delete", "/d/b", result.revision),
            ("delete", "/d/b/c", result.revision),
        ]

    # -- watch ---------------------------------------------------------------------------

    async def test_watch_from_now_sees_later_changes_with_previous_values(
        self, store: Store
    ) -> None:
        await put(store, "/w/a", b"before")
        events = store.watch("/w/")
        updated = await put(store, "/w/a", b"after")
        deleted = await delete(store, "/w/a")
        put_event, delete_event = await take(events, 2)
        assert put_event.type == "put" and put_event.kv.value == b"after"
        assert put_event.kv.mod_revision == updated and put_event.kv.version == 2
        assert put_event.prev is not None and put_event.prev.value == b"before"
        assert delete_event.type == "delete" and delete_event.kv.key == "/w/a"
        assert delete_event.kv.mod_revision == deleted
        assert delete_event.prev is not None and delete_event.prev.value == b"after"

    async def test_watch_from_a_past_revision_replays_history_then_follows(
        self, store: Store
    ) -> None:
        first = await put(store, "/h/a", b"1")
        await put(store, "/h/b", b"2")
        await delete(store, "/h/a")
        events = store.watch("/h/", first)
        replayed = await take(events, 3)
        assert [(e.type, e.kv.key) for e in replayed] == [
            ("put", "/h/a"),
            ("put", "/h/b"),
            ("delete", "/h/a"),
        ]
        assert replayed[0].kv.mod_revision == first
        live = await put(store, "/h/c", b"3")
        (event,) = await take(events, 1)
        assert (event.kv.key, event.kv.mod_revision) == ("/h/c", live)

    async def test_a_large_txn_reaches_a_watcher_whole_and_in_op_order(self, store: Store) -> None:
        start = (await store.range("")).revision
        big = await store.txn([], [Put(f"/big/{i:04}", b"x") for i in range(600)])
        after = await put(store, "/big/zz", b"y")
        seen = await take(store.watch("/big/", start), 601)
        assert [e.kv.mod_revision for e in seen] == [big.revision] * 600 + [after]
        assert [e.kv.key for e in seen[:600]] == [f"/big/{i:04}" for i in range(600)]

    async def test_watch_yields_only_keys_under_its_prefix(self, store: Store) -> None:
        events = store.watch("/p/")
        await put(store, "/q/x", b"no")
        await put(store, "/px", b"no")
        await put(store, "/p/x", b"yes")
        await store.txn([], [Put("/q/y", b"no"), Put("/p/y", b"yes")])
        seen = await take(events, 2)
        assert [e.kv.key for e in seen] == ["/p/x", "/p/y"]

    async def test_watch_from_a_future_revision_starts_there(self, store: Store) -> None:
        rev = (await store.range("")).revision
        events = store.watch("/f/", rev + 3)
        for i in range(5):
            await put(store, f"/f/{i}", b"1")
        seen = await take(events, 3)
        assert [e.kv.mod_revision for e in seen] == [rev + 3, rev + 4, rev + 5]

    async def test_watch_sees_every_revision_in_order_under_concurrent_writers(
        self, store: Store
    ) -> None:
        start = (await store.range("")).revision
        events = store.watch("/cw/")

        async def writer(name: str) -> None:
            for i in range(30):
                await store.txn([], [Put(f"/cw/{name}/{i}", b"x"), Put(f"/cw/{name}/n", b"%d" % i)])
                await asyncio.sleep(0)

        consumer = asyncio.create_task(take(events, 5 * 30 * 2))
        await asyncio.gather(*(writer(f"w{n}") for n in range(5)))
        seen = await consumer
        revisions = [e.kv.mod_revision for e in seen]
        assert sorted(set(revisions)) == list(range(start + 1, start + 151))
        assert revisions == sorted(revisions)
        for n in range(5):
            counters = [e.kv.value for e in seen if e.kv.key == f"/cw/w{n}/n"]
            assert counters == [b"%d" % i for i in range(30)]

    async def test_a_watcher_that_falls_far_behind_still_sees_every_change(
        self, store: Store
    ) -> None:
        start = (await store.range("")).revision
        events = store.watch("/slow/")
        for i in range(700):
            await put(store, f"/slow/{i % 7}", b"%d" % i)
        seen = await take(events, 700)
        assert [e.kv.mod_revision for e in seen] == list(range(start + 1, start + 701))

    async def test_watch_below_compacted_revision_raises_compacted(self, store: Store) -> None:
        first = await put(store, "/old/a", b"1")
        for i in range(5):
            await put(store, "/old/a", b"%d" % i)
        current = (await store.range("")).revision
        await store.compact(current - 1)
        with pytest.raises(Compacted) as caught:
            await anext(store.watch("/old/", first))
        assert caught.value.revision == current - 1
        (event,) = await take(store.watch("/old/", current - 1), 1)
        assert event.kv.mod_revision == current - 1
        kv = await store.get("/old/a")
        assert kv is not None and kv.value == b"4"

    async def test_closing_the_store_ends_watchers(self, store_factory: StoreFactory) -> None:
        async with store_factory.open() as store:
            events = store.watch("/")
            ended = asyncio.Event()

            async def follow() -> None:
                try:
                    async for _ in events:
                        pass
                except StoreError:
                    pass
                ended.set()

            task = asyncio.create_task(follow())
            await put(store, "/x", b"1")
            await store.close()
            await asyncio.wait_for(task, DEADLINE)
            assert ended.is_set()

    # -- leases --------------------------------------------------------------------------

    async def test_expired_lease_deletes_its_keys_in_one_revision_and_watchers_see_it(
        self, store: Store
    ) -> None:
        lease = await store.grant(0.3)
        await store.txn([], [Put("/l/a", b"1", lease), Put("/l/b", b"2", lease)])
        await put(store, "/l/free", b"3")
        kv = await store.get("/l/a")
        assert kv is not None and kv.lease == lease
        events = store.watch("/l/")
        took = await eventually(lambda: absent(store, "/l/b"), what="leased key expired")
        assert took < 0.3 + 1.0
        deletes = await take(events, 2)
        assert [(e.type, e.kv.key) for e in deletes] == [("delete", "/l/a"), ("delete", "/l/b")]
        assert deletes[0].kv.mod_revision == deletes[1].kv.mod_revision
        assert await store.get("/l/free") is not None
        with pytest.raises(NotFound):
            await store.keepalive(lease)

    async def test_keepalive_keeps_leased_keys_alive_past_their_ttl(self, store: Store) -> None:
        lease = await store.grant(0.4)
        await put(store, "/ka", b"1", lease)
        started = time.monotonic()
        while time.monotonic() - started < 0.9:
            assert await store.keepalive(lease) == pytest.approx(0.4)
            assert await store.get("/ka") is not None
            await asyncio.sleep(0.05)
        await eventually(lambda: absent(store, "/ka"), what="key expired after keepalives stop")

    async def test_revoke_deletes_leased_keys_at_once(self, store: Store) -> None:
        lease = await store.grant(60)
        await store.txn([], [Put("/r/a", b"1", lease), Put("/r/b", b"1", lease)])
        await put(store, "/r/a", b"detached")  # a put without the lease detaches the key
        before = (await store.range("")).revision
        await store.revoke(lease)
        assert [kv.key for kv in (await store.range("/r/")).kvs] == ["/r/a"]
        assert (await store.range("")).revision == before + 1
        with pytest.raises(NotFound):
            await store.keepalive(lease)
        with pytest.raises(NotFound):
            await store.revoke(lease)
        with pytest.raises(NotFound):
            await put(store, "/r/c", b"1", lease)

    async def test_lease_timers_restart_at_full_ttl_when_the_store_reopens(
        self, store_factory: StoreFactory
    ) -> None:
        ttl = 0.4
        async with store_factory.open() as store:
            lease = await store.grant(ttl)
            await put(store, "/node", b"alive", lease)
        closed_at = time.monotonic()
        # Let more than the TTL pass while no store is running: that is the scenario.
        await asyncio.sleep(max(0.0, closed_at + ttl + 0.1 - time.monotonic()))
        async with store_factory.open() as store:
            reopened = time.monotonic()
            assert await store.get("/node") is not None
            await eventually(lambda: absent(store, "/node"), what="lease expired after reopen")
            assert time.monotonic() - reopened >= ttl * 0.75

    # -- durability ----------------------------------------------------------------------

    async def test_revision_keeps_growing_across_reopen(self, store_factory: StoreFactory) -> None:
        async with store_factory.open() as store:
            await put(store, "/a", b"1")
            rev = await delete(store, "/a")
        async with store_factory.open() as store:
            assert (await store.range("")).revision == rev
            assert await put(store, "/a", b"2") == rev + 1
            kv = await store.get("/a")
            assert kv is not None and kv.version == 1

    async def test_every_acknowledged_write_survives_kill_9(
        self, store_factory: StoreFactory
    ) -> None:
        process = await asyncio.create_subprocess_exec(
            *store_factory.writer_command("/k9/", 1_000_000),
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        acked: dict[int, int] = {}

        def record(line: bytes) -> None:
            index, revision = line.decode().split()
            acked[int(index)] = int(revision)

        try:
            while len(acked) < 40:
                line = await asyncio.wait_for(process.stdout.readline(), DEADLINE)
                assert line.endswith(b"\n"), "the writer exited before writing"
                record(line)
        finally:
            process.send_signal(signal.SIGKILL)
        rest = await asyncio.wait_for(process.stdout.read(), DEADLINE)
        for line in rest.split(b"\n")[:-1]:  # a line the kill cut short was never acked
            record(line)
        await process.wait()
        async with store_factory.open() as store:
            for i, rev in sorted(acked.items()):
                kv = await store.get(f"/k9/{i}")
                assert kv is not None, f"acknowledged write {i} (revision {rev}) was lost"
                assert (kv.value, kv.mod_revision) == (str(i).encode(), rev)
            assert (await store.range("")).revision >= max(acked.values())
