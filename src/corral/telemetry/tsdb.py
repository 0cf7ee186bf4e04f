"""The embedded time series: metric samples in SQLite, downsampled as they age.

A series is a metric name and its labels (``{service, instance, release, node}`` for the
per-instance process metrics). Each raw sample is folded into its tier-0 bucket (count, sum,
min, max, last: ``retention.Point``), so writing twice in one 10-second bucket keeps both.
``maintain(now)`` runs the pure ``retention.plan``: it rolls final buckets up into the coarser
tiers, then deletes what is past each tier's retention, and records each tier's watermark in
the file, so a restart neither recomputes nor skips a bucket. ``query`` picks the tier and the
segments with ``retention.choose``/``segments`` and aggregates to the asked step.

Bounded by construction: points per series ≤ Σ keep/resolution (8 640 + 10 080 + 2 160 with
the defaults), and at most ``max_series`` series (new ones past that are refused and counted
in ``refused_series``, never silently merged). One connection behind a lock: safe to call
from the collector's threads.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from corral.errors import StoreCorrupt, UserError
from corral.telemetry import retention
from corral.telemetry.retention import DEFAULT_TIERS, Point, Tier

__all__ = ["MetricSample", "TimeSeriesDB"]

MAX_SERIES = 100_000
MAX_POINTS = 11_000  # per series in one answer: a week at 1 min is 10 080


class MetricSample(NamedTuple):
    name: str
    labels: Mapping[str, str]
    value: float


def _labels_key(labels: Mapping[str, str]) -> str:
    return json.dumps({k: str(labels[k]) for k in sorted(labels)}, separators=(",", ":"))


class TimeSeriesDB:
    def __init__(
        self,
        path: str | Path,
        tiers: Sequence[Tier] = DEFAULT_TIERS,
        *,
        max_series: int = MAX_SERIES,
    ) -> None:
        problem = retention.validate(tiers)
        if problem:
            raise UserError(f"metrics retention {retention.format_tiers(tiers)}: {problem}", "")
        self.path = str(path)
        self.tiers = tuple(tiers)
        self.max_series = max_series
        self.refused_series = 0
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY,
                    name TEXT NOT NULL, labels TEXT NOT NULL, UNIQUE (name, labels));
                CREATE TABLE IF NOT EXISTS points (tier INTEGER NOT NULL,
                    series INTEGER NOT NULL, ts INTEGER NOT NULL, n INTEGER NOT NULL,
                    total REAL NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, last REAL NOT NULL,
                    PRIMARY KEY (tier, series, ts)) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS watermarks (tier INTEGER PRIMARY KEY,
                    upto INTEGER NOT NULL);
                """
            )
            rows = self._db.execute("SELECT id, name, labels FROM series").fetchall()
            marks = dict(self._db.execute("SELECT tier, upto FROM watermarks").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(
                f"metrics time series {self.path} cannot be opened: {exc}",
                "move the file aside; the collector creates a new one on start",
            ) from None
        self._ids: dict[tuple[str, str], int] = {(n, lab): i for i, n, lab in rows}
        self.watermarks = [int(marks.get(i, 0)) for i in range(len(self.tiers))]

    # -- writing ----------------------------------------------------------------------------
    def _series_id(self, name: str, labels: str, fresh: list[tuple[str, str]]) -> int | None:
        key = (name, labels)
        found = self._ids.get(key)
        if found is not None:
            return found
        if len(self._ids) >= self.max_series:
            self.refused_series += 1
            return None
        cursor = self._db.execute("INSERT INTO series (name, labels) VALUES (?, ?)", key)
        new = int(cursor.lastrowid or 0)
        self._ids[key] = new
        fresh.append(key)
        return new

    def write(self, samples: Iterable[MetricSample], ts: float) -> None:
        """Fold samples taken at ``ts`` (seconds) into their tier-0 buckets."""
        at = retention.bucket(int(ts), self.tiers[0].resolution_s)
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            fresh: list[tuple[str, str]] = []
            try:
                rows = []
                for s in samples:
                    sid = self._series_id(s.name, _labels_key(s.labels), fresh)
                    if sid is not None:
                        v = float(s.value)
                        rows.append((sid, at, v, v, v, v))
                db.executemany(
                    "INSERT INTO points VALUES (0, ?, ?, 1, ?, ?, ?, ?) "
                    "ON CONFLICT (tier, series, ts) DO UPDATE SET n = n + 1, "
                    "total = total + excluded.total, lo = MIN(lo, excluded.lo), "
                    "hi = MAX(hi, excluded.hi), last = excluded.last",
                    rows,
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                # SQLite hands the rolled-back rowids to the next new series: forget them, or
                # two series would share an id.
                for key in fresh:
                    del self._ids[key]
                raise

    def maintain(self, now: float) -> retention.Plan:
        """Roll up final buckets, drop expired points (``retention.plan``); returns the plan."""
        with self._lock:
            todo = retention.plan(int(now), self.tiers, self.watermarks)
            db = self._db
            db.execute("BEGIN")
            try:
                for r in todo.rollups:
                    self._rollup(r)
                for p in todo.prunes:
                    db.execute("DELETE FROM points WHERE tier = ? AND ts < ?", (p.tier, p.before))
                db.executemany(
                    "INSERT OR REPLACE INTO watermarks VALUES (?, ?)",
                    list(enumerate(todo.watermarks))[1:],
                )
                db.execute(
                    "DELETE FROM series WHERE id NOT IN (SELECT DISTINCT series FROM points)"
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self.watermarks = [0, *todo.watermarks[1:]]
            live = {i for (i,) in db.execute("SELECT id FROM series")}
            self._ids = {k: v for k, v in self._ids.items() if v in live}
        return todo

    def _rollup(self, r: retention.Rollup) -> None:
        size = self.tiers[r.target].resolution_s
        cursor = self._db.execute(
            "SELECT series, ts, n, total, lo, hi, last FROM points "
            "WHERE tier = ? AND ts >= ? AND ts < ? ORDER BY series, ts",
            (r.target - 1, r.start, r.end),
        )
        by_series: dict[int, list[Point]] = {}
        for sid, *point in cursor:
            by_series.setdefault(sid, []).append(Point(*point))
        self._db.executemany(
            "INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (r.target, sid, *p)
                for sid, points in by_series.items()
                for p in retention.downsample(points, size)
            ],
        )

    # -- reading ----------------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return sorted({name for name, _ in self._ids})

    def query(
        self,
        name: str,
        matchers: Mapping[str, str],
        since: int,
        until: int,
        step: int,
        agg: str,
        now: int,
    ) -> dict[str, Any]:
        """Series of ``name`` whose labels include ``matchers``, aggregated per ``step``."""
        if agg not in retention.AGGREGATIONS:
            raise UserError(
                f"unknown aggregation agg={agg!r}",
                f"use one of {', '.join(retention.AGGREGATIONS)}",
            )
        if until <= since:
            raise UserError(f"empty window: since={since} is not before until={until}", "")
        index, step = retention.choose(now, since, step, self.tiers)
        if (until - since) // step > MAX_POINTS:
            raise UserError(
                f"since={since}…until={until} at step={step}s is over {MAX_POINTS} points",
                "ask for a larger step or a shorter window",
            )
        with self._lock:
            wanted = sorted(
                (labels, sid)
                for (n, labels), sid in self._ids.items()
                if n == name and _matches(labels, matchers)
            )
            plan = retention.segments(index, since, until, self.watermarks)
            found = []
            for labels, sid in wanted:
                points: list[Point] = []
                for tier, start, end in plan:
                    rows = self._db.execute(
                        "SELECT ts, n, total, lo, hi, last FROM points WHERE tier = ? "
                        "AND series = ? AND ts >= ? AND ts < ? ORDER BY ts",
                        (tier, sid, start, end),
                    ).fetchall()
                    points.extend(Point(*row) for row in rows)
                stepped = retention.downsample(points, step)
                found.append(
                    {
                        "labels": json.loads(labels),
                        "points": [list(v) for v in retention.values(stepped, agg, step)],
                    }
                )
        return {
            "name": name,
            "agg": agg,
            "step_s": step,
            "resolution_s": self.tiers[index].resolution_s,
            "retention": retention.format_tiers(self.tiers),
            "series": found,
        }

    def rows(self, tier: int) -> int:
        with self._lock:
            got = self._db.execute("SELECT COUNT(*) FROM points WHERE tier = ?", (tier,))
            return int(got.fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _matches(labels: str, matchers: Mapping[str, str]) -> bool:
    if not matchers:
        return True
    decoded = json.loads(labels)
    return all(decoded.get(k) == v for k, v in matchers.items())
