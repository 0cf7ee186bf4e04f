"""Durable local storage of one AP-store node: objects, hints and actor epochs in SQLite (WAL).

Theory of operation:
- **What is kept.** ``objects`` maps a key (``bucket/key``) to its versioned object — siblings
  with their dots, tombstones included — and ``hints`` maps (owner, key) to an object this node
  holds for an unreachable home node. Both are mirrored in memory (``objects``/``hints``), so
  reads, Merkle trees and handoff scans never touch the disk; memory bounds the data a node
  holds, which suits the small, hot data sets an app's AP store keeps.
- **fsync policy.** ``PRAGMA synchronous=FULL`` in WAL mode: a commit returns only after the WAL
  is fdatasync'ed. Writes are *group-committed*: ``store`` changes memory and queues the row;
  ``await sync()`` commits everything queued in one transaction, in a worker thread, shared
  by every caller waiting at that moment (one commit in flight; the next gathers what
  arrives meanwhile). Under load the next commit also waits until ``gather`` seconds after the
  previous one started: each commit costs a fixed ~150 µs of CPU (transaction, WAL sync,
  thread handoff) however few rows it holds, and on a busy node commits back to back hold a
  handful of rows each, so the wait buys more rows per fsync with CPU the puts then use. A
  commit with none in flight starts at once, so a lone write waits for nothing extra.
  A node acknowledges a replica write (and counts its own) only after
  ``sync`` returned, so a put is acknowledged once W nodes hold it on disk. A failed commit
  fails its waiters and queues its rows again (memory still holds them) for the next one.
  Only the commit thread uses the connection once the node runs (epoch blocks too).
- **One node per directory.** An exclusive ``flock`` on ``DATA_DIR/LOCK`` for the node's life:
  a second node on the same directory refuses to start.
- **Actors never reuse a dot.** A node writes as actor ``<node>.<epoch>``. Epochs are handed out
  from a block reserved durably at open (``meta.epoch``), and the actor is *not* persisted with
  an object: after a crash every key gets a fresh actor, so a dot issued before the crash —
  perhaps replicated, perhaps not durable here — is never issued again with another value.
- **Tombstones** stay until ``reap(now, grace)`` removes those older than the grace period;
  ``grace`` must outlast any replica's absence or a delete can come back. The keys whose object
  is tombstones only are kept in a set, so reaping looks at those, not at every key (a scan of
  every object blocked the loop ≈ 0.1 s at 40k keys).
- **Hints per owner** are counted as they come and go (``hint_owners``), so the handoff loop
  learns in O(owners) that no owner is back, instead of scanning every hint each second.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec

from corral.errors import AlreadyRunning, StoreError
from corral.kv import versions
from corral.kv.coordinator import Conflicts, HintStore, merger
from corral.kv.versions import EMPTY, Versioned
from corral.kv.wire import WireObject, from_wire, to_wire

EPOCH_BLOCK = 1 << 20
GATHER = 0.002  # seconds between the starts of back-to-back commits (see "fsync policy")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(WireObject).decode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (key TEXT PRIMARY KEY, obj BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS hints (
  owner TEXT NOT NULL, key TEXT NOT NULL, obj BLOB NOT NULL, PRIMARY KEY (owner, key));
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class KvStorage:
    """One node's data directory. Not thread-safe: one event loop owns it."""

    def __init__(
        self,
        data_dir: Path,
        node: str,
        conflicts: Conflicts = "siblings",
        gather: float = GATHER,
    ) -> None:
        self.path = Path(data_dir) / "kv.sqlite3"
        self.node = node
        self.conflicts: Conflicts = conflicts
        self._merge = merger(conflicts)
        try:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"kv node {node}: cannot create its data directory {data_dir}: {exc}",
                "check that --data points at a writable directory this node alone uses",
            ) from None
        self._lock = _lock(Path(data_dir), node)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            os.close(self._lock)
            raise StoreError(
                f"kv node {node}: cannot open its data at {self.path}: {exc}",
                "check that --data points at a writable directory this node alone uses",
            ) from None
        self.objects: dict[str, Versioned] = {}
        self.hints = HintStore(conflicts)
        self._tombstones: set[str] = set()  # keys whose object is tombstones only
        self._changed: set[str] = set()  # keys stored or forgotten since ``take_changed``
        self._hint_owners: dict[str, int] = {}  # owner → hints held for it
        self._pending_objects: dict[str, Versioned | None] = {}
        self._pending_hints: dict[tuple[str, str], Versioned | None] = {}
        self._inflight: asyncio.Future[None] | None = None  # the commit being written
        self._next: asyncio.Future[None] | None = None  # the commit after it
        self._gather = gather
        self._started = 0.0  # loop time the last commit started
        self._closed = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"kv-commit-{node}")
        self.commits = 0
        try:
            self._load()
            self._next_epoch, self._epoch_end = self._reserve_epochs()
        except BaseException:
            self._executor.shutdown()
            self._db.close()
            os.close(self._lock)
            raise

    def _load(self) -> None:
        try:
            for key, blob in self._db.execute("SELECT key, obj FROM objects"):
                obj = self.objects[key] = from_wire(_decode(blob))
                if obj.siblings and not obj.exists:
                    self._tombstones.add(key)
            for owner, key, blob in self._db.execute("SELECT owner, key, obj FROM hints"):
                self.hints.hints[(owner, key)] = from_wire(_decode(blob))
                self._hint_owners[owner] = self._hint_owners.get(owner, 0) + 1
        except (sqlite3.Error, msgspec.DecodeError) as exc:
            raise StoreError(
                f"kv node {self.node}: {self.path} is damaged: {exc}",
                "restore the data directory, or remove it and let anti-entropy refill it",
            ) from None

    def _reserve_epochs(self) -> tuple[int, int]:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'epoch'").fetchone()
        start = (row[0] if row else 0) + 1
        end = start + EPOCH_BLOCK
        self._db.execute("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (end,))
        return start, end

    def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=True)
        try:
            self._commit()
        finally:
            self._db.close()
            os.close(self._lock)

    # ------------------------------------------------------------------ reading

    def get(self, key: str) -> Versioned:
        return self.objects.get(key, EMPTY)

    def local(self, key: str) -> Versioned:
        """What this node knows of ``key``: its copy merged with any hint it holds."""
        held = self.hints.for_key(key) if self.hints.hints else EMPTY
        return self._merge(self.objects.get(key, EMPTY), held)

    def keys(self) -> Iterator[str]:
        return iter(sorted(self.objects))

    def take_changed(self) -> set[str]:
        """The keys whose object was stored or forgotten since the last call (for trees kept
        up to date between anti-entropy rounds)."""
        changed, self._changed = self._changed, set()
        return changed

    def hint_owners(self) -> list[str]:
        """The nodes this one holds hints for."""
        return sorted(self._hint_owners)

    # ------------------------------------------------------------------ writing

    def new_actor(self) -> str:
        if self._next_epoch >= self._epoch_end:
            # On the commit thread, after the commit in flight: the connection is in the
            # middle of its transaction there. Blocks the loop for one commit, once per block.
            reserved = self._executor.submit(self._reserve_epochs)
            self._next_epoch, self._epoch_end = reserved.result()
        epoch = self._next_epoch
        self._next_epoch += 1
        return f"{self.node}.{epoch}"

    def store(self, key: str, obj: Versioned, hint_for: str | None = None) -> Versioned:
        """Merge ``obj`` into the local copy (or into a hint for ``hint_for``); durable after
        the next ``sync``. ``obj.actor`` is kept when it is a local write's."""
        if hint_for is not None and hint_for != self.node:
            if (hint_for, key) not in self.hints.hints:
                self._hint_owners[hint_for] = self._hint_owners.get(hint_for, 0) + 1
            merged = self.hints.add(hint_for, key, obj)
            self._pending_hints[(hint_for, key)] = merged
            return merged
        local = self.objects.get(key, EMPTY)
        merged = self._merge(local, obj)
        merged = Versioned(merged.siblings, merged.context, obj.actor or local.actor)
        self.objects[key] = merged
        self._pending_objects[key] = merged
        self._changed.add(key)
        siblings = merged.siblings
        # a value first settles it without walking the siblings (the common case)
        if siblings and siblings[0].value is None and not merged.exists:
            self._tombstones.add(key)
        elif key in self._tombstones:
            self._tombstones.discard(key)
        return merged

    def hint_delivered(self, owner: str, key: str, digest: bytes) -> bool:
        if self.hints.delivered(owner, key, digest):
            self._pending_hints[(owner, key)] = None
            left = self._hint_owners[owner] - 1
            if left:
                self._hint_owners[owner] = left
            else:
                del self._hint_owners[owner]
            return True
        return False

    def reap(self, now: float, grace: float) -> int:
        """Forget tombstones older than ``grace``; returns how many."""
        objects = self.objects
        gone = sorted(k for k in self._tombstones if versions.reapable(objects[k], now, grace))
        for key in gone:
            del objects[key]
            self._tombstones.discard(key)
            self._changed.add(key)
            self._pending_objects[key] = None
        return len(gone)

    async def sync(self) -> None:
        """Return once everything stored so far is on disk (group commit).

        The commit runs in a worker thread, so the loop keeps taking requests while the disk
        syncs; what they store meanwhile goes into the next commit, which starts as soon as
        the one in flight ends. One commit is in flight at a time."""
        await asyncio.shield(self.durable())

    def durable(self) -> asyncio.Future[None]:
        """``sync`` as a future shared by every writer of the same commit, for callers that
        would rather add a callback than run a task. Never cancel it: it is shared."""
        if not self._pending_objects and not self._pending_hints:
            if self._inflight is not None:
                return self._inflight  # what was stored is in that commit
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        ours = self._next
        if ours is None:
            ours = self._next = asyncio.get_running_loop().create_future()
            if self._inflight is None:
                self._start_commit()
        return ours

    def _start_commit(self) -> None:
        if self._closed:
            return  # ``close`` committed what was queued
        done, self._next = self._next, None
        assert done is not None
        self._inflight = done
        objects, self._pending_objects = self._pending_objects, {}
        hints, self._pending_hints = self._pending_hints, {}
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        work = loop.run_in_executor(self._executor, self._write, objects, hints)
        work.add_done_callback(lambda w: self._commit_done(done, w, objects, hints))

    def _commit_done(
        self,
        done: asyncio.Future[None],
        work: asyncio.Future[None],
        objects: dict[str, Versioned | None],
        hints: dict[tuple[str, str], Versioned | None],
    ) -> None:
        self._inflight = None
        exc = work.exception()
        if exc is not None:
            # Memory still holds these rows: queue them again for the next commit, behind
            # any newer row stored for the same key meanwhile.
            self._pending_objects = {**objects, **self._pending_objects}
            self._pending_hints = {**hints, **self._pending_hints}
        if not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)
                done.exception()  # retrieved: every waiter sees it through its shield
        if self._next is not None:
            loop = asyncio.get_running_loop()
            wait = self._started + self._gather - loop.time()
            if wait > 0:
                # ``durable`` starts no commit meanwhile: it sees ``_next`` already made
                loop.call_later(wait, self._start_commit)
            else:
                self._start_commit()

    def _commit(self) -> None:
        objects, self._pending_objects = self._pending_objects, {}
        hints, self._pending_hints = self._pending_hints, {}
        self._write(objects, hints)

    def _write(
        self,
        objects: dict[str, Versioned | None],
        hints: dict[tuple[str, str], Versioned | None],
    ) -> None:
        if not objects and not hints:
            return
        try:
            db = self._db
            db.execute("BEGIN")
            # each key is in a batch once, so deletes and upserts need no order between them;
            # executemany steps one prepared statement in C, holding the GIL the loop wants
            # for less time than a Python loop of execute calls
            db.executemany(
                "DELETE FROM objects WHERE key = ?",
                [(key,) for key, obj in objects.items() if obj is None],
            )
            db.executemany(
                "INSERT OR REPLACE INTO objects VALUES (?, ?)",
                [(key, _encode(to_wire(obj))) for key, obj in objects.items() if obj is not None],
            )
            db.executemany(
                "DELETE FROM hints WHERE owner = ? AND key = ?",
                [owner_key for owner_key, obj in hints.items() if obj is None],
            )
            db.executemany(
                "INSERT OR REPLACE INTO hints VALUES (?, ?, ?)",
                [(o, k, _encode(to_wire(obj))) for (o, k), obj in hints.items() if obj is not None],
            )
            db.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise StoreError(
                f"kv node {self.node}: cannot write {self.path}: {exc}",
                "check free disk space and that no other process uses this data directory",
            ) from None


def _lock(data_dir: Path, node: str) -> int:
    """An exclusive flock on the data directory for the node's life (as the Raft WAL's): two
    nodes writing one SQLite file would each trust a memory mirror the other invalidates."""
    try:
        fd = os.open(data_dir / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StoreError(
            f"kv node {node}: cannot open {data_dir / 'LOCK'}: {exc}",
            "check that --data points at a writable directory this node alone uses",
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(
            f"kv node {node}: data directory {data_dir} is in use by another process",
            "stop the other kv node first, or give this one its own --data directory",
        ) from None
    return fd
