"""Run the controllers on the Raft leader only (adapter around ``control.leadership``).

``Controllers`` is the set the single-machine server runs beside its API: the agent of this
machine, the telemetry collector's record, the reconciler and the autoscaler — plus the
alerter, which the single server runs with its API but a cluster must run once, not per node
(or every firing would be sent once per node). ``LeaderWatch``
polls "am I the leader?", asks the pure ``Leadership`` machine what to do, and starts or
stops them. Stopping leaves every instance running under its shim; the next leader's agent
re-adopts them (on one machine every node shares ``$CORRAL_HOME``, hence the instances'
directories). A start that is still waiting on the Store when leadership is lost is
cancelled, and whatever it had opened is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sized

from corral import clock
from corral.agent.agent import Agent
from corral.agent.usage import CpuUsage
from corral.control.alerter import Alerter
from corral.control.autoscaler import Autoscaler
from corral.control.leadership import Act, Leadership
from corral.control.reconciler import Reconciler
from corral.control.system import ensure_collector
from corral.home import Home
from corral.store.base import Store

log = logging.getLogger("corral.leader")


class Controllers:
    def __init__(self, store: Store, home: Home) -> None:
        self.store = store
        self.home = home
        self.agent: Agent | None = None
        self.reconciler: Reconciler | None = None
        self.autoscaler: Autoscaler | None = None
        self.alerter: Alerter | None = None
        self.on_pass: Callable[[float], None] | None = None  # the reconciler's, for metrics

    @property
    def passes(self) -> int:
        return self.reconciler.passes if self.reconciler is not None else 0

    @property
    def queue(self) -> Sized:
        """The reconciler's work queue (empty on a node that does not lead)."""
        return self.reconciler.queue if self.reconciler is not None else ()

    async def start(self) -> None:
        """Same order as the single server: the agent re-adopts running shims before the
        reconciler plans anything, so nothing running is mistaken for missing."""
        try:
            self.agent = Agent(self.store, self.home)
            await self.agent.start()
            await ensure_collector(self.store, self.home.path)
            self.reconciler = Reconciler(
                self.store, endpoints_file=self.home.path / "endpoints.json"
            )
            self.reconciler.on_pass = self.on_pass
            await self.reconciler.start()
            self.autoscaler = Autoscaler(self.store, {"cpu": CpuUsage(self.home.instances_dir)})
            await self.autoscaler.start()
            self.alerter = Alerter(self.store, self.home)
            await self.alerter.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if self.alerter is not None:
            await self.alerter.close()
        if self.autoscaler is not None:
            await self.autoscaler.close()
        if self.reconciler is not None:
            await self.reconciler.close()
        if self.agent is not None:
            await self.agent.close()
        self.agent = self.reconciler = self.autoscaler = None
        self.alerter = None


class LeaderWatch:
    def __init__(
        self,
        is_leader: Callable[[], bool],
        controllers: Controllers,
        leadership: Leadership,
        *,
        poll: float = 0.05,
    ) -> None:
        self.is_leader = is_leader
        self.controllers = controllers
        self.leadership = leadership
        self.poll = poll
        self._starting: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="leader watch")

    async def close(self) -> None:
        for task in (self._task, self._starting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.controllers.close()

    async def _run(self) -> None:
        while True:
            act = self.leadership.observe(self.is_leader(), clock.monotonic())
            if act is Act.START:
                log.info("this node leads: starting the controllers")
                self._starting = asyncio.get_running_loop().create_task(self._start())
            elif act is Act.STOP:
                log.info("this node no longer leads: stopping the controllers")
                if self._starting is not None:
                    self._starting.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await self._starting
                    self._starting = None
                try:
                    await self.controllers.close()
                except Exception:  # a controller that fails to stop must not end this loop
                    log.exception("stopping the controllers failed; handling leadership goes on")
                self.leadership.stopped()
            await asyncio.sleep(self.poll)

    async def _start(self) -> None:
        try:
            await self.controllers.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("starting the controllers failed (%s); retrying", exc)
            self.leadership.start_failed(clock.monotonic())
        else:
            self.leadership.started()
            log.info("controllers running")
        finally:
            self._starting = None
