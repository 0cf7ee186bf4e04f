"""Where spans and rollups live: the `SpanStore` seam and its SQLite implementation.

Raw spans go to one table per time partition (`partition_s`, default an hour, by span start),
so retention drops whole tables instead of deleting rows, and a size cap drops the oldest
partitions first. Each row is compact (≈ 200 bytes): the trace id as bytes, start, duration,
service and endpoint as ids into a `names` table, flags, and the rest of the span as msgpack
with attribute keys interned. A span's name is an id only when it is already a name or equals
its normalised endpoint; otherwise (``GET /api/orders/123``) the body holds the string, so raw
names, unbounded in number, never grow the `names` table or its in-memory mirror.
Two indexes serve the two raw-span questions: trace by id, and trace search by (service, start).

Rollup cells (see `rollup`) are upserted per (minute, key id) in the same transaction as the
spans that made them; keys live in a `keys` table mirrored in memory, so a rollup query is one
``GROUP BY key`` over the window's rows, mapped back to keys in Python.

One writer (the collector's store thread) and readers on their own connection (WAL), so
queries never wait for a write batch.
"""

from __future__ import annotations

import heapq
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import msgspec

from corral.errors import StoreCorrupt
from corral.telemetry.model import KIND_CODE, KINDS, Event, Facts, Span
from corral.telemetry.rollup import BUCKETS, MINUTE_US, Cell, Key

ERROR = 1
ROOT_SPAN = 2
_KIND_SHIFT = 2
SHARED = 32

HIST = [f"h{i}" for i in range(BUCKETS)]
WRITER_CACHE_KIB = 32 * 1024


class TraceQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Traces that hold at least one span matching every given condition."""

    start_us: int
    end_us: int
    service: str = ""
    endpoint: str = ""
    min_duration_us: int = 0
    max_duration_us: int = 0  # 0: no bound
    error: bool | None = None
    limit: int = 20


class RollupRow(NamedTuple):
    minute: int  # the first minute of the row's step, or -1 when summed over the window
    key: Key
    calls: int
    errors: int
    sum_us: int
    hist: list[int]


class SpanStore(Protocol):
    """What the collector and the queries need of a span backend (SQLite here; a ClickHouse
    backend would implement the same six methods)."""

    def write(
        self, spans: Sequence[tuple[Span, Facts]], cells: Mapping[tuple[int, Key], Cell]
    ) -> None:
        """Store spans and add rollup cells, atomically."""

    def trace(self, trace_id: str) -> list[Span]:
        """Every stored span of one trace, by start time ([] if none)."""

    def find_traces(self, query: TraceQuery) -> list[str]:
        """Trace ids with a span matching `query`, most recent first, at most `query.limit`."""

    def rollups(
        self,
        start_us: int,
        end_us: int,
        *,
        step_minutes: int = 0,
        where: Callable[[Key], bool] | None = None,
    ) -> list[RollupRow]:
        """Cells of keys accepted by `where` in [start, end), summed over the window
        (`step_minutes` 0) or per step."""

    def catalog(self) -> list[Key]:
        """Every rollup key ever seen (services, endpoints, peers…)."""

    def prune(self, now_us: int) -> int:
        """Apply retention and the size cap; returns the number of partitions dropped."""


@dataclass(frozen=True)
class Retention:
    partition_s: int = 3600
    spans_s: int = 7 * 86400  # raw spans
    rollups_s: int = 30 * 86400
    max_bytes: int = 2 << 30  # raw spans are dropped, oldest partition first, past this


_Body = tuple[
    str, str | None, int | str, int, int, str, list[Any], list[Event], int, str
]  # span id, parent, name (id, or the text itself), kind, instance, status, attrs, events,
# remote, peer
_body_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(_Body)


class SqliteSpanStore:
    def __init__(self, path: str | Path, retention: Retention | None = None) -> None:
        self.path = str(path)
        self.retention = retention or Retention()
        self._partition_us = self.retention.partition_s * 1_000_000
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # The trace index takes inserts at random places: with SQLite's 2 MB default the
            # writer re-read its pages from the OS per batch (≈ 2.5 µs of system time a span).
            self._db.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KIB}")
            self._create()
            self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._reader.execute("PRAGMA query_only=1")
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(
                f"span store {self.path} cannot be opened: {exc}",
                "move the file aside; the collector creates a new one on start",
            ) from None
        self._load()

    # -- schema and caches --------------------------------------------------------------
    def _create(self) -> None:
        hist = ", ".join(f"{h} INTEGER NOT NULL DEFAULT 0" for h in HIST)
        self._db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, text TEXT NOT NULL UNIQUE);
            CREATE TABLE IF NOT EXISTS keys (
                id INTEGER PRIMARY KEY, service TEXT, instance TEXT, endpoint TEXT, kind TEXT,
                peer TEXT, fingerprint TEXT, api TEXT, flags INTEGER);
            CREATE TABLE IF NOT EXISTS rollup (
                minute INTEGER NOT NULL, key INTEGER NOT NULL, count INTEGER NOT NULL,
                errors INTEGER NOT NULL, sum_us INTEGER NOT NULL, {hist},
                PRIMARY KEY (minute, key)) WITHOUT ROWID;
            """
        )

    def _load(self) -> None:
        self._names: dict[str, int] = {}
        self._texts: dict[int, str] = {}
        for i, text in self._db.execute("SELECT id, text FROM names"):
            self._names[text] = i
            self._texts[i] = text
        self._attr_keys: dict[tuple[str, ...], tuple[int, ...]] = {}  # attribute names → ids
        self._keys: dict[Key, int] = {}
        self._key_by_id: dict[int, Key] = {}
        for row in self._db.execute("SELECT * FROM keys"):
            key = Key(*row[1:])
            self._keys[key] = row[0]
            self._key_by_id[row[0]] = key
        self._services: set[int] = set()
        self._partitions: list[int] = sorted(
            int(name[len("spans_") :])
            for (name,) in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'spans_%'"
            )
        )

        for index in self._partitions:
            sql = f"SELECT DISTINCT svc FROM spans_{index}"
            self._services.update(svc for (svc,) in self._db.execute(sql))

    def _name(self, text: str, new: list[tuple[int, str]]) -> int:
        i = self._names.get(text)
        if i is None:
            i = len(self._names) + 1
            self._names[text] = i
            self._texts[i] = text
            new.append((i, text))
        return i

    def _partition(self, index: int) -> str:
        table = f"spans_{index}"
        if index not in self._partitions:
            self._db.executescript(
                f"""
                CREATE TABLE IF NOT EXISTS {table} (
                    trace BLOB NOT NULL, start INTEGER NOT NULL, dur INTEGER NOT NULL,
                    svc INTEGER NOT NULL, ep INTEGER NOT NULL, flags INTEGER NOT NULL,
                    body BLOB NOT NULL);
                CREATE INDEX IF NOT EXISTS {table}_trace ON {table} (trace);
                CREATE INDEX IF NOT EXISTS {table}_svc ON {table} (svc, start);
                """
            )
            with self._lock:
                self._partitions = sorted([*self._partitions, index])
        return table

    # -- writing ------------------------------------------------------------------------
    def write(
        self, spans: Sequence[tuple[Span, Facts]], cells: Mapping[tuple[int, Key], Cell]
    ) -> None:
        new_names: list[tuple[int, str]] = []
        new_keys: list[tuple[Any, ...]] = []
        rows: dict[int, list[tuple[Any, ...]]] = {}
        name = self._name
        part_us = self._partition_us
        encode = _body_encoder.encode
        fromhex = bytes.fromhex
        kind_code = KIND_CODE.get
        # The hot path of ingest: `known(x) or name(x, new_names)` — ids start at 1, so a
        # known name costs one dict lookup and no call.
        with self._lock:
            known = self._names.get
            key_ids = self._attr_keys
            part_index = -1
            batch: list[tuple[Any, ...]] = []
            for span, facts in spans:
                attributes = span.attributes
                names = tuple(attributes)
                ids = key_ids.get(names)
                if ids is None:
                    if len(key_ids) > 10_000:
                        key_ids.clear()
                    ids = key_ids[names] = tuple(name(k, new_names) for k in names)
                attrs: list[Any] = [None] * (2 * len(ids))
                attrs[::2] = ids
                attrs[1::2] = attributes.values()
                kind = kind_code(span.kind, 0)
                parent = span.parent_id
                flags = (
                    (ERROR if span.error else 0)
                    | (ROOT_SPAN if parent is None else 0)
                    | (kind << _KIND_SHIFT)
                    | (SHARED if span.shared else 0)
                )
                remote = span.remote_service
                body = encode(
                    (
                        span.span_id,
                        parent,
                        known(span.name)
                        or (
                            name(span.name, new_names) if span.name == facts.endpoint else span.name
                        ),
                        kind,
                        known(span.instance) or name(span.instance, new_names),
                        span.status,
                        attrs,
                        span.events,
                        known(remote) or name(remote, new_names),
                        span.peer,
                    )
                )
                start = span.start_us
                if start // part_us != part_index:
                    part_index = start // part_us
                    batch = rows.setdefault(part_index, [])
                batch.append(
                    (
                        fromhex(span.trace_id),
                        start,
                        span.duration_us,
                        known(span.service) or name(span.service, new_names),
                        known(facts.endpoint) or name(facts.endpoint, new_names),
                        flags,
                        body,
                    )
                )
            self._services.update(row[3] for batch in rows.values() for row in batch)
            upserts = []
            for (minute, key), cell in cells.items():
                key_id = self._keys.get(key)
                if key_id is None:
                    key_id = len(self._keys) + 1
                    self._keys[key] = key_id
                    self._key_by_id[key_id] = key
                    new_keys.append((key_id, *key))
                upserts.append((minute, key_id, cell.count, cell.errors, cell.sum_us, *cell.hist))
        db = self._db
        tables = {index: self._partition(index) for index in rows}  # DDL commits: not in the txn
        try:
            db.execute("BEGIN")
            if new_names:
                db.executemany("INSERT INTO names (id, text) VALUES (?, ?)", new_names)
            if new_keys:
                db.executemany("INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", new_keys)
            for index, batch in rows.items():
                db.executemany(f"INSERT INTO {tables[index]} VALUES (?, ?, ?, ?, ?, ?, ?)", batch)
            if upserts:
                db.executemany(_UPSERT, upserts)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            with self._lock:
                self._load()  # forget ids that were never committed
            raise

    # -- reading ------------------------------------------------------------------------
    def _span(self, trace: bytes, start: int, dur: int, svc: int, flags: int, body: bytes) -> Span:
        texts = self._texts
        span_id, parent, name, kind, instance, status, attrs, events, remote, peer = (
            _body_decoder.decode(body)
        )
        return Span(
            trace_id=trace.hex(),
            span_id=span_id,
            parent_id=parent,
            name=texts[name] if isinstance(name, int) else name,
            kind=KINDS[kind],
            service=texts[svc],
            instance=texts[instance],
            start_us=start,
            duration_us=dur,
            error=bool(flags & ERROR),
            status=status,
            attributes={texts[attrs[i]]: attrs[i + 1] for i in range(0, len(attrs), 2)},
            events=tuple(events),
            remote_service=texts[remote],
            peer=peer,
            shared=bool(flags & SHARED),
        )

    def trace(self, trace_id: str) -> list[Span]:
        try:
            raw = bytes.fromhex(trace_id)
        except ValueError:
            return []
        with self._lock:
            partitions = list(reversed(self._partitions))
        spans: list[Span] = []
        with self._read_lock:
            for index in partitions:
                sql = (
                    f"SELECT trace, start, dur, svc, flags, body FROM spans_{index} WHERE trace = ?"
                )
                rows = self._reader.execute(sql, (raw,)).fetchall()
                spans.extend(self._span(*row) for row in rows)
        spans.sort(key=lambda s: (s.start_us, s.span_id))
        return spans

    def find_traces(self, query: TraceQuery) -> list[str]:
        with self._lock:
            partitions = [
                p
                for p in reversed(self._partitions)
                if p * self._partition_us < query.end_us
                and (p + 1) * self._partition_us > query.start_us
            ]
            if query.service:
                ids = [self._names[query.service]] if query.service in self._names else []
            else:
                ids = sorted(self._services)
            endpoint = self._names.get(query.endpoint) if query.endpoint else None
        if query.endpoint and endpoint is None:
            return []
        if not ids:
            return []
        where = ["svc = ?", "start >= ?", "start < ?"]
        extra: list[Any] = []
        if endpoint is not None:
            where.append("ep = ?")
            extra.append(endpoint)
        if query.min_duration_us:
            where.append("dur >= ?")
            extra.append(query.min_duration_us)
        if query.max_duration_us:
            where.append("dur <= ?")
            extra.append(query.max_duration_us)
        if query.error is not None:
            where.append("(flags & 1) = ?")
            extra.append(1 if query.error else 0)
        found: list[str] = []
        seen: set[bytes] = set()
        with self._read_lock:
            for index in partitions:
                sql = (
                    f"SELECT start, trace FROM spans_{index} WHERE {' AND '.join(where)} "
                    "ORDER BY start DESC"
                )
                cursors: list[Iterator[tuple[int, bytes]]] = [
                    self._reader.execute(sql, (i, query.start_us, query.end_us, *extra))
                    for i in ids
                ]
                for _start, trace in heapq.merge(*cursors, key=lambda r: r[0], reverse=True):
                    if trace not in seen:
                        seen.add(trace)
                        found.append(trace.hex())
                        if len(found) >= query.limit:
                            return found
        return found

    def rollups(
        self,
        start_us: int,
        end_us: int,
        *,
        step_minutes: int = 0,
        where: Callable[[Key], bool] | None = None,
    ) -> list[RollupRow]:
        with self._lock:
            keys = dict(self._key_by_id)
        first, last = start_us // MINUTE_US, -(-end_us // MINUTE_US)  # [first, last)
        params: list[Any] = [first, last]
        key_filter = ""
        if where is not None:
            wanted = [i for i, key in keys.items() if where(key)]
            if not wanted:
                return []
            if len(wanted) < len(keys):
                key_filter = f" AND key IN ({','.join(map(str, wanted))})"
        sums = ", ".join(f"SUM({h})" for h in HIST)
        if step_minutes > 0:
            group = f"(minute - {first}) / {int(step_minutes)}"
            sql = (
                f"SELECT {group} AS step, key, SUM(count), SUM(errors), SUM(sum_us), {sums} "
                f"FROM rollup WHERE minute >= ? AND minute < ?{key_filter} GROUP BY step, key"
            )
        else:
            sql = (
                f"SELECT -1, key, SUM(count), SUM(errors), SUM(sum_us), {sums} "
                f"FROM rollup WHERE minute >= ? AND minute < ?{key_filter} GROUP BY key"
            )
        with self._read_lock:
            rows = self._reader.execute(sql, params).fetchall()
        out = []
        for row in rows:
            key = keys.get(row[1])
            if key is None:
                continue
            minute = -1 if step_minutes <= 0 else first + row[0] * step_minutes
            out.append(RollupRow(minute, key, row[2], row[3], row[4], list(row[5:])))
        return out

    def catalog(self) -> list[Key]:
        with self._lock:
            return list(self._keys)

    # -- retention ----------------------------------------------------------------------
    def size_bytes(self) -> int:
        with self._read_lock:
            pages = self._reader.execute("PRAGMA page_count").fetchone()[0]
            free = self._reader.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._reader.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def span_count(self) -> int:
        with self._lock:
            partitions = list(self._partitions)
        with self._read_lock:
            return sum(
                self._reader.execute(f"SELECT COUNT(*) FROM spans_{p}").fetchone()[0]
                for p in partitions
            )

    def prune(self, now_us: int) -> int:
        horizon = (now_us - self.retention.spans_s * 1_000_000) // self._partition_us
        dropped = 0
        with self._lock:
            partitions = list(self._partitions)
        for index in partitions:
            if index < horizon:
                self._drop(index)
                dropped += 1
        while self.size_bytes() > self.retention.max_bytes:
            with self._lock:
                partitions = list(self._partitions)
            if len(partitions) <= 1:
                break
            self._drop(partitions[0])
            dropped += 1
        oldest_minute = (now_us - self.retention.rollups_s * 1_000_000) // MINUTE_US
        self._db.execute("DELETE FROM rollup WHERE minute < ?", (oldest_minute,))
        if dropped:
            self._db.execute("PRAGMA incremental_vacuum")
        return dropped

    def _drop(self, index: int) -> None:
        with self._lock:
            self._partitions = [p for p in self._partitions if p != index]
        self._db.execute(f"DROP TABLE IF EXISTS spans_{index}")

    def close(self) -> None:
        self._reader.close()
        self._db.close()


_UPSERT = (
    f"INSERT INTO rollup (minute, key, count, errors, sum_us, {', '.join(HIST)}) "
    f"VALUES (?, ?, ?, ?, ?, {', '.join('?' for _ in HIST)}) "
    "ON CONFLICT (minute, key) DO UPDATE SET count = count + excluded.count, "
    "errors = errors + excluded.errors, sum_us = sum_us + excluded.sum_us, "
    + ", ".join(f"{h} = {h} + excluded.{h}" for h in HIST)
)
