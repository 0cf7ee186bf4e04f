"""The SQLite Store: the contract suite, plus what only a file-backed store has (revision
convention, the file format checks, backup and restore, leases on an injected clock)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from corral.errors import Compacted, NotFound, StoreCorrupt, StoreError, UserError
from corral.store.base import Put, Store, put
from corral.store.sqlite import SCHEMA_VERSION, SQLiteStore, restore_backup
from tests.store.contract import StoreContract, StoreFactory, take

WRITER = Path(__file__).with_name("sqlite_writer.py")


class SQLiteFactory:
    def __init__(self, path: Path) -> None:
        self.path = path

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Store]:
        store: Store = await SQLiteStore.open(self.path)  # the Protocol conformance check
        try:
            yield store
        finally:
            await store.close()

    def writer_command(self, prefix: str, count: int) -> list[str]:
        return [sys.executable, str(WRITER), str(self.path), prefix, str(count)]


class TestSQLiteStore(StoreContract):
    @pytest.fixture
    def store_factory(self, tmp_path: Path) -> StoreFactory:
        return SQLiteFactory(tmp_path / "home" / "store.db")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def wall(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


async def test_fresh_store_is_at_revision_1_and_first_write_is_revision_2(path: Path) -> None:
    store = await SQLiteStore.open(path)
    try:
        assert (await store.range("")).revision == 1
        assert await put(store, "/a", b"1") == 2
    finally:
        await store.close()


async def test_compaction_under_a_lagging_watcher_raises_compacted(path: Path) -> None:
    store = await SQLiteStore.open(path)
    try:
        start = await put(store, "/lag/a", b"1")
        events = store.watch("/lag/", start)
        await take(events, 1)
        for i in range(3):
            await put(store, "/lag/a", b"%d" % i)
        await store.compact(store.revision)
        with pytest.raises(Compacted) as caught:
            await take(events, 3)
        assert caught.value.revision == store.revision
    finally:
        await store.close()


async def test_compacting_past_the_current_revision_is_refused(path: Path) -> None:
    store = await SQLiteStore.open(path)
    try:
        with pytest.raises(UserError, match="store is at 1"):
            await store.compact(5)
    finally:
        await store.close()


async def test_a_closed_store_refuses_calls(path: Path) -> None:
    store = await SQLiteStore.open(path)
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.get("/a")
    with pytest.raises(StoreError, match="closed"):
        store.watch("/")
    await store.close()  # idempotent


async def test_leases_expire_by_the_store_clock(path: Path) -> None:
    clock = FakeClock()
    store = await SQLiteStore.open(path, clock)
    try:
        lease = await store.grant(10)
        await put(store, "/node", b"1", lease)
        clock.now += 9.9
        assert await store.expire_leases() == []
        assert await store.keepalive(lease) == 10
        clock.now += 9.9
        assert await store.expire_leases() == []
        clock.now += 0.2
        assert await store.expire_leases() == [lease]
        assert await store.get("/node") is None
    finally:
        await store.close()


async def test_keepalive_after_the_deadline_is_refused_and_expires_the_lease(path: Path) -> None:
    clock = FakeClock()
    store = await SQLiteStore.open(path, clock)
    try:
        lease = await store.grant(5)
        await put(store, "/node", b"1", lease)
        clock.now += 5
        with pytest.raises(NotFound, match=f"lease {lease}"):
            await store.keepalive(lease)
        assert await store.get("/node") is None
    finally:
        await store.close()


async def test_lease_downtime_does_not_count_against_its_ttl(path: Path) -> None:
    clock = FakeClock()
    store = await SQLiteStore.open(path, clock)
    lease = await store.grant(10)
    await put(store, "/node", b"1", lease)
    await store.close()
    clock.now += 3600
    store = await SQLiteStore.open(path, clock)
    try:
        assert await store.expire_leases() == []
        clock.now += 9.5
        assert await store.expire_leases() == []
        assert await store.get("/node") is not None
        clock.now += 1
        assert await store.expire_leases() == [lease]
        assert await store.get("/node") is None
    finally:
        await store.close()


async def test_lease_ids_are_never_reused_after_reopen(path: Path) -> None:
    store = await SQLiteStore.open(path)
    first = await store.grant(60)
    await store.revoke(first)
    await store.close()
    store = await SQLiteStore.open(path)
    try:
        assert await store.grant(60) > first
    finally:
        await store.close()


# -- the file format -------------------------------------------------------------------------


async def _store_with_data(path: Path, keys: int = 200) -> int:
    store = await SQLiteStore.open(path)
    try:
        for i in range(0, keys, 50):
            await store.txn([], [Put(f"/data/{j:05}", b"x" * 200) for j in range(i, i + 50)])
        return store.revision
    finally:
        await store.close()


def _damage(path: Path, pages: tuple[int, ...]) -> None:
    """Overwrite most of each given page (negative: from the end) with a fixed pattern."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    count = len(data) // page_size
    assert count > 6
    for page in pages:
        start = (page % count) * page_size
        data[start + 8 : start + 400] = b"\xa5" * 392
    path.write_bytes(bytes(data))


