"""The replicated Store: the etcd v3 model of ``corral.store.base`` on a Raft cluster.

Theory of operation. Every node keeps the same SQLite store file as the single-machine
backend (same schema, same code for puts, deletes, history and watch: ``_StateDB`` is an
``SQLiteStore`` that only Raft writes to). Writes are **commands** proposed through Raft and
applied, in log order, by every node to its own file; so revisions, create/mod revisions,
versions, lease ids and history are identical everywhere (the apply is deterministic: no
clock, no randomness, no local state other than the file).

- **Writes** (``txn``, ``grant``, ``keepalive``, ``revoke``, ``compact``) are validated on
  the caller's node (a bad op never reaches the log), proposed, and acknowledged once applied
  on that node — hence committed on a majority. Errors decided by state (a lease that does
  not exist, compacting past the revision) are decided at apply and rolled back to a
  savepoint, identically on every node.
- **Apply** takes each Ready's committed entries in one SQLite transaction (a savepoint per
  command) that also records the Raft index applied, so a restart re-applies exactly what is
  missing. The file runs ``synchronous=NORMAL``: the Raft log is the durable record, and a
  file older than the log's snapshot is replaced by that snapshot on start.
- **Reads** (``get``, ``range``) wait for a ReadIndex barrier, then read the local file:
  linearizable on any node. ``watch`` follows the local history (no gaps, ``Compacted``).
- **Snapshots.** Every ``snapshot_every`` entries the file is fsynced and the Raft log
  compacted; a follower that fell behind the compacted log receives the file itself (an
  online SQLite backup) and skips the entries it already holds.
- **Leases** (id, TTL) are replicated; deadlines are not. Only the leader expires leases,
  by proposing an ``Expire`` command — the expiry itself goes through the log. Every node
  restarts every lease's timer at its full TTL when it opens, when a keepalive is applied, and
  when it gains leadership, so a leader change or a cluster restart never causes mass expiry.
  An ``Expire`` carries the index of the last keepalive the leader had applied when it
  decided; a keepalive applied in between makes it a no-op, so an acknowledged keepalive is
  never overtaken by an expiry decided before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import msgspec

from corral import clock as _clock
from corral.consensus.config import DEFAULT, Config
from corral.consensus.messages import NONE
from corral.consensus.node import Node
from corral.errors import AlreadyRunning, CorralError, NotFound, StoreError, UserError
from corral.store.base import (
    Compare,
    Delete,
    DeleteRange,
    KeyValue,
    Op,
    Put,
    RangeResult,
    TxnResult,
    WatchEvent,
    compare_holds,
)
from corral.store.sqlite import (
    SQLiteStore,
    _kv,
    fsync_file,
    remove_sidecars,
    sqlite_failure,
    validate_txn,
    verify_store_file,
)

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- commands


class _Cmp(msgspec.Struct, frozen=True, array_like=True):
    key: str
    target: str
    op: str
    value: bytes | int | bool


class _Op(msgspec.Struct, frozen=True, array_like=True):
    kind: int  # 0 put, 1 delete, 2 delete-range
    key: str
    value: bytes = b""
    lease: int = 0


class TxnCmd(msgspec.Struct, frozen=True, array_like=True, tag=1):
    compares: tuple[_Cmp, ...]
    success: tuple[_Op, ...]
    failure: tuple[_Op, ...]


class GrantCmd(msgspec.Struct, frozen=True, array_like=True, tag=2):
    ttl: float


class KeepaliveCmd(msgspec.Struct, frozen=True, array_like=True, tag=3):
    lease: int


class RevokeCmd(msgspec.Struct, frozen=True, array_like=True, tag=4):
    lease: int


class ExpireCmd(msgspec.Struct, frozen=True, array_like=True, tag=5):
    lease: int
    renewed: int  # index of the last keepalive the leader had applied when it decided


class CompactCmd(msgspec.Struct, frozen=True, array_like=True, tag=6):
    revision: int


Command = TxnCmd | GrantCmd | KeepaliveCmd | RevokeCmd | ExpireCmd | CompactCmd
_encode = msgspec.msgpack.Encoder().encode
_command_decoder = msgspec.msgpack.Decoder(Command)


def _to_op(op: Op) -> _Op:
    if isinstance(op, Put):
        return _Op(0, op.key, op.value, op.lease)
    if isinstance(op, Delete):
        return _Op(1, op.key)
    return _Op(2, op.prefix)


def _from_op(op: _Op) -> Op:
    if op.kind == 0:
        return Put(op.key, op.value, op.lease)
    if op.kind == 1:
        return Delete(op.key)
    return DeleteRange(op.key)


def _lease_missing(lease_id: int) -> NotFound:
    return NotFound(
        f"lease {lease_id} does not exist or has expired", "grant a new lease and put its keys"
    )


# --------------------------------------------------------------------------- state machine


class _StateDB(SQLiteStore):
    """One node's copy of the store file, written only by applying committed commands."""

    _applied: int = 0  # the Raft index of the last entry applied (meta ``raft_applied``)

    @classmethod
    def open_state(cls, path: Path, clock: _clock.Clock) -> _StateDB:
        conn = cls._connect(path)
        db = cls(path, conn, clock)
        db._applied = db._meta("raft_applied")
        return db

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise sqlite_failure(path, exc) from exc
        try:
            verify_store_file(conn, path, create=True)
            conn.execute("PRAGMA journal_mode = WAL")
            # The Raft log is the durable record; the file can always be rebuilt from it.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('raft_applied', 0)")
        except sqlite3.Error as exc:
            conn.close()
            raise sqlite_failure(path, exc) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    # -- StateMachine --------------------------------------------------------------------

    def applied_index(self) -> int:
        return self._applied

    def apply(self, entries: Sequence[tuple[int, bytes]]) -> list[object]:
        conn = self._conn
        applied = self._applied
        results: list[object] = []
        changed = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for index, data in entries:
                    if index <= applied:
                        results.append(None)
                        continue
                    applied = index
                    if not data:
                        results.append(None)
                        continue
                    command = _command_decoder.decode(data)
                    self._seq = 0
                    conn.execute("SAVEPOINT command")
                    try:
                        result = self._command(index, command)
                    except CorralError as exc:
                        conn.execute("ROLLBACK TO command")
                        conn.execute("RELEASE command")
                        results.append(exc)
                        continue
                    conn.execute("RELEASE command")
                    if self._seq:
                        self._revision += 1
                        self._set_meta("revision", self._revision)
                        changed = True
                    if isinstance(command, TxnCmd):
                        result = TxnResult(bool(result), self._revision)
                    results.append(result)
                self._set_meta("raft_applied", applied)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise sqlite_failure(self.path, exc) from exc
        self._applied = applied
        if changed:
            self._wake_watchers()
        return results

    def _command(self, index: int, cmd: Command) -> object:
        now = self._clock.monotonic()
        if isinstance(cmd, TxnCmd):
            compares = [Compare(c.key, c.target, c.op, c.value) for c in cmd.compares]  # type: ignore[arg-type]  # validated before proposing
            succeeded = all(compare_holds(c, self._read(c.key)) for c in compares)
            for op in cmd.success if succeeded else cmd.failure:
                self._apply(_from_op(op))
            return succeeded
        if isinstance(cmd, GrantCmd):
            lease_id = self._meta("next_lease")
            self._conn.execute("INSERT INTO leases (id, ttl) VALUES (?, ?)", (lease_id, cmd.ttl))
            self._set_meta("next_lease", lease_id + 1)
            self._set_renewed(lease_id, index)
            self._leases[lease_id] = (cmd.ttl, now + cmd.ttl)
            return lease_id
        if isinstance(cmd, KeepaliveCmd):
            entry = self._leases.get(cmd.lease)
            if entry is None:
                raise _lease_missing(cmd.lease)
            self._set_renewed(cmd.lease, index)
            self._leases[cmd.lease] = (entry[0], now + entry[0])
            return entry[0]
        if isinstance(cmd, RevokeCmd | ExpireCmd):
            if cmd.lease not in self._leases:
                if isinstance(cmd, ExpireCmd):
                    return None
                raise _lease_missing(cmd.lease)
            if isinstance(cmd, ExpireCmd) and self.renewed(cmd.lease) > cmd.renewed:
                return None  # a keepalive was applied after the leader decided
            self._drop_lease(cmd.lease)
            return None
        if cmd.revision > self._revision:
            raise UserError(
                f"cannot compact to revision {cmd.revision}: the store is at {self._revision}",
                "compact to a revision the store has reached",
                code="future_revision",
            )
        if cmd.revision > self._compacted:
            self._conn.execute("DELETE FROM history WHERE revision < ?", (cmd.revision,))
            self._set_meta("compacted", cmd.revision)
            self._compacted = cmd.revision
        return None

    def _drop_lease(self, lease_id: int) -> None:
        rows = self._conn.execute(
            "SELECT key, value, create_revision, mod_revision, version, lease FROM kv "
            "WHERE lease = ? ORDER BY key",
            (lease_id,),
        ).fetchall()
        for row in rows:
            self._delete(_kv(row))
        self._conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
        self._conn.execute("DELETE FROM meta WHERE name = ?", (f"lease_renewed:{lease_id}",))
        self._leases.pop(lease_id, None)

    def _set_renewed(self, lease_id: int, index: int) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)",
            (f"lease_renewed:{lease_id}", index),
        )

    def renewed(self, lease_id: int) -> int:
        row = self._conn.execute(
            "SELECT value FROM meta WHERE name = ?", (f"lease_renewed:{lease_id}",)
        ).fetchone()
        return int(row[0]) if row else 0

    def snapshot(self) -> bytes:
        image = sqlite3.connect(":memory:")
        try:
            self._conn.backup(image)
            return image.serialize()
        finally:
            image.close()

    def flush(self) -> None:
        # synchronous=NORMAL leaves the latest commits in the -wal file unsynced; the
        # checkpoints SQLite ran before are synced by SQLite itself.
        for path in (Path(str(self.path) + "-wal"), self.path):
            with contextlib.suppress(FileNotFoundError):  # SQLite may just have removed it
                fsync_file(path)

    def restore(self, data: bytes) -> None:
        tmp = self.path.with_name(f".{self.path.name}.snapshot.tmp")
        tmp.unlink(missing_ok=True)
        remove_sidecars(tmp)
        tmp.write_bytes(data)
        check = sqlite3.connect(tmp, isolation_level=None)
        try:
            verify_store_file(check, tmp, create=False)
        finally:
            check.close()
        fsync_file(tmp)
        self._conn.close()
        remove_sidecars(self.path)
        tmp.replace(self.path)
        self._conn = self._connect(self.path)
        self._revision = self._meta("revision")
        self._compacted = self._meta("compacted")
        self._applied = self._meta("raft_applied")
        now = self._clock.monotonic()
        self._leases = {
            int(lid): (float(ttl), now + float(ttl))
            for lid, ttl in self._conn.execute("SELECT id, ttl FROM leases")
        }
        self._wake_watchers()

    # -- leases (deadlines are local) ----------------------------------------------------

    def restart_lease_timers(self) -> None:
        now = self._clock.monotonic()
        self._leases = {lid: (ttl, now + ttl) for lid, (ttl, _) in self._leases.items()}

    def due_leases(self) -> list[int]:
        now = self._clock.monotonic()
        return sorted(lid for lid, (_, deadline) in self._leases.items() if deadline <= now)

    def next_deadline(self) -> float | None:
        deadlines = [deadline for _, deadline in self._leases.values()]
        return min(deadlines) if deadlines else None


