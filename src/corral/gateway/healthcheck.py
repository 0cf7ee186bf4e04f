"""Active health checks of static upstreams: a pure threshold state and a small asyncio adapter.

``CheckState`` is the decision (HAProxy's rise/fall): an endpoint starts healthy, so a gateway
serves as soon as it starts; ``unhealthy_threshold`` failed checks in a row mark it unhealthy
and ``healthy_threshold`` passing checks in a row bring it back. It takes results, never
clocks or sockets.

``HealthChecker`` runs the checks — one task per (cluster, address), every ``interval``, each
bounded by ``timeout`` — and calls ``on_change`` with the full map ``cluster key → sorted
unhealthy addresses`` whenever any endpoint flips. In ``corral gateway serve`` it runs once per
gateway, in the supervising process, never once per worker (see ``corral.gateway.serve``).
An HTTP check passes on a status in ``expect_status`` (default 200-399); a TCP check passes when
the connection opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from corral.gateway.config import HealthCheck
from corral.gateway.router import RouteTable

__all__ = ["CheckState", "HealthChecker", "check_once"]

log = logging.getLogger("corral.gateway.health")


@dataclass
class CheckState:
    healthy_threshold: int
    unhealthy_threshold: int
    healthy: bool = True
    successes: int = 0
    failures: int = 0
    detail: str = ""

    def record(self, ok: bool, detail: str = "") -> bool:
        """Feed one check result; True when the endpoint's health flipped."""
        self.detail = detail
        if ok:
            self.failures = 0
            self.successes += 1
            if not self.healthy and self.successes >= self.healthy_threshold:
                self.healthy = True
                return True
        else:
            self.successes = 0
            self.failures += 1
            if self.healthy and self.failures >= self.unhealthy_threshold:
                self.healthy = False
                return True
        return False


async def check_once(address: str, check: HealthCheck) -> tuple[bool, str]:
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(host, int(port_text))
            if check.type == "tcp":
                return True, "connected"
            writer.write(
                f"GET {check.path} HTTP/1.1\r\nHost: {address}\r\n"
                "User-Agent: corral-gateway-health\r\nConnection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
    except TimeoutError:
        return False, f"no answer within {check.timeout:g}s"
    except OSError as error:
        return False, error.strerror or str(error)
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
    parts = line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, "not an HTTP response"
    status = int(parts[1])
    ok = status in check.expect_status if check.expect_status else 200 <= status < 400
    return ok, f"status {status}"


class HealthChecker:
    def __init__(self, on_change: Callable[[dict[str, list[str]]], None]) -> None:
        self.on_change = on_change
        self.states: dict[tuple[str, str], CheckState] = {}
        self._tasks: dict[tuple[str, str], tuple[HealthCheck, asyncio.Task[None]]] = {}

    def unhealthy(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for (cluster, address), state in sorted(self.states.items()):
            if not state.healthy:
                out.setdefault(cluster, []).append(address)
        return out

    def update(self, table: RouteTable) -> None:
        """Check what ``table`` asks for: start new checks, stop those no longer wanted."""
        wanted: dict[tuple[str, str], HealthCheck] = {}
        for key, cluster in table.clusters.items():
            if cluster.health_check is not None:
                for address, _ in cluster.upstreams:
                    wanted[(key, address)] = cluster.health_check
        for job in sorted(self._tasks):
            if wanted.get(job) != self._tasks[job][0]:
                self._tasks.pop(job)[1].cancel()
                self.states.pop(job, None)
        loop = asyncio.get_running_loop()
        for job, check in sorted(wanted.items()):
            if job not in self._tasks:
                self.states[job] = CheckState(check.healthy_threshold, check.unhealthy_threshold)
                self._tasks[job] = (check, loop.create_task(self._run(*job, check)))
        self.on_change(self.unhealthy())

    async def _run(self, cluster: str, address: str, check: HealthCheck) -> None:
        while True:
            ok, detail = await check_once(address, check)
            state = self.states.get((cluster, address))
            if state is None:
                return
            if state.record(ok, detail):
                word = "healthy" if state.healthy else "unhealthy"
                log.warning("upstream %s of %s is %s (%s)", address, cluster, word, detail)
                self.on_change(self.unhealthy())
            await asyncio.sleep(check.interval)

    async def close(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