async def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(path: Path) -> None:
    garbage = b"this is not a database at all\n" * 200
    await asyncio.to_thread(path.write_bytes, garbage)
    with pytest.raises(StoreCorrupt) as caught:
        await SQLiteStore.open(path)
    assert str(path) in caught.value.message
    assert "corral restore" in caught.value.hint
    assert await asyncio.to_thread(path.read_bytes) == garbage


async def test_another_programs_database_is_refused(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorrupt, match="another program"):
        await SQLiteStore.open(path)


async def test_a_store_of_another_schema_version_is_refused(path: Path) -> None:
    await _store_with_data(path, keys=50)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreCorrupt) as caught:
        await SQLiteStore.open(path)
    assert f"schema version 99; this Corral reads version {SCHEMA_VERSION}" in caught.value.message
    assert "corral restore" in caught.value.hint


@pytest.mark.parametrize("pages", [(3, 4, 5), (-2,)], ids=["schema-pages", "a-data-page"])
async def test_a_damaged_page_is_detected_on_open(path: Path, pages: tuple[int, ...]) -> None:
    await _store_with_data(path)
    _damage(path, pages)
    with pytest.raises(StoreCorrupt) as caught:
        await SQLiteStore.open(path)
    assert f"store file {path} is damaged" in caught.value.message
    assert caught.value.message.count("\n") == 0
    assert len(caught.value.message) < 400


# -- backup and restore ------------------------------------------------------------------


async def test_backup_while_in_use_then_restore_brings_back_that_state(tmp_path: Path) -> None:
    live = tmp_path / "home" / "store.db"
    snapshot = tmp_path / "backups" / "store.bak"
    snapshot.parent.mkdir()
    store = await SQLiteStore.open(live)
    try:
        await store.txn([], [Put("/a", b"1"), Put("/b", b"2")])
        events = store.watch("/")
        await store.backup(snapshot)
        backed_up = store.revision
        await put(store, "/after-backup", b"3")
        (event,) = await take(events, 1)
        assert event.kv.key == "/after-backup"
    finally:
        await store.close()
    stale_wal = Path(str(live) + "-wal")
    await asyncio.to_thread(stale_wal.write_bytes, b"stale wal that must not be replayed" * 100)
    restore_backup(snapshot, live)
    assert not await asyncio.to_thread(stale_wal.exists)
    store = await SQLiteStore.open(live)
    try:
        assert [kv.key for kv in (await store.range("")).kvs] == ["/a", "/b"]
        assert store.revision == backed_up
    finally:
        await store.close()


async def test_restore_refuses_a_bad_backup_and_keeps_the_current_store(tmp_path: Path) -> None:
    live = tmp_path / "store.db"
    revision = await _store_with_data(live, keys=50)
    bad = tmp_path / "bad.bak"
    bad.write_bytes(b"not a backup" * 100)
    with pytest.raises(StoreCorrupt, match=str(bad)):
        restore_backup(bad, live)
    empty = tmp_path / "empty.bak"
    empty.write_bytes(b"")
    with pytest.raises(StoreCorrupt, match="empty"):
        restore_backup(empty, live)
    with pytest.raises(NotFound):
        restore_backup(tmp_path / "missing.bak", live)
    left = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.iterdir()))
    assert left == ["bad.bak", "empty.bak", "store.db"]
    store = await SQLiteStore.open(live)
    try:
        assert store.revision == revision
    finally:
        await store.close()
