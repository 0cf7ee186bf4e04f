"""The collector's metrics side: samples pushed by agents go into the embedded time series
(``tsdb``), the newest of each series is shown at ``/metrics``, and
``GET /telemetry/metrics?name=…&since=…&step=…&agg=…&<label>=<value>…`` answers the dashboard.

Push format (``POST /telemetry/samples``, ingest token)::

    {"at": 1700000000.0, "samples": [{"name": "corral_instance_threads",
      "labels": {"service": "orders", "instance": "orders-0", "release": "3", "node": "local"},
      "value": 4}]}

A malformed body is a 400 and nothing of it is kept. ``at`` is clamped to
``[now - tiers[0].resolution_s, now]``: the rollups (``retention``) only wait one fine step for
late points, so an older sample would land in a bucket already rolled up and never reach the
coarser tiers; a clock ahead of the collector's is read as now. A series not pushed again within
``STALE_S`` (an instance that stopped) leaves ``/metrics`` — it stays in the time series.

The platform's own counters are pulled, not pushed: `scrape_platform` reads the control plane's
``/metrics`` (``$CORRAL_HOME/api``) and the platform gateway's per-worker snapshots
(``$CORRAL_HOME/gateway/metrics-*.json``, when the gateway writes them) every ``interval`` and
keeps their samples in the time series, so ``/telemetry/metrics?name=corral_gateway_requests_total``
answers like an agent's series. Histogram buckets are kept as series like any other (``le`` is a
label); an absent source is skipped silently and retried the next period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec

from corral import clock
from corral.errors import UserError
from corral.home import Home
from corral.telemetry.exposition import escape
from corral.telemetry.tsdb import MetricSample, TimeSeriesDB

__all__ = ["MetricsKeeper", "parse_text", "scrape_platform"]

log = logging.getLogger("corral.telemetry.metrics")
SCRAPE_INTERVAL_S = 10.0

STALE_S = 60.0
MAX_SAMPLES = 50_000  # in one push
NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
QUERY_KEYS = frozenset({"name", "since", "until", "minutes", "step", "agg"})
PUSHED = "Sampled by the node agent."
SCRAPED = {  # by the `source` label `scrape_platform` adds
    "control-plane": "Scraped from the control plane's /metrics.",
    "gateway": "Read from the platform gateway's per-worker metrics snapshots.",
}


class _Sample(msgspec.Struct):
    name: str
    value: float
    labels: dict[str, str] = {}


class _Push(msgspec.Struct):
    at: float
    samples: list[_Sample]


class MetricsKeeper:
    def __init__(self, tsdb: TimeSeriesDB) -> None:
        self.tsdb = tsdb
        self.received = 0
        # series → (labels, newest value, when, where it comes from: the # HELP text)
        self._latest: dict[tuple[str, str], tuple[dict[str, str], float, float, str]] = {}
        self._lock = threading.Lock()

    def ingest(self, body: bytes, now: float) -> int:
        """Decode and store one push; returns the samples kept. Raises UserError."""
        try:
            push = msgspec.json.decode(body, type=_Push)
        except msgspec.DecodeError as exc:
            raise UserError(
                f"metric samples: {exc}",
                'send {"at": seconds, "samples": [{"name", "labels", "value"}]}',
            ) from None
        if len(push.samples) > MAX_SAMPLES:
            raise UserError(f"{len(push.samples)} samples in one push", f"send ≤ {MAX_SAMPLES}")
        for s in push.samples:
            bad = [k for k in s.labels if not LABEL.match(k)]
            if not NAME.match(s.name) or bad:
                raise UserError(
                    f"metric {s.name!r}: invalid name or label {bad}",
                    "use Prometheus names: [a-zA-Z_:][a-zA-Z0-9_:]*",
                )
        at = max(now - self.tsdb.tiers[0].resolution_s, min(push.at, now))
        batch = [MetricSample(s.name, s.labels, s.value) for s in push.samples]
        self.tsdb.write(batch, at)
        with self._lock:
            for m in batch:
                key = (m.name, ",".join(f"{k}={v}" for k, v in sorted(m.labels.items())))
                self._latest[key] = (dict(m.labels), m.value, now, PUSHED)
        self.received += len(batch)
        return len(batch)

    def keep(self, batch: list[MetricSample], at: float) -> int:
        """Store samples the collector read itself (a scrape); they show at ``/metrics`` too."""
        if not batch:
            return 0
        self.tsdb.write(batch, at)
        with self._lock:
            for m in batch:
                key = (m.name, ",".join(f"{k}={v}" for k, v in sorted(m.labels.items())))
                origin = SCRAPED.get(m.labels.get("source", ""), "Read by the collector.")
                self._latest[key] = (dict(m.labels), m.value, at, origin)
        self.received += len(batch)
        return len(batch)

    def lines(self, now: float) -> list[str]:
        """Prometheus text lines of the newest value of every series pushed recently."""
        with self._lock:
            for key in [k for k, v in self._latest.items() if now - v[2] > STALE_S]:
                del self._latest[key]
            latest = sorted(self._latest.items())
        out: list[str] = []
        current = ""
        for (name, _), (labels, value, _at, origin) in latest:
            if name != current:
                current = name
                kind = "counter" if name.endswith("_total") else "gauge"
                out += [f"# HELP {name} {origin}", f"# TYPE {name} {kind}"]
            shown = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))
            out.append(f"{name}{{{shown}}} {value!r}")
        return out

    def query(self, params: Mapping[str, str], now: int) -> dict[str, Any]:
        name = params.get("name", "")
        if not name:
            raise UserError(
                "query parameter name is required",
                f"add ?name=…; kept: {', '.join(self.tsdb.names()) or 'nothing yet'}",
            )
        until = _int(params, "until", now + 1)
        minutes = _int(params, "minutes", 60)
        since = _int(params, "since", until - 60 * minutes)
        step = _int(params, "step", 0) or max(1, (until - since) // 300)
        matchers = {k: v for k, v in params.items() if k not in QUERY_KEYS}
        return self.tsdb.query(name, matchers, since, until, step, params.get("agg", "avg"), now)


def _int(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name, "")
    if not raw:
        return default
    try:
        return int(float(raw))
    except ValueError:
        raise UserError(f"query parameter {name}={raw!r} is not a number", "") from None


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_text(text: str, extra: Mapping[str, str] | None = None) -> list[MetricSample]:
    """Samples of a Prometheus text exposition (0.0.4); comments, exemplars and lines that
    do not parse are skipped. ``extra`` labels are added to every sample (e.g. the source)."""
    out = []
    for raw in text.splitlines():
        line = raw.split(" # ", 1)[0].strip()  # an OpenMetrics exemplar follows " # "
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        name, labels_text, value_text = m.groups()
        try:
            value = float(value_text)
        except ValueError:
            continue
        labels = dict(extra or {})
        for key, quoted in _PAIR.findall(labels_text or ""):
            labels[key] = re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e.group(0)], quoted)
        out.append(MetricSample(name, labels, value))
    return out


def _gateway_text(home: Home) -> str:
    from corral.gateway.metrics import render  # the gateway's own exposition of its snapshots

    snapshots = []
    for path in sorted((home.path / "gateway").glob("metrics-*.json")):
        with contextlib.suppress(OSError, ValueError):
            snapshots.append(json.loads(path.read_text()))
    return render(snapshots) if snapshots else ""


async def _api_text(home: Home, http: aiohttp.ClientSession) -> str:
    try:
        base = home.api_file.read_text().strip()
    except FileNotFoundError:
        return ""
    token = home.token("read") or ""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(base + "/metrics", headers=headers) as response:
        return await response.text() if response.status == 200 else ""


async def scrape_platform(
    keeper: MetricsKeeper, home: Home, interval_s: float = SCRAPE_INTERVAL_S
) -> None:
    """Keep the control plane's and the platform gateway's counters in the time series, every
    `interval_s`, until cancelled."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            batch: list[MetricSample] = []
            try:
                batch += parse_text(await _api_text(home, http), {"source": "control-plane"})
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.debug("scraping the control plane: %s", exc)
            try:
                gateway = await loop.run_in_executor(None, _gateway_text, home)
                batch += parse_text(gateway, {"source": "gateway"})
            except Exception:  # a half-written snapshot must not end the loop
                log.exception("reading the gateway's metrics failed")
            if batch:
                await loop.run_in_executor(None, keeper.keep, batch, clock.wall())
            await asyncio.sleep(interval_s)
