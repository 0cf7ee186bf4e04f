"""The agent's sampling loop: every ``interval`` seconds, read each supervised instance's
process metrics (``procmetrics``) in a thread and POST them to the node's telemetry collector
(``POST /telemetry/samples``, the ingest token), which keeps them in its embedded time series
and shows the newest at its ``/metrics``.

Telemetry never slows supervision: reading runs off the loop, a collector that is absent or
slow (2 s timeout) costs one skipped push, counted in ``failed``; the newest samples stay in
``latest`` for whoever asks in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import aiohttp

from corral import clock
from corral.agent.procmetrics import Identity, read_instance, samples
from corral.home import Home
from corral.telemetry.tsdb import MetricSample

__all__ = ["INTERVAL_S", "ProcessMetricsLoop"]

log = logging.getLogger("corral.agent.metrics")

INTERVAL_S = 10.0
SAMPLES_PATH = "/telemetry/samples"


class ProcessMetricsLoop:
    def __init__(
        self,
        home: Home,
        instances: Callable[[], list[tuple[Identity, Path]]],
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.home = home
        self.instances = instances
        self.interval_s = interval_s
        self.latest: list[MetricSample] = []
        self.pushed = 0
        self.failed = 0

    def read(self, instances: list[tuple[Identity, Path]] | None = None) -> list[MetricSample]:
        """Read ``instances`` (default: ask ``self.instances()`` now, so only on the loop)."""
        out: list[MetricSample] = []
        for identity, directory in self.instances() if instances is None else instances:
            reading = read_instance(directory)
            if reading is not None:
                out.extend(samples(identity, reading))
        return out

    async def sample_once(self, session: aiohttp.ClientSession | None = None) -> None:
        # The listing walks the agent's ``supervised`` dict, which the loop mutates: take it
        # here, on the loop, and hand the thread a private list.
        self.latest = await asyncio.to_thread(self.read, self.instances())
        if session is not None and self.latest:
            await self._push(session, self.latest, clock.wall())

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
            while True:
                try:
                    await self.sample_once(session)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a failed sample is a gap in the series, not a dead agent
                    log.exception("sampling instance metrics failed")
                now = clock.wall()
                await asyncio.sleep(self.interval_s - now % self.interval_s)

    async def _push(
        self, session: aiohttp.ClientSession, batch: list[MetricSample], at: float
    ) -> None:
        url = ""
        with contextlib.suppress(OSError):
            url = (self.home.path / "collector").read_text().strip()
        if not url:
            return
        token = self.home.token("ingest")
        body = {
            "at": at,
            "samples": [
                {"name": s.name, "labels": dict(s.labels), "value": s.value} for s in batch
            ],
        }
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with session.post(url + SAMPLES_PATH, json=body, headers=headers) as answer:
                if answer.status >= 300:
                    raise aiohttp.ClientResponseError(
                        answer.request_info, (), status=answer.status, message=await answer.text()
                    )
            self.pushed += len(batch)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failed += len(batch)
            log.debug("pushing %d instance samples to %s failed: %s", len(batch), url, exc)
