"""The default Store: one SQLite file in WAL mode, the etcd v3 model of ``corral.store.base``.

Theory of operation:
- **Durability.** WAL with ``synchronous=FULL``: a txn is acknowledged only after its COMMIT
  has been fsynced, so an acknowledged write survives ``kill -9`` and power loss.
- **Revisions.** As in etcd, a fresh store is at revision 1 before any write; each txn that
  changes at least one key bumps the revision by exactly one. The revision lives in the
  ``meta`` table and only ever grows, across reopen, compaction and restore of newer backups.
- **One writer, no awaits inside a txn.** Every call runs inline on the event loop (SQLite
  answers in well under a millisecond) and never awaits between BEGIN and COMMIT, so a txn is
  atomic with respect to every other coroutine; a failing op rolls the whole txn back.
- **History.** Every change is also written to ``history`` (revision, seq) with the key's
  previous value. Watchers keep only a cursor (the next revision they need) and read history in
  batches, so a slow watcher costs rows on disk, never memory in the writer, and a watcher can
  start from any revision not yet compacted. Writers wake watchers through one
  ``asyncio.Event`` that is replaced on every commit.
- **Compaction.** ``compact(r)`` deletes history rows with revision < r; a watcher whose next
  needed revision is below the compacted revision raises ``Compacted(r)``.
- **Leases.** Only (id, ttl) is persisted, never a deadline: when a store opens, every lease's
  deadline is ``clock.monotonic() + ttl``. A background task sleeps until the earliest
  deadline and expires each due lease in its own txn (one revision deleting all its keys).
- **Closing** ends every watch iterator with ``StopAsyncIteration``; any other call on a
  closed store raises ``StoreError``.

- **Backup and restore.** ``backup(dest)`` copies one committed state with the SQLite backup
  API while the store runs, into a self-contained file (no -wal). ``restore_backup(src, dest)``
  copies ``src`` next to ``dest``, verifies the copy as a Corral store of this schema version
  (``StoreCorrupt`` otherwise, ``dest`` untouched), fsyncs it, removes ``dest``'s -wal/-shm
  (SQLite would replay a stale WAL onto the new file) and renames it over ``dest``.

The file carries ``PRAGMA application_id`` (``APPLICATION_ID``) and ``PRAGMA user_version``
(``SCHEMA_VERSION``). A file that is not a database, is another program's database, has another
schema version, or fails ``PRAGMA quick_check`` raises ``StoreCorrupt`` and is left untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, get_args

from corral import clock as _clock
from corral.errors import Compacted, NotFound, StoreCorrupt, StoreError, UserError
from corral.store.base import (
    Compare,
    CompareOp,
    CompareTarget,
    Delete,
    DeleteRange,
    KeyValue,
    Op,
    Put,
    RangeResult,
    TxnResult,
    WatchEvent,
    compare_holds,
    prefix_end,
)

log = logging.getLogger(__name__)

APPLICATION_ID = 0x436F726C  # "Corl": marks a file as a Corral store
SCHEMA_VERSION = 1
FIRST_REVISION = 1
_WATCH_BATCH = 256
_RESTORE_HINT = "restore the latest backup with `corral restore FILE`"

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX kv_by_lease ON kv (lease) WHERE lease != 0;
CREATE TABLE history (
    revision INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    prev_value BLOB,
    prev_create_revision INTEGER,
    prev_mod_revision INTEGER,
    prev_version INTEGER,
    prev_lease INTEGER,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE leases (id INTEGER PRIMARY KEY, ttl REAL NOT NULL);
"""
_TABLES = ("history", "kv", "leases", "meta")
_TARGETS = get_args(CompareTarget)
_OPS = get_args(CompareOp)

_Row = tuple[Any, ...]  # sqlite3 rows are untyped; the schema fixes each column's type
_T = TypeVar("_T")


