"""The collector's metrics side: samples pushed by agents go into the embedded time series
(``tsdb``), the newest of each series is shown at ``/metrics``, and
``GET /telemetry/metrics?name=…&since=…&step=…&agg=…&<label>=<value>…`` answers the dashboard.

Push format (``POST /telemetry/samples``, ingest token)::

    {"at": 1700000000.0, "samples": [{"name": "corral_instance_threads",
      "labels": {"service": "orders", "instance": "orders-0", "release": "3", "node": "local"},
      "value": 4}]}

A malformed body is a 400 and nothing of it is kept. A series not pushed again within
``STALE_S`` (an instance that stopped) leaves ``/metrics`` — it stays in the time series.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any

import msgspec

from corral.errors import UserError
from corral.telemetry.exposition import escape
from corral.telemetry.tsdb import MetricSample, TimeSeriesDB

__all__ = ["MetricsKeeper"]

STALE_S = 60.0
MAX_SAMPLES = 50_000  # in one push
NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
QUERY_KEYS = frozenset({"name", "since", "until", "minutes", "step", "agg"})


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
        self._latest: dict[tuple[str, str], tuple[dict[str, str], float, float]] = {}
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
        at = push.at if abs(push.at - now) < 3600 else now  # a wild clock cannot bury points
        batch = [MetricSample(s.name, s.labels, s.value) for s in push.samples]
        self.tsdb.write(batch, at)
        with self._lock:
            for m in batch:
                key = (m.name, ",".join(f"{k}={v}" for k, v in sorted(m.labels.items())))
                self._latest[key] = (dict(m.labels), m.value, now)
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
        for (name, _), (labels, value, _at) in latest:
            if name != current:
                current = name
                kind = "counter" if name.endswith("_total") else "gauge"
                out += [f"# HELP {name} Sampled by the node agent.", f"# TYPE {name} {kind}"]
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
