"""``corral kv``: run an AP-store node standalone, and read or write keys of a running store."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from corral.cli import render
from corral.errors import CorralError, UserError
from corral.kv.client import KvClient
from corral.kv.coordinator import Quorum
from corral.membership import PRESETS

DEFAULT_NODE = "127.0.0.1:8500"


@click.group("kv")
def kv() -> None:
    """The Dynamo-style AP store: `serve` runs a node; `get`, `put`, `del` talk to one."""


def _printed_errors(command: Callable[..., None]) -> Callable[..., None]:
    """The platform runs nodes as `python -m corral.cli.kv serve`, outside main()'s handler:
    a bad --data, --r or a port in use must print error and hint, not a traceback."""

    @functools.wraps(command)
    def run(**options: Any) -> None:
        try:
            command(**options)
        except CorralError as exc:
            render.error(exc)
            raise SystemExit(2 if isinstance(exc, UserError) else 1) from None
        except OSError as exc:
            node = options.get("name") or options.get("peer")
            render.error(
                CorralError(
                    f"kv node {node} cannot start: {exc}",
                    "check that --listen and --peer are free on this host (is another node "
                    "running with them?)",
                )
            )
            raise SystemExit(1) from None

    return run


@kv.command()
@click.option("--name", default="", help="node name, unique in the store [default: the --peer]")
@click.option("--listen", default=DEFAULT_NODE, show_default=True, help="HTTP API host:port")
@click.option(
    "--peer",
    default="127.0.0.1:8501",
    show_default=True,
    help="host:port for other nodes: TCP replication and UDP gossip on the same port",
)
@click.option(
    "--join",
    "joins",
    multiple=True,
    help="--peer address of a member (repeatable, or comma-separated; empty: start alone)",
)
@click.option("--data", "data_dir", required=True, type=click.Path(), help="data directory")
@click.option("--n", "n", default=3, show_default=True, help="replicas per key")
@click.option("--r", "r", default=2, show_default=True, help="replies a read waits for")
@click.option("--w", "w", default=2, show_default=True, help="durable acks a write waits for")
@click.option("--vnodes", default=256, show_default=True)
@click.option("--conflicts", type=click.Choice(["siblings", "lww"]), default="siblings")
@click.option("--membership", type=click.Choice(sorted(PRESETS)), default="local")
@click.option("--replica-timeout", default=0.3, show_default=True, help="seconds")
@click.option("--request-timeout", default=2.0, show_default=True, help="seconds")
@click.option("--handoff-interval", default=1.0, show_default=True, help="seconds")
@click.option("--ae-interval", default=10.0, show_default=True, help="anti-entropy, seconds")
@click.option("--grace", default=86400.0, show_default=True, help="tombstone grace, seconds")
@_printed_errors
def serve(
    name: str,
    listen: str,
    peer: str,
    joins: tuple[str, ...],
    data_dir: str,
    n: int,
    r: int,
    w: int,
    vnodes: int,
    conflicts: str,
    membership: str,
    replica_timeout: float,
    request_timeout: float,
    handoff_interval: float,
    ae_interval: float,
    grace: float,
) -> None:
    """Run one node until SIGTERM/SIGINT."""
    from corral.kv.http import serve as run
    from corral.kv.node import NodeConfig

    quorum = Quorum(n, r, w).validate()
    if quorum.warning:
        render.err.print(f"[yellow]warning:[/] {quorum.warning}")
    config = NodeConfig(
        name=name or peer,
        data_dir=Path(data_dir),
        http=listen,
        peer=peer,
        # The platform passes its pets' list as one word, empty for the first node.
        join=tuple(a for word in joins for a in word.split(",") if a),
        quorum=quorum,
        vnodes=vnodes,
        conflicts="lww" if conflicts == "lww" else "siblings",
        membership=membership,
        request_timeout=request_timeout,
        replica_timeout=replica_timeout,
        handoff_interval=handoff_interval,
        ae_interval=ae_interval,
        grace=grace,
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(run(config))


_node = click.option("--node", default=DEFAULT_NODE, show_default=True, help="a node's --listen")


def _split(path: str) -> tuple[str, str]:
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise click.BadParameter(f"{path!r}: write BUCKET/KEY", param_hint="KEY")
    return bucket, key


@kv.command()
@click.argument("path", metavar="BUCKET/KEY")
@_node
@click.option("--r", "r", type=int, default=None)
def get(path: str, node: str, r: int | None) -> None:
    """Print the value (siblings as JSON lines); the context goes to stderr."""
    with KvClient(node) as client:
        obj = client.get(*_split(path), r=r)
    if not obj.found:
        render.err.print(f"not found (context: {obj.context or '-'})")
        raise SystemExit(1)
    if obj.siblings:
        for value in obj.values:
            sys.stdout.write(json.dumps(value.decode(errors="replace")) + "\n")
    else:
        sys.stdout.buffer.write(obj.values[0])
        sys.stdout.write("\n")
    render.err.print(f"context: {obj.context}")


@kv.command()
@click.argument("path", metavar="BUCKET/KEY")
@click.argument("value")
@_node
@click.option("--context", default="", help="the context printed by the last get")
@click.option("--w", "w", type=int, default=None)
def put(path: str, value: str, node: str, context: str, w: int | None) -> None:
    """Write VALUE; prints the new context."""
    with KvClient(node) as client:
        obj = client.put(*_split(path), value.encode(), context, w=w)
    if obj.siblings:
        render.err.print(f"{len(obj.values)} siblings now (concurrent writes)")
    sys.stdout.write(obj.context + "\n")


@kv.command("del")
@click.argument("path", metavar="BUCKET/KEY")
@_node
@click.option("--context", default="", help="the context printed by the last get")
@click.option("--w", "w", type=int, default=None)
def delete(path: str, node: str, context: str, w: int | None) -> None:
    """Delete the key (a tombstone that will not be undone by a stale replica)."""
    with KvClient(node) as client:
        obj = client.delete(*_split(path), context, w=w)
    sys.stdout.write(obj.context + "\n")


if __name__ == "__main__":  # `python -m corral.cli.kv serve …`: the node without the whole CLI
    kv()
