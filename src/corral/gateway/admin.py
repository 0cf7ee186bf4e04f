"""Gateway admin actions: commands that change a running gateway's state rather than its
config — purge cached responses (by route and/or path prefix) and reset a route's circuit
breakers.

Config switches (turn a route off, force its fallback, turn a feature off) are config: the
admin API edits the live config and each edit is a numbered version with an event. Actions
are not config (a purge has nothing to keep), so they travel as records under
``/corral/gateway/actions/`` — written with an event in one transaction by ``request`` —
and the platform gateway, watching that prefix, applies each one as it arrives
(``apply``). A gateway that starts later does not replay old actions (its cache is empty and
its breakers closed anyway); only the newest ``ACTIONS_KEPT`` records are kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from corral import clock, model
from corral.control import events
from corral.errors import UserError
from corral.gateway.policy_config import FEATURES
from corral.store.base import Delete, Put, Store

if TYPE_CHECKING:  # the API imports this module; only the gateway loads the data plane
    from corral.gateway.proxy import Gateway

__all__ = [
    "ACTIONS",
    "ACTIONS_KEPT",
    "SWITCHES",
    "GatewayAction",
    "apply",
    "describe",
    "request",
    "switch",
]

ACTIONS = model.PREFIX + "gateway/actions/"
ACTIONS_KEPT = 50


SWITCHES = ("enabled", "force_fallback", "disable", "enable")
Change = Callable[[dict[str, Any]], dict[str, Any]]


def switch(name: str, body: Mapping[str, Any]) -> tuple[Change, str]:
    """A config edit flipping route ``name``'s admin switches, and the message recorded with
    its version: ``{enabled: bool, force_fallback: bool, disable: [feature], enable: [...]}``."""
    unknown = sorted(str(k) for k in body if k not in SWITCHES)
    if unknown or not body:
        raise UserError(
            f"unknown switch {unknown[0]!r}" if unknown else "no switch given",
            "switches: " + ", ".join(SWITCHES),
        )
    parts: list[str] = []
    for flag in ("enabled", "force_fallback"):
        if flag in body and not isinstance(body[flag], bool):
            raise UserError(f"{flag} must be true or false", f'e.g. {{"{flag}": false}}')
    features: dict[str, list[str]] = {}
    for key in ("disable", "enable"):
        value = body.get(key, [])
        if not isinstance(value, list) or any(f not in FEATURES for f in value):
            raise UserError(f"{key} must list features", "features: " + ", ".join(FEATURES))
        features[key] = [str(f) for f in value]
    if "enabled" in body:
        parts.append("turned on" if body["enabled"] else "turned off")
    if "force_fallback" in body:
        parts.append("fallback forced" if body["force_fallback"] else "fallback released")
    parts += [f"{f} off" for f in features["disable"]]
    parts += [f"{f} on" for f in features["enable"]]

    def change(config: dict[str, Any]) -> dict[str, Any]:
        from corral.control.gateway_config import route_index

        index = route_index(config, name)
        route = dict(config["routes"][index])
        for flag in ("enabled", "force_fallback"):
            if flag in body:
                route[flag] = body[flag]
        disabled = [f for f in route.get("disabled", []) if f not in features["enable"]]
        disabled += [f for f in features["disable"] if f not in disabled]
        route["disabled"] = disabled
        config["routes"][index] = route
        return config

    return change, f"route {name}: " + ", ".join(parts)


class GatewayAction(msgspec.Struct):
    action: Literal["purge", "reset_breaker"]
    route: str = ""
    prefix: str = ""
    at: float = 0.0


def describe(action: GatewayAction) -> str:
    if action.action == "purge":
        scope = [f"route {action.route}"] if action.route else []
        scope += [f"paths under {action.prefix}"] if action.prefix else []
        return "cache purge of " + (" and ".join(scope) or "every entry")
    return f"breaker reset of route {action.route}"


async def request(store: Store, action: GatewayAction) -> GatewayAction:
    """Record ``action`` for the gateway to apply, with an event, in one transaction."""
    if action.action == "reset_breaker" and not action.route:
        raise UserError("a breaker reset needs a route", "corral route reset-breaker NAME")
    if action.prefix and not action.prefix.startswith("/"):
        raise UserError(f"prefix {action.prefix!r} is not a path", "start it with /, like /api")
    action.at = clock.wall()
    key = events.event_key(action.at).replace(model.EVENTS, ACTIONS, 1)
    event = events.make("gateway", "platform", f"gateway admin: {describe(action)}")
    ops: list[Put | Delete] = [
        Put(key, model.encode(action)),
        Put(events.event_key(event.at), model.encode(event)),
    ]
    listing = await store.range(ACTIONS)
    excess = len(listing.kvs) + 1 - ACTIONS_KEPT
    ops += [Delete(kv.key) for kv in listing.kvs[: max(0, excess)]]
    await store.txn([], ops)
    return action


def apply(gateway: Gateway, action: GatewayAction, now: float) -> int:
    """Apply an action to this gateway; returns how many entries or breakers it touched."""
    policies = gateway.policies
    if policies is None:
        return 0
    if action.action == "purge":
        return policies.purge(route=action.route or None, prefix=action.prefix or None)
    return policies.reset_breakers(action.route, now)
