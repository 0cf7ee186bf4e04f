"""The alerter: evaluates the alert rules periodically in the control plane.

Why here: the control plane owns the Store, so instance phases are read directly, each firing
and resolution is written as an event in the same transaction as the alert state, and a
webhook's secret (a Corral secret) never has to leave the Store's process. Telemetry inputs
come from the collector in one request (``/telemetry/signals``); when it does not answer, the
telemetry rules stand still (see `telemetry.alerts`) and ``corral alerts`` says why.

Each pass: read the config (``/corral/alerts/config``, written by apply; the defaults without
one), gather observations, run `alerts.evaluate`, add example trace ids to what fired, commit
the new state (``/corral/alerts/state``) with one event per decision, then hand the decisions
to the `WebhookSender` (which never blocks the pass).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp
import msgspec

from corral import clock, model
from corral.control import events
from corral.control.state import load_instances, load_services
from corral.control.webhooks import Delivery, Hook, WebhookSender
from corral.errors import UserError
from corral.home import Home
from corral.manifest.schema import Manifest
from corral.store.base import Op, Put, Store
from corral.telemetry import alerts, signals

log = logging.getLogger("corral.alerts")

CONFIG_KEY = model.PREFIX + "alerts/config"
STATE_KEY = model.PREFIX + "alerts/state"
DEFAULT_INTERVAL_S = 10.0
# An unchanged state is still written this often, so another node's API (in a cluster, the
# alerter runs on the leader only) shows a recent ``evaluated_at``, not the last change's.
STATE_REFRESH_S = 60.0
EXAMPLE_TRACES = 3
EXAMPLE_SEARCH = 50  # recent bad traces searched for an SLO alert's route (any service)


class AlertsState(msgspec.Struct):
    """``/corral/alerts/state``: what ``corral alerts`` shows."""

    active: dict[str, alerts.Alert] = {}
    resolved: list[alerts.Alert] = []
    evaluated_at: float = 0.0
    inputs: dict[str, str] = {}  # input → why it could not be observed in the last pass


def rules_of(config: dict[str, Any]) -> list[alerts.Rule]:
    """The rules of a stored ``alerts:`` section: the defaults (unless turned off), each
    replaced by a user rule of the same name, then the user's other rules."""
    user = [_rule(r) for r in config.get("rules", [])]
    by_name = {r.name: r for r in user}
    out = []
    if config.get("defaults", True):
        out = [by_name.pop(d.name, d) for d in alerts.DEFAULT_RULES]
    return out + [r for r in user if r.name in by_name]


