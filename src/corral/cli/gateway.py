"""``corral gateway``: run the gateway standalone (like nginx with a config file), or check a
config. The lead registers the group in ``corral.cli.main``."""

from __future__ import annotations

import click

from corral.cli import render
from corral.gateway.config import load_gateway_config


@click.group("gateway")
def gateway() -> None:
    """The HTTP gateway in standalone mode: static upstreams from a config file."""


@gateway.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(), help="gateway config file"
)
def serve(config_path: str) -> None:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads the file (an invalid file changes nothing)."""
    from corral.gateway.serve import serve as run

    raise SystemExit(run(config_path))


@gateway.command()
@click.argument("file", type=click.Path())
def validate(file: str) -> None:
    """Check a gateway config completely; exit 0 if valid, 2 with every problem listed if not."""
    config = load_gateway_config(file)
    names = [route.name for route in config.routes]
    render.out.print(
        f"[green]✓[/] {file}: listen {config.listen}, {config.workers} worker(s), "
        f"{len(names)} route(s): {', '.join(names)}"
    )
