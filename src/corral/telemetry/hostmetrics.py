"""Host metrics sampled by the collector on its own node, kept in a small embedded time series.

The collector runs on the node, so it samples the node itself (psutil): CPU utilisation,
memory used/total, disk usage of the platform's home and disk I/O, network bytes. Every
``interval_s`` (10 s) one row per host goes into ``fine`` (kept ``fine_keep_s``, 24 h); each
coarse bucket (``coarse_s``, 1 min, kept ``coarse_keep_s``, 7 days) is recomputed from its
fine rows on every sample, so it is complete once its minute is over and needs no batch job.
Gauges are averaged over the bucket, rates (bytes/s, computed from psutil's counters between
two samples) too; ``/metrics`` shows the latest gauges and psutil's raw counters, which is
what Prometheus's ``rate()`` wants.

Storage: its own SQLite file beside the span store (``metrics.db``), so the 10-second write
never waits behind a span batch for SQLite's single write lock, and pruning spans by size
never touches it. It is bounded by construction: rows per host = keep / resolution (8 640 +
10 080). The same file keeps which host each instance runs on (``host.name`` of its spans,
learnt at ingest), which impact analysis by host reads.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import psutil

from corral.errors import StoreCorrupt

GAUGES = ("cpu_ratio", "mem_used", "mem_total", "disk_used", "disk_total")
RATES = ("disk_read_bps", "disk_write_bps", "net_rx_bps", "net_tx_bps")
FIELDS = GAUGES + RATES
MAX_INSTANCES = 100_000  # instance → host rows kept (the newest)


@dataclass(frozen=True)
class SeriesRetention:
    interval_s: int = 10
    fine_keep_s: int = 86_400
    coarse_s: int = 60
    coarse_keep_s: int = 7 * 86_400


class Counters(NamedTuple):
    """psutil's cumulative byte counters (since boot)."""

    disk_read: int
    disk_write: int
    net_rx: int
    net_tx: int


class HostSample(NamedTuple):
    ts_s: int
    cpu_ratio: float  # 0…1 over every CPU, since the previous sample
    mem_used: int
    mem_total: int
    disk_used: int
    disk_total: int
    disk_read_bps: float
    disk_write_bps: float
    net_rx_bps: float
    net_tx_bps: float


def rates(previous: Counters | None, current: Counters, elapsed_s: float) -> tuple[float, ...]:
    """Bytes/s per counter; 0 for the first sample, a counter reset or no elapsed time."""
    if previous is None or elapsed_s <= 0:
        return (0.0,) * len(current)
    return tuple(max(0, c - p) / elapsed_s for p, c in zip(previous, current, strict=True))


class HostSampler:
    """Reads the node with psutil; keeps the previous counters to turn them into rates."""

    def __init__(self, disk_path: str | Path = "/") -> None:
        self.disk_path = str(disk_path)
        self.counters: Counters | None = None
        self._previous: tuple[float, Counters] | None = None
        psutil.cpu_percent(None)  # primes the CPU counter: the first real reading is a delta

    def read_counters(self) -> Counters:
        disk = psutil.disk_io_counters()
        net = psutil.net_io_counters()
        return Counters(
            disk.read_bytes if disk else 0,
            disk.write_bytes if disk else 0,
            net.bytes_recv if net else 0,
            net.bytes_sent if net else 0,
        )

    def sample(self, now_s: float) -> HostSample:
        counters = self.read_counters()
        previous = self._previous
        elapsed = now_s - previous[0] if previous else 0.0
        rated = rates(previous[1] if previous else None, counters, elapsed)
        self._previous = (now_s, counters)
        self.counters = counters
        memory = psutil.virtual_memory()
        try:
            usage = psutil.disk_usage(self.disk_path)
            disk_used, disk_total = usage.used, usage.total
        except OSError:
            disk_used = disk_total = 0
        return HostSample(
            int(now_s),
            psutil.cpu_percent(None) / 100.0,
            memory.total - memory.available,
            memory.total,
            disk_used,
            disk_total,
            *rated,
        )


_COLUMNS = ", ".join(f"{f} REAL NOT NULL" for f in FIELDS)