# --------------------------------------------------------------------------- the Store


class RaftStore:
    """A ``Store`` replicated by Raft. Open with ``await RaftStore.open(...)``; any node's
    store serves every call (followers forward writes through Raft)."""

    def __init__(self, db: _StateDB, lock_fd: int, clock: _clock.Clock) -> None:
        self._db = db
        self._lock_fd = lock_fd
        self._clock = clock
        self._closed = False
        self.node: Node  # set by open()
        self._expiring: dict[int, float] = {}  # lease -> when its Expire was proposed
        self._lease_wake = asyncio.Event()
        self._background: set[asyncio.Task[object]] = set()
        self._expiry_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        node_id: int,
        peers: dict[int, str],
        data_dir: Path,
        config: Config = DEFAULT,
        *,
        cluster: str = "corral",
        request_timeout: float = 5.0,
        snapshot_every: int = 10_000,
        snapshot_keep: int = 1_000,
        forward: bool = True,
        join: bool = False,
        clock: _clock.Clock = _clock.SYSTEM,
    ) -> RaftStore:
        """Start node ``node_id`` of the cluster ``peers`` (id → ``host:port``, itself
        included) with its WAL and store file under ``data_dir``. A fresh cluster forms when
        a majority of fresh nodes with the same ``peers`` have started. A node added to a
        running cluster starts with ``join=True`` and is then added on the leader with
        ``store.node.add_member(id, address)``."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(data_dir)
        try:
            # on the loop's thread: an sqlite3 connection stays in the thread that opened it
            db = _StateDB.open_state(data_dir / "store.db", clock)
        except BaseException:
            os.close(lock_fd)
            raise
        store = cls(db, lock_fd, clock)
        try:
            store.node = Node(
                node_id,
                peers,
                data_dir,
                db,
                config,
                cluster=cluster,
                request_timeout=request_timeout,
                snapshot_every=snapshot_every,
                snapshot_keep=snapshot_keep,
                forward=forward,
                join=join,
                on_leadership=store._on_leadership,
            )
            await store.node.start()
        except BaseException:
            await db.close()
            os.close(lock_fd)
            raise
        store._expiry_task = asyncio.get_running_loop().create_task(
            store._expiry_loop(), name=f"raft-store lease expiry {node_id}"
        )
        return store

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in [self._expiry_task, *self._background] if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, CorralError):
                await task
        await self.node.stop()
        await self._db.close()
        os.close(self._lock_fd)

    # -- status --------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The revision applied on this node (no barrier)."""
        return self._db.revision

    @property
    def is_leader(self) -> bool:
        return self.node.is_leader

    def campaign(self) -> None:
        self.node.campaign()

    # -- reads ---------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        self._check_open()
        await self.node.read_barrier()
        return await self._db.get(key)

    async def range(self, prefix: str, limit: int = 0) -> RangeResult:
        self._check_open()
        if limit < 0:
            raise UserError(f"range limit must be >= 0, got {limit}", "0 means no limit")
        await self.node.read_barrier()
        return await self._db.range(prefix, limit)

    def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]:
        self._check_open()
        return self._db.watch(prefix, start_revision)

    # -- writes --------------------------------------------------------------------------

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[Op],
        on_failure: Sequence[Op] = (),
    ) -> TxnResult:
        self._check_open()
        validate_txn(compares, on_success, on_failure)
        cmd = TxnCmd(
            tuple(_Cmp(c.key, c.target, c.op, c.value) for c in compares),
            tuple(_to_op(op) for op in on_success),
            tuple(_to_op(op) for op in on_failure),
        )
        result = await self._propose(cmd)
        assert isinstance(result, TxnResult)
        return result

    async def compact(self, revision: int) -> None:
        self._check_open()
        await self._propose(CompactCmd(revision))

    async def grant(self, ttl: float) -> int:
        self._check_open()
        if not (isinstance(ttl, int | float) and math.isfinite(ttl) and ttl > 0):
            raise UserError(f"lease ttl must be a positive number of seconds, got {ttl!r}", "")
        lease_id = await self._propose(GrantCmd(float(ttl)))
        assert isinstance(lease_id, int)
        self._lease_wake.set()
        return lease_id

    async def keepalive(self, lease_id: int) -> float:
        self._check_open()
        ttl = await self._propose(KeepaliveCmd(lease_id))
        assert isinstance(ttl, float)
        return ttl

    async def revoke(self, lease_id: int) -> None:
        self._check_open()
        await self._propose(RevokeCmd(lease_id))

    # -- internals -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self._db.path} is closed", "open the store again")

    async def _propose(self, cmd: Command) -> object:
        result = await self.node.propose(_encode(cmd))
        if isinstance(result, BaseException):
            raise result
        return result

    def _on_leadership(self, leader: bool) -> None:
        if leader:
            # A new leader knows nothing of when keepalives reached the old one.
            self._db.restart_lease_timers()
            self._expiring = {}
        self._lease_wake.set()

    async def _expiry_loop(self) -> None:
        while not self._closed:
            self._lease_wake.clear()
            if self.node.is_leader:
                now = self._clock.monotonic()
                for lease_id in self._db.due_leases():
                    if now - self._expiring.get(lease_id, -math.inf) < 1.0:
                        continue  # its Expire is in flight
                    self._expiring[lease_id] = now
                    cmd = ExpireCmd(lease_id, self._db.renewed(lease_id))
                    task = asyncio.get_running_loop().create_task(self._expire(cmd))
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            deadline = self._db.next_deadline()
            timeout = 1.0 if deadline is None else deadline - self._clock.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(1.0, max(0.005, timeout))):
                    await self._lease_wake.wait()

    async def _expire(self, cmd: ExpireCmd) -> object:
        try:
            await self._propose(cmd)
        except CorralError as exc:
            log.info("lease %d: expiry not committed yet (%s); retrying", cmd.lease, exc)
        self._expiring.pop(cmd.lease, None)
        self._lease_wake.set()
        return None