def _rule(r: dict[str, Any]) -> alerts.Rule:
    kind = r["kind"]
    window = r.get("window")
    if kind == "slo_burn":
        long_s = int(window or 3600)
        short_s = int(r.get("short_window") or max(60, long_s // 12))
    else:
        long_s, short_s = int(window or 300), 0
    threshold = float(r.get("threshold") or 0.0)
    if kind == "latency":
        threshold *= 1_000_000  # seconds in the manifest, µs in telemetry
    return alerts.Rule(
        name=r["name"],
        kind=kind,
        threshold=threshold,
        window_s=long_s,
        short_window_s=short_s,
        for_s=float(r.get("for") or 0.0),
        keep_firing_for_s=float(r.get("keep_firing_for") or 0.0),
        hysteresis=float(r.get("hysteresis", 0.1)),
        service=r.get("service") or "",
        route=r.get("route") or "",
        quantile=float(r.get("quantile") or 0.95),
        min_calls=int(r.get("min_calls") or 10),
        severity=r.get("severity") or "page",
    )


def payload(decision: alerts.Decision, now: float) -> Delivery:
    alert = decision.alert
    body = {
        "version": 1,
        "status": decision.action,
        "alert": msgspec.to_builtins(alert),
        "sent_at": now,
    }
    return Delivery(
        id=f"{alert.id}:{decision.action}:{alert.fired_at:.3f}",
        event=f"alert.{decision.action}",
        body=json.dumps(body, sort_keys=True).encode(),
    )


def config_value(manifest: Manifest) -> bytes:
    """The stored form of a manifest's ``alerts:`` and ``webhooks:`` (secrets as references)."""
    data = {
        "alerts": manifest.alerts.model_dump(mode="json", by_alias=True),
        "webhooks": [w.model_dump(mode="json") for w in manifest.webhooks],
    }
    return json.dumps(data, sort_keys=True).encode()


async def check_secrets(store: Store, manifest: Manifest) -> None:
    """Refuse a manifest whose webhooks sign with a secret that is not set (before apply)."""
    for i, hook in enumerate(manifest.webhooks):
        if hook.secret is not None and await store.get(model.SECRETS + hook.secret.secret) is None:
            raise UserError(
                f"webhooks[{i}].secret: no secret named {hook.secret.secret!r}",
                f"set it first: corral secret set {hook.secret.secret}",
            )


async def config_ops(store: Store, manifest: Manifest) -> list[Op]:
    """The operations that store the manifest's alert config, with an event saying so; none
    when it is unchanged. Apply runs them in its own transaction: all of a manifest or none."""
    value = config_value(manifest)
    kv = await store.get(CONFIG_KEY)
    if kv is not None and kv.value == value:
        return []
    rules = len(manifest.alerts.rules)
    hooks = len(manifest.webhooks)
    event = events.make(
        "alerts",
        "platform",
        f"alert rules: {rules} rule(s) + defaults, {hooks} webhook(s)"
        if manifest.alerts.defaults
        else f"alert rules: {rules} rule(s), {hooks} webhook(s)",
    )
    return [Put(CONFIG_KEY, value), Put(events.event_key(event.at), model.encode(event))]


class Alerter:
    def __init__(self, store: Store, home: Home, sender: WebhookSender | None = None) -> None:
        self.store = store
        self.home = home
        self.sender = sender or WebhookSender(on_give_up=self._gave_up)
        self.interval = DEFAULT_INTERVAL_S
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self.passes = 0
        self.evaluated_at = 0.0  # the last pass (the stored state changes only with alerts)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.sender.close()
        if self._http is not None:
            await self._http.close()

    async def _loop(self) -> None:
        while True:
            try:
                await self.evaluate_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed pass is retried next period, never a dead alerter
                log.exception("evaluating alert rules failed")
            await asyncio.sleep(self.interval)

    # -- one pass -------------------------------------------------------------------------
    async def config(self) -> dict[str, Any]:
        kv = await self.store.get(CONFIG_KEY)
        data: dict[str, Any] = json.loads(kv.value) if kv is not None else {}
        return data

    async def state(self) -> AlertsState:
        kv = await self.store.get(STATE_KEY)
        return msgspec.json.decode(kv.value, type=AlertsState) if kv else AlertsState()

    async def evaluate_once(self, now: float | None = None) -> list[alerts.Decision]:
        now = clock.wall() if now is None else now
        config = await self.config()
        section = config.get("alerts", {})
        self.interval = float(section.get("interval") or DEFAULT_INTERVAL_S)
        rules = rules_of(section)
        await self._configure_hooks(config.get("webhooks", []))
        previous = await self.state()
        inputs: dict[str, str] = {}
        obs = await self._observe(rules, now, inputs)
        outcome = alerts.evaluate(rules, obs, previous.active, now)
        decisions = [await self._with_examples(d, rules) for d in outcome.decisions]
        state = AlertsState(
            active={k: _latest(v, decisions) for k, v in outcome.alerts.items()},
            resolved=alerts.remember(previous.resolved, decisions),
            evaluated_at=now,
            inputs=inputs,
        )
        self.evaluated_at = now
        unchanged = (state.active, state.resolved, state.inputs) == (
            previous.active,
            previous.resolved,
            previous.inputs,
        )
        fresh = now - previous.evaluated_at < STATE_REFRESH_S
        if unchanged and not decisions and fresh:
            self.passes += 1
            return decisions  # no write: watchers of /corral/ are not woken for nothing
        ops = [Put(STATE_KEY, msgspec.json.encode(state))]
        for decision in decisions:
            event = _event(decision, now)
            ops.append(Put(events.event_key(event.at), model.encode(event)))
        await self.store.txn([], ops)
        for decision in decisions:
            self.sender.send(payload(decision, now))
        self.passes += 1
        return decisions

    async def _configure_hooks(self, hooks: list[dict[str, Any]]) -> None:
        configured = []
        for h in hooks:
            secret: bytes | None = None
            ref = h.get("secret")
            if ref:
                kv = await self.store.get(model.SECRETS + ref["secret"])
                if kv is None:
                    log.warning("webhook %s: secret %s is not set", h["name"], ref["secret"])
                    continue  # unsigned deliveries would look forged to the receiver
                secret = kv.value
            configured.append(
                Hook(h["name"], h["url"], secret, float(h["timeout"]), int(h["attempts"]))
            )
        self.sender.configure(configured)

    async def _observe(
        self, rules: list[alerts.Rule], now: float, inputs: dict[str, str]
    ) -> alerts.Observations:
        minute = int(now * 1_000_000) // 60_000_000
        instances = [
            alerts.InstanceObs(
                spec.id,
                spec.service,
                status.phase if status else "provision",
                status.reason if status else "",
            )
            for spec, status in await load_instances(self.store)
        ]
        kinds = {r.kind for r in rules}
        if not kinds & (alerts.TELEMETRY_KINDS | alerts.HOST_KINDS):
            return alerts.Observations(minute, instances=instances)
        traffic = [r.window_s // 60 for r in rules if r.kind in ("error_rate", "latency")]
        minutes = max([1, *traffic])
        query = {"minutes": str(minutes), "end": str(int(now * 1_000_000))}
        if "slo_burn" not in kinds:
            query["slo"] = "0"
        try:
            data = await self.collector_get("/telemetry/signals", query)
            found = signals.decode(data)
        except Exception as exc:  # no telemetry this pass: those rules stand still
            inputs["telemetry"] = str(exc) or type(exc).__name__
            return alerts.Observations(minute, instances=instances)
        return alerts.Observations(
            minute,
            declared=frozenset(await load_services(self.store)),
            services=signals.observed_services(found),
            objectives=signals.observed_objectives(found),
            instances=instances,
            hosts=signals.observed_hosts(found),
        )

    async def collector_get(self, path: str, query: dict[str, str]) -> bytes:
        try:
            base = (self.home.path / "collector").read_text().strip()
        except FileNotFoundError:
            raise RuntimeError("the telemetry collector is not running") from None
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        token = self.home.token("read") or ""
        async with self._http.get(
            base + path, params=query, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"collector {path}: HTTP {response.status}")
            return body

    async def _with_examples(
        self, decision: alerts.Decision, rules: list[alerts.Rule]
    ) -> alerts.Decision:
        """Example trace ids for a traffic or SLO alert that fires: recent errors (or calls
        slower than the threshold) of the service, or of the route for an SLO burn."""
        alert = decision.alert
        if decision.action != "firing" or alert.evidence is None:
            return decision
        if alert.kind not in ("error_rate", "latency", "slo_burn"):
            return decision
        if alert.kind != "slo_burn" and not alert.service:
            return decision
        rule = next(r for r in rules if r.name == alert.rule)
        query = {"minutes": str(max(1, rule.window_s // 60))}
        route = ""
        if alert.kind == "slo_burn":
            # subject "<route>:<objective>"; the gateway's root span is named "<METHOD> <route>"
            route = alert.subject.rsplit(":", 1)[0]
            slow_us = int(alert.evidence.details.get("threshold_us", 0))
            if slow_us:
                query["min_duration_us"] = str(slow_us)
            else:
                query["error"] = "true"
            query["limit"] = str(EXAMPLE_SEARCH)
        else:
            query["service"] = alert.service
            query["limit"] = str(EXAMPLE_TRACES)
            if alert.kind == "error_rate":
                query["error"] = "true"
            else:
                query["min_duration_us"] = str(int(rule.threshold))
        try:
            found = json.loads(await self.collector_get("/telemetry/traces", query))
            if route:
                found = [t for t in found if _route_of(str(t.get("root_name", ""))) == route]
            ids = [str(t["trace_id"]) for t in found][:EXAMPLE_TRACES]
        except Exception as exc:  # examples are a courtesy: the alert goes out without them
            log.warning("example traces for %s: %s", alert.id, exc)
            return decision
        evidence = msgspec.structs.replace(alert.evidence, trace_ids=ids)
        return alerts.Decision(decision.action, msgspec.structs.replace(alert, evidence=evidence))

    async def _gave_up(self, hook: str, delivery: str, why: str) -> None:
        event = events.make("alerts", "platform", f"webhook {hook}: gave up on {delivery}: {why}")
        await events.record(self.store, event)


def _route_of(root_name: str) -> str:
    """The route of a gateway root span's name (``"GET orders"`` → ``"orders"``)."""
    return root_name.split(" ", 1)[1] if " " in root_name else root_name


def _latest(alert: alerts.Alert, decisions: list[alerts.Decision]) -> alerts.Alert:
    """The alert as sent (with its example traces) when it fired in this pass."""
    for d in decisions:
        if d.alert.id == alert.id and d.action == "firing":
            return d.alert
    return alert


def _event(decision: alerts.Decision, now: float) -> model.Event:
    alert = decision.alert
    firing = decision.action == "firing"
    return events.make(
        alert.id,
        "service" if alert.service else "platform",
        f"alert {decision.action} ({alert.severity}): {alert.summary}",
        service=alert.service,
        from_phase="pending" if firing else "firing",
        to_phase=decision.action,
        at=now,
    )
