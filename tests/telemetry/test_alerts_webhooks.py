"""Webhook delivery against a real HTTP receiver: retried with growing waits on 5xx and
timeouts, given up after the configured attempts with an event saying so, a bounded queue that
drops (and counts) the oldest, and a signature the receiver can verify."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from corral import model
from corral.api.insight import alerts_view
from corral.control import webhooks
from corral.control.alerter import STATE_REFRESH_S, Alerter
from corral.control.webhooks import Delivery, Hook, WebhookSender
from corral.home import Home
from corral.store.sqlite import SQLiteStore
from corral.telemetry import alerts

pytestmark = pytest.mark.timeout(30)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Receiver:
    """A webhook receiver on port 0 whose answer per request the test chooses."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, bytes, dict[str, str]]] = []
        self.answer: Handler = self._ok
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _ok(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((time.monotonic(), body, dict(request.headers)))
        return await self.answer(request)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def _delivery(n: int = 0) -> Delivery:
    return Delivery(f"alert-{n}:firing:1.000", "alert.firing", b'{"n": %d}' % n)


async def test_a_5xx_is_retried_with_growing_waits_until_the_receiver_accepts(
    receiver: Receiver,
) -> None:
    failures = 3

    async def flaky(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503 if len(receiver.seen) <= failures else 204)

    receiver.answer = flaky
    sender = WebhookSender(rng=random.Random(1), initial_delay=0.05)
    sender.configure([Hook("ops", receiver.url, attempts=5)])
    try:
        sender.send(_delivery())
        await asyncio.wait_for(sender.idle(), 10)
    finally:
        await sender.close()
    assert len(receiver.seen) == failures + 1
    assert (sender.delivered, sender.failed) == (1, 0)
    gaps = [b[0] - a[0] for a, b in zip(receiver.seen, receiver.seen[1:], strict=False)]
    # 0.05 × 2ⁿ with ±20 % jitter: each wait clearly longer than the one before.
    assert gaps[0] >= 0.04 and gaps[1] > gaps[0] * 1.2 and gaps[2] > gaps[1] * 1.2
    assert {headers["X-Corral-Delivery"] for _, _, headers in receiver.seen} == {
        "alert-0:firing:1.000"
    }


async def test_a_refusal_is_not_retried(receiver: Receiver) -> None:
    async def refuse(request: web.Request) -> web.StreamResponse:
        return web.Response(status=400)

    receiver.answer = refuse
    gave_up: list[tuple[str, str, str]] = []

    async def on_give_up(hook: str, delivery: str, why: str) -> None:
        gave_up.append((hook, delivery, why))

    sender = WebhookSender(on_give_up=on_give_up, initial_delay=0.01)
    sender.configure([Hook("ops", receiver.url, attempts=5)])
    try:
        sender.send(_delivery())
        await asyncio.wait_for(sender.idle(), 10)
    finally:
        await sender.close()
    assert len(receiver.seen) == 1
    assert gave_up == [("ops", "alert-0:firing:1.000", "HTTP 400 after 1 attempt(s)")]


async def test_a_receiver_that_times_out_is_given_up_and_an_event_says_so(
    receiver: Receiver, tmp_path: Path
) -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response(status=204)

    receiver.answer = hang
    store = await SQLiteStore.open(tmp_path / "store.db")
    alerter = Alerter(store, Home(tmp_path / "home"))
    alerter.sender.initial_delay = 0.01
    alerter.sender.configure([Hook("pager", receiver.url, timeout=0.2, attempts=3)])
    try:
        alerter.sender.send(_delivery(7))
        await asyncio.wait_for(alerter.sender.idle(), 10)
        events = [
            model.decode(kv.value, model.Event) for kv in (await store.range(model.EVENTS)).kvs
        ]
    finally:
        await alerter.close()
        await store.close()
    assert len(receiver.seen) == 3 and alerter.sender.failed == 1
    [event] = [e for e in events if "gave up" in e.reason]
    assert "webhook pager" in event.reason and "alert-7:firing:1.000" in event.reason
    assert "after 3 attempt(s)" in event.reason


async def test_a_full_queue_drops_the_oldest_delivery_and_counts_it(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "QUEUE_LIMIT", 3)
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(status=204)

    receiver.answer = slow
    sender = WebhookSender()
    sender.configure([Hook("ops", receiver.url)])
    try:
        for n in range(8):
            sender.send(_delivery(n))
            await asyncio.sleep(0)  # lets the first delivery leave the queue
        deadline = time.monotonic() + 5
        while not receiver.seen and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        release.set()
        await asyncio.wait_for(sender.idle(), 10)
    finally:
        await sender.close()
    bodies = [body for _, body, _ in receiver.seen]
    # #0 was in flight; of #1…#7 only the newest three fit the queue.
    assert bodies == [b'{"n": 0}', b'{"n": 5}', b'{"n": 6}', b'{"n": 7}']
    assert sender.dropped == 4 and sender.delivered == 4


async def test_the_receiver_verifies_the_signature_with_the_shared_secret(
    receiver: Receiver,
) -> None:
    secret = b"hook-secret-42"
    sender = WebhookSender()
    sender.configure(
        [Hook("signed", receiver.url, secret=secret), Hook("plain", receiver.url + "?plain=1")]
    )
    try:
        sender.send(_delivery(3))
        await asyncio.wait_for(sender.idle(), 10)
    finally:
        await sender.close()
    by_signature = {h.get(webhooks.SIGNATURE_HEADER, ""): body for _, body, h in receiver.seen}
    assert len(receiver.seen) == 2 and "" in by_signature  # the hook without a secret: unsigned
    [(header, body)] = [(k, v) for k, v in by_signature.items() if k]
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(header, expected)
    forged = "sha256=" + hmac.new(b"wrong", body, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(header, forged)
    assert "hook-secret-42" not in repr(Hook("signed", receiver.url, secret=secret))


def _burn(subject: str, details: dict[str, float]) -> alerts.Decision:
    evidence = alerts.Evidence("burn_rate", 20.0, 14.4, 3600, details=details)
    alert = alerts.Alert(
        f"slo-burn-page/{subject}", "slo-burn-page", "slo_burn", "page", subject, evidence=evidence
    )
    return alerts.Decision("firing", alert)


async def test_slo_burn_alert_carries_failing_traces_of_its_route_only(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "store.db")
    alerter = Alerter(store, Home(tmp_path / "home"))
    asked: list[dict[str, str]] = []

    async def collector_get(path: str, query: dict[str, str]) -> bytes:
        asked.append(query)
        found = [
            {"trace_id": "aa01", "root_name": "GET orders"},
            {"trace_id": "bb02", "root_name": "GET catalog"},
            {"trace_id": "aa03", "root_name": "POST orders"},
        ]
        return json.dumps(found).encode()

    alerter.collector_get = collector_get  # type: ignore[method-assign]  # no collector here
    try:
        rules = [alerts.PAGE_BURN]
        errors = await alerter._with_examples(_burn("orders:availability", {}), rules)
        slow = await alerter._with_examples(
            _burn("orders:latency≤300ms", {"threshold_us": 300_000.0}), rules
        )
    finally:
        await alerter.close()
        await store.close()
    assert errors.alert.evidence is not None and slow.alert.evidence is not None
    assert errors.alert.evidence.trace_ids == ["aa01", "aa03"]
    assert asked[0]["error"] == "true" and asked[0]["minutes"] == "60"
    assert slow.alert.evidence.trace_ids == ["aa01", "aa03"]
    assert asked[1]["min_duration_us"] == "300000" and "error" not in asked[1]


async def test_another_nodes_alerts_view_shows_a_recent_pass_when_nothing_changes(
    tmp_path: Path,
) -> None:
    store = await SQLiteStore.open(tmp_path / "store.db")
    leader = Alerter(store, Home(tmp_path / "home"))
    elsewhere = Alerter(store, Home(tmp_path / "home"))  # a follower's API: it never evaluates
    try:
        start = 1_000_000.0
        await leader.evaluate_once(start)
        assert (await alerts_view(elsewhere))["evaluated_at"] == start
        revision = (await store.range("")).revision
        await leader.evaluate_once(start + 10)  # nothing changed: no write yet
        assert (await store.range("")).revision == revision
        later = start + STATE_REFRESH_S + 1
        await leader.evaluate_once(later)
        assert (await alerts_view(elsewhere))["evaluated_at"] == later
    finally:
        await leader.close()
        await elsewhere.close()
        await store.close()