def _lock(data_dir: Path) -> int:
    fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(
            f"raft data directory {data_dir} is in use by another process",
            "stop the other node first; one process per node directory",
        ) from None
    return fd


@contextlib.asynccontextmanager
async def open_local_cluster(
    base_dir: Path,
    ports: Sequence[int],
    config: Config = DEFAULT,
    *,
    host: str = "127.0.0.1",
    request_timeout: float = 5.0,
    snapshot_every: int = 10_000,
    within: float = 10.0,
) -> AsyncIterator[tuple[RaftStore, list[RaftStore]]]:
    """Every node of a cluster in this process (node ``i`` at ``base_dir/n<i>`` on
    ``ports[i-1]``), for tests, benchmarks and trying things out; yields (leader, all stores)
    once a leader is elected, and closes every store on exit."""
    peers = {i: f"{host}:{port}" for i, port in enumerate(ports, 1)}
    stores: list[RaftStore] = []
    try:
        for i in sorted(peers):
            stores.append(
                await RaftStore.open(
                    i,
                    peers,
                    Path(base_dir) / f"n{i}",
                    config,
                    request_timeout=request_timeout,
                    snapshot_every=snapshot_every,
                )
            )
        # No need to wait out an election timeout: campaign once the first node can reach
        # the others (a pre-vote sent before that would be lost).
        loop = asyncio.get_running_loop()
        first = stores[0].node
        connect_by = loop.time() + 1.0
        while loop.time() < connect_by and not all(
            first.transport is not None and first.transport.connected(p)
            for p in sorted(peers)
            if p != first.id
        ):
            await asyncio.sleep(0.002)
        if first.leader_id == NONE:
            stores[0].campaign()
        leader = await wait_for_leader(stores, within)
        yield leader, stores
    finally:
        for store in stores:
            await store.close()


async def wait_for_leader(stores: Sequence[RaftStore], within: float = 10.0) -> RaftStore:
    """The store whose node leads and has committed an entry of its term (so it serves)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        for store in stores:
            if store._closed or not store.node.is_leader:
                continue
            status = store.node.status()
            raft = store.node.raft
            if raft is not None and raft.log.term(status.commit) == status.term:
                return store
        if loop.time() > deadline:
            raise StoreError(
                f"no raft leader among {len(stores)} nodes within {within:g} s",
                "check that a majority of the nodes are up and can reach each other",
            )
        await asyncio.sleep(0.005)
