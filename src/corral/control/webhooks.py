"""Delivering alert notifications to webhooks: bounded, retried with backoff, never blocking.

`send` only enqueues (one bounded queue per webhook; when full the oldest waiting delivery is
dropped and counted), so an evaluation pass never waits for a slow receiver. One task per
webhook POSTs its queue in order. A delivery is retried after a connection error, a timeout,
408, 429 or a 5xx, waiting ``initial × 2ⁿ`` (capped, with jitter; a ``Retry-After`` of a 429/503
is honoured up to the cap), at most ``attempts`` times; any other answer ends it. A delivery
that gives up is reported through ``on_give_up`` (the alerter records an event).

Each body is signed when the webhook has a secret: ``X-Corral-Signature-256: sha256=<hex
HMAC-SHA256(secret, body)>`` (GitHub's scheme, so existing verifiers work). The secret is held
in memory only, never logged, and never part of a message: logs and events name the webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from corral import __version__

log = logging.getLogger("corral.webhooks")

QUEUE_LIMIT = 1000
INITIAL_DELAY_S = 0.5
MAX_DELAY_S = 30.0
SIGNATURE_HEADER = "X-Corral-Signature-256"
GiveUp = Callable[[str, str, str], Awaitable[None]]  # webhook, delivery id, why


@dataclass(frozen=True)
class Hook:
    name: str
    url: str
    secret: bytes | None = None
    timeout: float = 5.0
    attempts: int = 5

    def __repr__(self) -> str:  # keeps the secret out of any log line or traceback
        return f"Hook({self.name!r})"


@dataclass(frozen=True)
class Delivery:
    id: str  # the receiver's dedupe key: alert id, action, time
    event: str  # alert.firing | alert.resolved
    body: bytes


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def retry_delay(attempt: int, rng: random.Random, initial: float = INITIAL_DELAY_S) -> float:
    """Seconds before retry number `attempt` (1-based): doubling, capped, ±20 % jitter."""
    base = min(MAX_DELAY_S, initial * 2.0 ** (attempt - 1))
    return base * (0.8 + 0.4 * rng.random())


class WebhookSender:
    def __init__(
        self,
        on_give_up: GiveUp | None = None,
        rng: random.Random | None = None,
        initial_delay: float = INITIAL_DELAY_S,
    ) -> None:
        self.on_give_up = on_give_up
        self.rng = rng or random.Random(0)
        self.initial_delay = initial_delay
        self.hooks: dict[str, Hook] = {}
        self.queues: dict[str, asyncio.Queue[Delivery]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.delivered = 0
        self.dropped = 0
        self.failed = 0
        self._session: aiohttp.ClientSession | None = None

    def configure(self, hooks: list[Hook]) -> None:
        """Use `hooks` from now on; a removed webhook's queue is discarded."""
        wanted = {h.name: h for h in hooks}
        for name in sorted(set(self.tasks) - set(wanted)):
            self.tasks.pop(name).cancel()
            self.queues.pop(name, None)
        self.hooks = wanted

    def send(self, delivery: Delivery) -> None:
        for name in sorted(self.hooks):
            queue = self.queues.get(name)
            if queue is None:
                queue = self.queues[name] = asyncio.Queue(QUEUE_LIMIT)
            if queue.full():
                queue.get_nowait()
                self.dropped += 1
                log.warning("webhook %s: queue full, dropped the oldest delivery", name)
            queue.put_nowait(delivery)
            if name not in self.tasks or self.tasks[name].done():
                self.tasks[name] = asyncio.get_running_loop().create_task(self._drain(name))

    async def idle(self) -> None:
        """Wait until every queue is empty and nothing is in flight (tests)."""
        while any(not q.empty() for q in self.queues.values()) or any(
            not t.done() for t in self.tasks.values()
        ):
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": f"corral/{__version__}"})
        return self._session

    async def _drain(self, name: str) -> None:
        queue = self.queues[name]
        while not queue.empty():
            delivery = queue.get_nowait()
            hook = self.hooks.get(name)
            if hook is None:
                return
            await self._deliver(hook, delivery)

    async def _deliver(self, hook: Hook, delivery: Delivery) -> None:
        headers = {
            "Content-Type": "application/json",
            "X-Corral-Event": delivery.event,
            "X-Corral-Delivery": delivery.id,
        }
        if hook.secret:
            headers[SIGNATURE_HEADER] = signature(hook.secret, delivery.body)
        why = ""
        for attempt in range(1, hook.attempts + 1):
            wait = 0.0
            try:
                async with self._client().post(
                    hook.url,
                    data=delivery.body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=hook.timeout),
                ) as response:
                    await response.read()
                    if response.status < 300:
                        self.delivered += 1
                        return
                    why = f"HTTP {response.status}"
                    if response.status not in (408, 429) and response.status < 500:
                        break  # the receiver refuses it: retrying cannot help
                    wait = _retry_after(response.headers.get("Retry-After"))
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
            if attempt < hook.attempts:
                delay = max(wait, retry_delay(attempt, self.rng, self.initial_delay))
                await asyncio.sleep(min(delay, MAX_DELAY_S))
        self.failed += 1
        log.warning("webhook %s: gave up on %s (%s)", hook.name, delivery.id, why)
        if self.on_give_up is not None:
            try:
                await self.on_give_up(hook.name, delivery.id, f"{why} after {attempt} attempt(s)")
            except Exception:  # reporting must not kill the queue
                log.exception("webhook %s: reporting a failed delivery failed", hook.name)


def _retry_after(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        return 0.0
