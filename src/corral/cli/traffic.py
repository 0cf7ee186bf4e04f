"""``corral route off|on|degrade|restore|feature|reset-breaker|purge``: the gateway's admin
switches and actions. Switches are config edits (each a numbered version with an event, undone
by ``corral route rollback`` or the opposite switch); actions (breaker reset, cache purge) are
recorded as events and applied by the running gateway. Registered on the ``route`` group by
``register`` in ``corral.cli.main``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from corral.cli import render
from corral.client import Client
from corral.gateway.policy_config import FEATURES

ClientFactory = Callable[[], Client]


def register(group: click.Group, client: ClientFactory) -> None:
    """Add the commands to ``group`` (``corral route``)."""

    def switch(name: str, body: dict[str, Any], dry_run: bool) -> None:
        query = {"dry_run": "1"} if dry_run else None
        result = client().request("POST", f"/gateway/routes/{name}/switch", body, query=query)
        if dry_run:
            render.out.print(f"route {name}: valid, nothing changed (dry run)")
        else:
            render.out.print(f"route {name}: config v{result['version']}")

    dry = click.option("--dry-run", is_flag=True, help="Validate only; change nothing.")

    @group.command("off")
    @click.argument("name")
    @dry
    def route_off(name: str, dry_run: bool) -> None:
        """Turn route NAME off: its requests get 503 until `corral route on NAME`."""
        switch(name, {"enabled": False}, dry_run)

    @group.command("on")
    @click.argument("name")
    @dry
    def route_on(name: str, dry_run: bool) -> None:
        """Turn route NAME back on."""
        switch(name, {"enabled": True}, dry_run)

    @group.command("degrade")
    @click.argument("name")
    @dry
    def route_degrade(name: str, dry_run: bool) -> None:
        """Planned degradation: every request to NAME gets the route's fallback."""
        switch(name, {"force_fallback": True}, dry_run)

    @group.command("restore")
    @click.argument("name")
    @dry
    def route_restore(name: str, dry_run: bool) -> None:
        """End a planned degradation of NAME."""
        switch(name, {"force_fallback": False}, dry_run)

    features = click.Choice(list(FEATURES))

    @group.command("feature")
    @click.argument("name")
    @click.option("--off", "off", multiple=True, type=features, help="Turn a feature off.")
    @click.option("--on", "on", multiple=True, type=features, help="Turn a feature back on.")
    @dry
    def route_feature(name: str, off: tuple[str, ...], on: tuple[str, ...], dry_run: bool) -> None:
        """Turn policy features of route NAME off or on (e.g. --off cache --off mirror)."""
        switch(name, {"disable": list(off), "enable": list(on)}, dry_run)

    @group.command("reset-breaker")
    @click.argument("name")
    def route_reset_breaker(name: str) -> None:
        """Close route NAME's circuit breakers with an empty window."""
        client().request("POST", f"/gateway/routes/{name}/breaker/reset", {})
        render.out.print(f"route {name}: breaker reset requested")

    @group.command("purge")
    @click.argument("name", required=False)
    @click.option("--prefix", default=None, help="Only cached paths under this prefix.")
    def route_purge(name: str | None, prefix: str | None) -> None:
        """Purge cached responses: of route NAME, under --prefix, or (neither) all."""
        body = {"route": name or "", "prefix": prefix or ""}
        client().request("POST", "/gateway/cache/purge", body)
        render.out.print("cache purge requested")

    @group.command("plugins-reload")
    def route_plugins_reload() -> None:
        """Re-import the gateway's in-process plugin modules (a config version; see
        docs/plugins.md)."""
        result = client().request("POST", "/gateway/plugins/reload", {})
        version = result.get("version") if isinstance(result, dict) else None
        render.out.print(f"gateway plugins reloaded (config version {version})")