def _corrupt(path: Path, detail: str) -> StoreCorrupt:
    return StoreCorrupt(
        f"store file {path} is damaged: {detail}",
        f"{_RESTORE_HINT}; the damaged file is left as it is",
    )


def sqlite_failure(path: Path, exc: sqlite3.Error) -> StoreError:
    """SQLITE_CORRUPT and SQLITE_NOTADB mean a damaged file; anything else (locked, no space,
    permissions) is a store that cannot serve right now, not corruption."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return _corrupt(path, str(exc))
    return StoreError(
        f"store file {path}: {exc}",
        "check that the file and its directory are writable and the disk is not full",
    )


def verify_store_file(conn: sqlite3.Connection, path: Path, *, create: bool) -> None:
    """Check that ``conn`` holds a Corral store of this schema version (creating the schema in
    an empty database when ``create``); raise ``StoreCorrupt`` otherwise."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {
            str(row[0])
            for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if app_id == 0 and version == 0 and not tables:
            if not create:
                raise _corrupt(path, "it is an empty database, not a Corral store")
            _create_schema(conn)
            return
        if app_id != APPLICATION_ID:
            raise _corrupt(
                path, f"it is an SQLite database of another program (application_id {app_id})"
            )
        if version != SCHEMA_VERSION:
            raise StoreCorrupt(
                f"store file {path} has schema version {version}; this Corral reads version "
                f"{SCHEMA_VERSION}",
                f"run the Corral version that wrote it, or {_RESTORE_HINT}",
            )
        missing = sorted(set(_TABLES) - tables)
        if missing:
            raise _corrupt(path, f"tables {', '.join(missing)} are missing")
        rows = [str(row[0]) for row in conn.execute("PRAGMA quick_check")]
        if rows != ["ok"]:
            problems = [
                line for row in rows for line in row.splitlines() if not line.startswith("***")
            ]
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise _corrupt(path, "integrity check failed: " + "; ".join(problems[:3]) + more)
    except sqlite3.Error as exc:
        raise sqlite_failure(path, exc) from exc


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.executemany(
            "INSERT INTO meta (name, value) VALUES (?, ?)",
            [("revision", FIRST_REVISION), ("compacted", 0), ("next_lease", 1)],
        )
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_sidecars(path: Path) -> None:
    """Remove ``path``'s -wal and -shm files: a stale WAL would be replayed onto a new file."""
    for suffix in ("-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)


def _check_key(key: object, what: str) -> None:
    if not isinstance(key, str) or not key:
        raise UserError(f"{what} must be a non-empty string, got {key!r}", "use keys like /a/b")
    try:
        key.encode()
    except UnicodeEncodeError as exc:
        raise UserError(f"{what} {key!r} is not valid UTF-8 text", "use printable keys") from exc


def _validate_ops(ops: Sequence[Op]) -> None:
    """Refuse a branch before anything is written: bad keys, non-bytes values, and a key put
    twice or both put and deleted in one txn (as etcd does: the outcome would be ambiguous)."""
    puts: set[str] = set()
    deletes: set[str] = set()
    prefixes: list[str] = []
    for op in ops:
        if isinstance(op, Put):
            _check_key(op.key, "Put key")
            if not isinstance(op.value, bytes):
                raise UserError(
                    f"Put {op.key!r}: value must be bytes, got {type(op.value).__name__}",
                    "encode the value first (msgspec.json.encode or str.encode)",
                )
            if not isinstance(op.lease, int) or op.lease < 0:
                raise UserError(f"Put {op.key!r}: bad lease id {op.lease!r}", "use grant()")
            if op.key in puts:
                raise UserError(f"txn puts {op.key!r} twice", "put each key once per txn")
            puts.add(op.key)
        elif isinstance(op, Delete):
            _check_key(op.key, "Delete key")
            deletes.add(op.key)
        elif isinstance(op, DeleteRange):
            _check_key(op.prefix, "DeleteRange prefix")
            prefixes.append(op.prefix)
        else:
            raise UserError(f"unknown txn op {op!r}", "use Put, Delete or DeleteRange")
    for key in sorted(puts):
        if key in deletes or any(key.startswith(p) for p in prefixes):
            raise UserError(
                f"txn both puts and deletes {key!r}", "put or delete a key, not both, per txn"
            )


def validate_txn(
    compares: Sequence[Compare], on_success: Sequence[Op], on_failure: Sequence[Op]
) -> None:
    """Refuse a malformed txn before anything is written (every backend calls this)."""
    for cmp in compares:
        _check_key(cmp.key, "Compare key")
        if cmp.target not in _TARGETS or cmp.op not in _OPS:
            raise UserError(
                f"Compare on {cmp.key!r}: unknown target {cmp.target!r} or op {cmp.op!r}",
                f"targets: {', '.join(_TARGETS)}; ops: {' '.join(_OPS)}",
            )
    _validate_ops(on_success)
    _validate_ops(on_failure)


def _kv(row: _Row) -> KeyValue:
    key, value, create, mod, version, lease = row
    return KeyValue(str(key), bytes(value), int(create), int(mod), int(version), int(lease))


def _event(row: _Row) -> WatchEvent:
    (rev, _seq, kind, key, value, create, version, lease, *prev_row) = row
    prev = None
    if prev_row[2] is not None:
        prev = _kv((key, prev_row[0], prev_row[1], prev_row[2], prev_row[3], prev_row[4]))
    kv = _kv((key, value, create, rev, version, lease))
    return WatchEvent("put" if kind == "put" else "delete", kv, prev)


def restore_backup(src: Path, dest: Path) -> None:
    """Replace the store file ``dest`` with the backup ``src`` atomically; ``StoreCorrupt``
    (and ``dest`` untouched) if ``src`` is not a valid Corral store file."""
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise NotFound(f"backup file {src} does not exist", "give the path `corral backup` wrote")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.restore-{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    remove_sidecars(tmp)
    try:
        shutil.copyfile(src, tmp)
        src_wal = Path(str(src) + "-wal")
        if src_wal.is_file():
            # A copy of a live store file: its newest commits may still be in its WAL.
            shutil.copyfile(src_wal, Path(str(tmp) + "-wal"))
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            verify_store_file(conn, src, create=False)
            conn.execute("PRAGMA journal_mode = DELETE")
        except sqlite3.Error as exc:
            raise sqlite_failure(src, exc) from exc
        finally:
            conn.close()
        fsync_file(tmp)
        remove_sidecars(dest)
        tmp.replace(dest)
        fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)
        remove_sidecars(tmp)


class SQLiteStore:
    """A ``Store`` in one SQLite file. Open with ``await SQLiteStore.open(path)``."""

    def __init__(self, path: Path, conn: sqlite3.Connection, clock: _clock.Clock) -> None:
        self.path = path
        self._conn = conn
        self._clock = clock
        self._closed = False
        self._seq = 0  # history rows recorded by the txn in progress
        self._revision = self._meta("revision")
        self._compacted = self._meta("compacted")
        self._changed = asyncio.Event()
        self._lease_wake = asyncio.Event()
        now = clock.monotonic()
        self._leases: dict[int, tuple[float, float]] = {
            int(lid): (float(ttl), now + float(ttl))
            for lid, ttl in conn.execute("SELECT id, ttl FROM leases")
        }
        self._expiry_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: Path, clock: _clock.Clock = _clock.SYSTEM) -> SQLiteStore:
        """Open (creating if absent) the store at ``path``; ``StoreCorrupt`` if it is damaged
        or of another schema version. Starts the lease expiry task on the running loop."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise sqlite_failure(path, exc) from exc
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            verify_store_file(conn, path, create=True)
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"store file {path}: cannot use WAL mode (got {mode})",
                    "put CORRAL_HOME on a local filesystem",
                )
            conn.execute("PRAGMA synchronous = FULL")
            store = cls(path, conn, clock)
        except sqlite3.Error as exc:
            conn.close()
            raise sqlite_failure(path, exc) from exc
        except BaseException:
            conn.close()
            raise
        store._expiry_task = asyncio.get_running_loop().create_task(
            store._expiry_loop(), name=f"lease-expiry {path}"
        )
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake_watchers()
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
        self._conn.close()

    # -- reads ---------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        return self._revision

    async def get(self, key: str) -> KeyValue | None:
        self._check_open()
        return self._read(key)

    async def range(self, prefix: str, limit: int = 0) -> RangeResult:
        """Keys under ``prefix`` sorted by key, at most ``limit`` (0: all); ``more`` says
        the limit cut the listing."""
        self._check_open()
        if limit < 0:
            raise UserError(f"range limit must be >= 0, got {limit}", "0 means no limit")
        sql = (
            "SELECT key, value, create_revision, mod_revision, version, lease FROM kv "
            "WHERE key >= ? AND key < ? ORDER BY key"
        )
        args: tuple[object, ...] = (prefix, prefix_end(prefix))
        if limit:
            sql += " LIMIT ?"
            args += (limit + 1,)
        rows = self._query(sql, args)
        more = bool(limit) and len(rows) > limit
        if more:
            rows = rows[:limit]
        return RangeResult([_kv(r) for r in rows], self._revision, more)

    # -- writes --------------------------------------------------------------------------

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[Op],
        on_failure: Sequence[Op] = (),
    ) -> TxnResult:
        self._check_open()
        validate_txn(compares, on_success, on_failure)

        def apply() -> bool:
            succeeded = all(compare_holds(c, self._read(c.key)) for c in compares)
            for op in on_success if succeeded else on_failure:
                self._apply(op)
            return succeeded

        succeeded = self._write(apply)
        return TxnResult(succeeded, self._revision)

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision``. Compacting to or below an earlier compaction is a
        no-op; compacting past the current revision is refused."""
        self._check_open()
        if revision > self._revision:
            raise UserError(
                f"cannot compact to revision {revision}: the store is at {self._revision}",
                "compact to a revision the store has reached",
                code="future_revision",
            )
        if revision <= self._compacted:
            return

        def apply() -> None:
            self._conn.execute("DELETE FROM history WHERE revision < ?", (revision,))
            self._set_meta("compacted", revision)

        self._transaction(apply)
        self._compacted = revision

    # -- watch ---------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        """Every change under ``prefix`` with revision >= ``start_revision`` (0: after now),
        then live changes. Ends with ``StopAsyncIteration`` when the store closes."""
        self._check_open()
        if start_revision < 0:
            raise UserError(f"watch start_revision must be >= 0, got {start_revision}", "")
        return _Watcher(self, prefix, start_revision or self._revision + 1)

    # -- leases --------------------------------------------------------------------------

    async def grant(self, ttl: float) -> int:
        self._check_open()
        if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
            raise UserError(f"lease ttl must be a positive number of seconds, got {ttl!r}", "")
        ttl = float(ttl)

        def apply() -> int:
            lease_id = self._meta("next_lease")
            self._conn.execute("INSERT INTO leases (id, ttl) VALUES (?, ?)", (lease_id, ttl))
            self._set_meta("next_lease", lease_id + 1)
            return lease_id

        lease_id = self._transaction(apply)
        self._leases[lease_id] = (ttl, self._clock.monotonic() + ttl)
        self._lease_wake.set()
        return lease_id

    async def keepalive(self, lease_id: int) -> float:
        """Restart the lease's timer at its full TTL and return the TTL."""
        self._check_open()
        entry = self._leases.get(lease_id)
        now = self._clock.monotonic()
        if entry is not None and entry[1] <= now:
            self._expire(lease_id)
            entry = None
        if entry is None:
            raise NotFound(
                f"lease {lease_id} does not exist or has expired",
                "grant a new lease and put its keys again",
            )
        ttl = entry[0]
        self._leases[lease_id] = (ttl, now + ttl)
        return ttl

    async def revoke(self, lease_id: int) -> None:
        self._check_open()
        if lease_id not in self._leases:
            raise NotFound(f"lease {lease_id} does not exist or has expired", "")
        self._expire(lease_id)

    async def expire_leases(self) -> list[int]:
        """Expire every lease whose deadline has passed by the store's clock; returns their
        ids. The background task calls this; tests with a fake clock call it directly."""
        self._check_open()
        now = self._clock.monotonic()
        due = sorted((deadline, lid) for lid, (_, deadline) in self._leases.items())
        expired = [lid for deadline, lid in due if deadline <= now]
        for lid in expired:
            self._expire(lid)
        return expired

    # -- backup --------------------------------------------------------------------------

    async def backup(self, dest: Path) -> None:
        """Write a consistent snapshot of the store to ``dest`` (replaced atomically) while
        the store stays in use: the SQLite backup API copies one committed state."""
        self._check_open()
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        remove_sidecars(tmp)
        try:
            target = sqlite3.connect(tmp, isolation_level=None)
            try:
                self._conn.backup(target)
                # A self-contained file: no -wal beside a backup that is copied around.
                target.execute("PRAGMA journal_mode = DELETE")
            finally:
                target.close()
            fsync_file(tmp)
            tmp.replace(dest)
            fsync_dir(dest.parent)
        except sqlite3.Error as exc:
            raise StoreError(f"backup to {dest} failed: {exc}", "check free space") from exc
        finally:
            tmp.unlink(missing_ok=True)
            remove_sidecars(tmp)

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed", "open the store again")

    def _query(self, sql: str, args: tuple[object, ...]) -> list[_Row]:
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise sqlite_failure(self.path, exc) from exc

    def _read(self, key: str) -> KeyValue | None:
        rows = self._query(
            "SELECT key, value, create_revision, mod_revision, version, lease FROM kv "
            "WHERE key = ?",
            (key,),
        )
        return _kv(rows[0]) if rows else None

    def _meta(self, name: str) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise _corrupt(self.path, f"meta row {name!r} is missing")
        return int(row[0])

    def _set_meta(self, name: str, value: int) -> None:
        self._conn.execute("UPDATE meta SET value = ? WHERE name = ?", (value, name))

    def _transaction(self, body: Callable[[], _T]) -> _T:
        """Run ``body`` in one SQLite transaction; any exception rolls all of it back."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise sqlite_failure(self.path, exc) from exc
        return result

    def _write(self, body: Callable[[], _T]) -> _T:
        """A transaction that may change keys: the changes ``body`` records share the next
        revision, which is committed and published only if there was at least one."""
        self._seq = 0

        def run() -> _T:
            result = body()
            if self._seq:
                self._set_meta("revision", self._revision + 1)
            return result

        result = self._transaction(run)
        if self._seq:
            self._revision += 1
            self._wake_watchers()
        return result

    def _apply(self, op: Op) -> None:
        rev = self._revision + 1
        if isinstance(op, Put):
            if op.lease and op.lease not in self._leases:
                raise NotFound(
                    f"Put {op.key!r}: lease {op.lease} does not exist or has expired",
                    "grant a new lease and put the key with it",
                )
            prev = self._read(op.key)
            create, version = (prev.create_revision, prev.version + 1) if prev else (rev, 1)
            self._conn.execute(
                "INSERT OR REPLACE INTO kv (key, value, create_revision, mod_revision, version, "
                "lease) VALUES (?, ?, ?, ?, ?, ?)",
                (op.key, op.value, create, rev, version, op.lease),
            )
            self._record("put", KeyValue(op.key, op.value, create, rev, version, op.lease), prev)
        elif isinstance(op, Delete):
            prev = self._read(op.key)
            if prev is not None:
                self._delete(prev)
        else:
            rows = self._conn.execute(
                "SELECT key, value, create_revision, mod_revision, version, lease FROM kv "
                "WHERE key >= ? AND key < ? ORDER BY key",
                (op.prefix, prefix_end(op.prefix)),
            ).fetchall()
            for row in rows:
                self._delete(_kv(row))

    def _delete(self, prev: KeyValue) -> None:
        self._conn.execute("DELETE FROM kv WHERE key = ?", (prev.key,))
        self._record("delete", KeyValue(prev.key, b"", 0, self._revision + 1, 0), prev)

    def _record(self, kind: str, kv: KeyValue, prev: KeyValue | None) -> None:
        self._conn.execute(
            "INSERT INTO history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kv.mod_revision,
                self._seq,
                kind,
                kv.key,
                kv.value,
                kv.create_revision,
                kv.version,
                kv.lease,
                *(
                    (prev.value, prev.create_revision, prev.mod_revision, prev.version, prev.lease)
                    if prev
                    else (None, None, None, None, None)
                ),
            ),
        )
        self._seq += 1

    def _expire(self, lease_id: int) -> None:
        """Delete the lease and every key attached to it in one revision."""

        def apply() -> None:
            rows = self._conn.execute(
                "SELECT key, value, create_revision, mod_revision, version, lease FROM kv "
                "WHERE lease = ? ORDER BY key",
                (lease_id,),
            ).fetchall()
            for row in rows:
                self._delete(_kv(row))
            self._conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))

        self._write(apply)
        self._leases.pop(lease_id, None)

    def _wake_watchers(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _expiry_loop(self) -> None:
        while not self._closed:
            self._lease_wake.clear()
            try:
                await self.expire_leases()
            except StoreError:
                log.exception("lease expiry failed in %s; retrying in 1 s", self.path)
                await asyncio.sleep(1.0)
                continue
            deadlines = [deadline for _, deadline in self._leases.values()]
            timeout = max(0.0, min(deadlines) - self._clock.monotonic()) if deadlines else None
            try:
                await asyncio.wait_for(self._lease_wake.wait(), timeout)
            except TimeoutError:
                pass

    def _history(
        self, prefix: str, after: tuple[int, int], limit: int, until: int = 1 << 62
    ) -> list[_Row]:
        """History rows under ``prefix`` after the (revision, seq) cursor ``after`` and at
        or before revision ``until`` (limit -1: no limit)."""
        return self._query(
            "SELECT * FROM history WHERE (revision, seq) > (?, ?) AND revision <= ? "
            "AND key >= ? AND key < ? ORDER BY revision, seq LIMIT ?",
            (*after, until, prefix, prefix_end(prefix), limit),
        )


class _Watcher(AsyncIterator[WatchEvent]):
    """A cursor over history: it holds the next revision it needs and at most one batch."""

    def __init__(self, store: SQLiteStore, prefix: str, next_revision: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next = next_revision
        self._buffer: deque[WatchEvent] = deque()

    def __aiter__(self) -> _Watcher:
        return self

    async def __anext__(self) -> WatchEvent:
        store = self._store
        while not self._buffer:
            if store._closed:
                raise StopAsyncIteration
            if self._next < store._compacted:
                raise Compacted(store._compacted, self._next)
            if self._next <= store._revision:
                self._fill()
                continue
            # No await between the check above and taking the event: no lost wake-up.
            await store._changed.wait()
        return self._buffer.popleft()

    def _fill(self) -> None:
        store = self._store
        rows = store._history(self._prefix, (self._next, -1), _WATCH_BATCH)
        if len(rows) == _WATCH_BATCH:
            # Finish the last revision so the cursor always sits on a revision boundary.
            last_rev, last_seq = int(rows[-1][0]), int(rows[-1][1])
            rows += store._history(self._prefix, (last_rev, last_seq), -1, last_rev)
            self._next = last_rev + 1
        else:
            self._next = store._revision + 1
        self._buffer.extend(_event(r) for r in rows)