class HostSeries:
    """The embedded time series (module docstring). Thread-safe: one connection, one lock."""

    def __init__(self, path: str | Path, retention: SeriesRetention | None = None) -> None:
        self.path = str(path)
        self.retention = retention or SeriesRetention()
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(
                f"""
                CREATE TABLE IF NOT EXISTS fine (host TEXT NOT NULL, ts INTEGER NOT NULL,
                    {_COLUMNS}, PRIMARY KEY (host, ts)) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS coarse (host TEXT NOT NULL, ts INTEGER NOT NULL,
                    {_COLUMNS}, PRIMARY KEY (host, ts)) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS instance_hosts (
                    instance TEXT PRIMARY KEY, host TEXT NOT NULL, seen INTEGER NOT NULL);
                """
            )
        except sqlite3.DatabaseError as exc:
            raise StoreCorrupt(
                f"metrics store {self.path} cannot be opened: {exc}",
                "move the file aside; the collector creates a new one on start",
            ) from None
        self.latest: dict[str, HostSample] = {}

    def add(self, host: str, sample: HostSample) -> None:
        """Store one fine sample, recompute its coarse bucket, drop what is past retention."""
        r = self.retention
        bucket = sample.ts_s // r.coarse_s * r.coarse_s
        averages = ", ".join(f"AVG({f})" for f in FIELDS)
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                db.execute(
                    f"INSERT OR REPLACE INTO fine VALUES (?, ?, {', '.join('?' for _ in FIELDS)})",
                    (host, *sample),
                )
                db.execute(
                    f"INSERT OR REPLACE INTO coarse SELECT host, ?, {averages} FROM fine "
                    "WHERE host = ? AND ts >= ? AND ts < ? GROUP BY host",
                    (bucket, host, bucket, bucket + r.coarse_s),
                )
                db.execute("DELETE FROM fine WHERE ts < ?", (sample.ts_s - r.fine_keep_s,))
                db.execute("DELETE FROM coarse WHERE ts < ?", (sample.ts_s - r.coarse_keep_s,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self.latest[host] = sample

    def points(self, host: str, start_s: int, end_s: int, now_s: int) -> tuple[int, list[Any]]:
        """(resolution, rows of ``ts, *FIELDS``) in [start, end): fine while the window is
        within the fine retention, else coarse."""
        r = self.retention
        fine = start_s >= now_s - r.fine_keep_s
        table, resolution = ("fine", r.interval_s) if fine else ("coarse", r.coarse_s)
        with self._lock:
            rows = self._db.execute(
                f"SELECT ts, {', '.join(FIELDS)} FROM {table} "
                "WHERE host = ? AND ts >= ? AND ts < ? ORDER BY ts",
                (host, start_s, end_s),
            ).fetchall()
        return resolution, rows

    def hosts(self) -> list[str]:
        with self._lock:
            found = self._db.execute("SELECT DISTINCT host FROM coarse").fetchall()
        return sorted({h for (h,) in found} | set(self.latest))

    def rows(self, table: str) -> int:
        if table not in ("fine", "coarse", "instance_hosts"):
            raise ValueError(table)
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    # -- which host each instance runs on ------------------------------------------------
    def save_instance_hosts(self, pairs: list[tuple[str, str]], now_s: int) -> None:
        if not pairs:
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN")
            try:
                db.executemany(
                    "INSERT OR REPLACE INTO instance_hosts VALUES (?, ?, ?)",
                    [(i, h, now_s) for i, h in pairs],
                )
                db.execute(
                    "DELETE FROM instance_hosts WHERE instance NOT IN (SELECT instance FROM "
                    "instance_hosts ORDER BY seen DESC LIMIT ?)",
                    (MAX_INSTANCES,),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def instance_hosts(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT instance, host FROM instance_hosts").fetchall())

    def close(self) -> None:
        with self._lock:
            self._db.close()


def exposition(host: str, sample: HostSample | None, counters: Counters | None) -> list[str]:
    """Prometheus text lines for the latest sample of `host`."""
    label = '{host="' + host.replace("\\", "\\\\").replace('"', '\\"') + '"}'
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, value: float) -> None:
        shown = str(value) if isinstance(value, int) else repr(round(value, 6))
        lines.extend(
            (f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{label} {shown}")
        )

    if sample is not None:
        metric("corral_host_cpu_utilization_ratio", "gauge", "CPU busy, 0-1", sample.cpu_ratio)
        metric("corral_host_memory_used_bytes", "gauge", "Memory in use", sample.mem_used)
        metric("corral_host_memory_total_bytes", "gauge", "Memory installed", sample.mem_total)
        metric("corral_host_disk_used_bytes", "gauge", "Disk used (home)", sample.disk_used)
        metric("corral_host_disk_total_bytes", "gauge", "Disk size (home)", sample.disk_total)
    if counters is not None:
        metric("corral_host_disk_read_bytes_total", "counter", "Disk bytes read", counters[0])
        metric("corral_host_disk_written_bytes_total", "counter", "Disk bytes written", counters[1])
        metric("corral_host_network_receive_bytes_total", "counter", "Bytes received", counters[2])
        metric("corral_host_network_transmit_bytes_total", "counter", "Bytes sent", counters[3])
    return lines
