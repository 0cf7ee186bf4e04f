"""``corral server --cluster`` options and ``corral cluster status|add|remove|transfer-leader``.

Every command talks to whichever node of ``$CORRAL_HOME/api`` answers; membership changes and
transfers run on the leader (a follower redirects the client there). ``status`` asks every
member for its own view, so it works — and shows which nodes are unreachable — without
quorum.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from corral.cli import render
from corral.client import Client
from corral.control import cluster_view
from corral.control.cluster_view import MemberRecord
from corral.errors import CorralError, NotFound, UserError
from corral.home import Home

F = TypeVar("F", bound=Callable[..., Any])
MEMBER_TIMEOUT = 2.0  # seconds `cluster status` waits for each member
STOP_WITHIN = 10.0  # seconds `corral down` waits for every node to stop


def server_options(command: F) -> F:
    """The `corral server` options of a cluster node."""
    options = [
        click.option("--preset", "raft_preset", type=click.Choice(["default", "fast"]),
                     default="default", show_default=True,
                     help="--cluster: Raft timing (fast: 150-300 ms elections)"),
        click.option("--request-timeout", type=float, default=5.0, show_default=True,
                     help="--cluster: seconds a write or read waits for a quorum"),
        click.option("--join", is_flag=True,
                     help="--cluster: join a running cluster (then `corral cluster add`)"),
        click.option("--api", "api_address", default=None,
                     help="HOST:PORT for the API (instead of --host/--port)"),
        click.option("--peers", default=None,
                     help="--cluster: every member's Raft address, 1=HOST:PORT,2=…,3=…"),
        click.option("--node-id", type=int, default=None, help="--cluster: this node's id"),
        click.option("--cluster", "cluster", is_flag=True,
                     help="Run one node of a replicated (Raft) control plane."),
    ]  # fmt: skip
    for option in options:
        command = option(command)
    return command


def run_node_if_asked(
    home: Home,
    host: str,
    port: int,
    options: dict[str, Any],
    foreground: bool,
    store: str | None = None,
) -> bool:
    """Run a cluster node when ``--cluster`` was given (returns when it stops); False if not.
    ``--api`` alone runs the single control plane on ``store`` (``--store``/CORRAL_STORE)."""
    if options.get("api_address"):
        host, _, raw = str(options["api_address"]).rpartition(":")
        if not host or not raw.isdigit():
            raise UserError(
                f"--api {options['api_address']!r} is not HOST:PORT", "--api 127.0.0.1:8400"
            )
        port = int(raw)
    if not options.get("cluster"):
        if options.get("peers") or options.get("node_id") is not None or options.get("join"):
            raise UserError(
                "--peers, --node-id and --join belong to a cluster node", "add --cluster"
            )
        if options.get("api_address"):
            from corral import server as server_module

            server_module.main(home, host, port, foreground=foreground, store_url=store)
            return True
        return False
    if store:
        raise UserError(
            f"--cluster keeps its state in its own replicated store; --store {store!r} "
            "(or CORRAL_STORE) cannot go with it",
            "drop --store and unset CORRAL_STORE for a cluster node, or drop --cluster to run "
            "one control plane on that store",
        )
    if options.get("node_id") is None or not options.get("peers"):
        raise UserError(
            "--cluster needs --node-id and --peers",
            "corral server --cluster --node-id 1 --peers 1=127.0.0.1:7001,2=…,3=…",
        )
    from corral import cluster_server

    cluster_server.main(
        home,
        int(options["node_id"]),
        cluster_view.parse_peers(str(options["peers"])),
        host,
        port,
        join=bool(options.get("join")),
        preset=str(options.get("raft_preset") or "default"),
        request_timeout=float(options.get("request_timeout") or 5.0),
        foreground=foreground,
    )
    return True


def _client() -> Client:
    return Client.for_home(Home.resolve())


def _view(client: Client) -> dict[str, Any]:
    try:
        view: dict[str, Any] = client.request("GET", "/cluster")
    except NotFound:
        raise UserError(
            f"the control plane at {client.base_url} is not a cluster",
            "start the nodes with `corral server --cluster --node-id N --peers …`",
        ) from None
    return view


def _ids(view: dict[str, Any]) -> set[int]:
    """The members a node knows: its configuration and the published member records (a
    removed node's Raft address may linger in its address book; it is not a member)."""
    ids = {int(v) for v in view["voters"]} | {int(v) for v in view["learners"]}
    return ids | {int(k) for k in view["members"]}


def _member_views(client: Client, first: dict[str, Any]) -> dict[int, dict[str, Any] | None]:
    """Each member's view of itself (None for a member that did not answer)."""
    views: dict[int, dict[str, Any] | None] = {int(first["node"]): first}
    for node_id in sorted(_ids(first) - set(views)):
        url = first["members"].get(str(node_id), {}).get("api")
        views[node_id] = None
        if url:
            try:
                views[node_id] = _view(Client(url, client.token, timeout=MEMBER_TIMEOUT))
            except CorralError:
                pass
    return views


def node_urls(client: Client, home: Home) -> list[str]:
    """Every member's API URL, followers first and the leader last (empty when the control
    plane that answers is not a cluster): the order ``corral down`` stops them in, so the
    followers do not hold an election for a leader that is about to go too."""
    try:
        view = _view(client)
    except UserError:
        return []
    leader = view["members"].get(str(view["leader"]), {}).get("api", "")
    urls = [m["api"] for _, m in sorted(view["members"].items()) if m.get("api")]
    urls += [url for url in home.api_urls() if url not in urls]
    urls = [url.rstrip("/") for url in urls]
    return sorted(dict.fromkeys(urls), key=lambda url: url == leader.rstrip("/"))


def stop_nodes(client: Client, urls: list[str]) -> list[str]:
    """Ask every node to stop and wait until none answers; return the URLs still answering.
    A node that does not answer the request is taken as stopped already."""
    for url in urls:
        try:
            Client(url, client.token, timeout=MEMBER_TIMEOUT).request("POST", "/shutdown")
        except CorralError:
            pass
    deadline = time.monotonic() + STOP_WITHIN
    running = list(urls)
    while running and time.monotonic() < deadline:
        running = [u for u in running if Client(u, client.token, timeout=1.0).healthy()]
        if running:
            time.sleep(0.05)
    return running


def leader_seen(rows: list[dict[str, Any]]) -> tuple[int | None, int]:
    """The leader named at the highest term any member reports one, and that term. Views
    disagree while news of an election spreads; a node stuck at an older term (cut off, or
    just behind) must not hide the leader the others follow. Raft elects at most one leader
    per term, so two names at one term mean a view is corrupt: no leader then."""
    named = [(int(r["term"] or 0), int(r["leader"])) for r in rows if r["leader"]]
    if not named:
        return None, 0
    term = max(t for t, _ in named)
    leaders = {lead for t, lead in named if t == term}
    return (leaders.pop() if len(leaders) == 1 else None), term


@click.group("cluster")
def cluster() -> None:
    """The replicated control plane: members, roles, leader, lag."""


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(as_json: bool) -> None:
    """Members with their role, term, commit and applied index, and lag."""
    client = _client()
    first = _view(client)
    members = {
        int(k): MemberRecord(int(k), m["raft"], m["api"]) for k, m in first["members"].items()
    }
    for node_id in _ids(first) - set(members):
        members[node_id] = MemberRecord(node_id, first["peers"].get(str(node_id), ""), "")
    rows = cluster_view.status_rows(_member_views(client, first), members)
    leader, term = leader_seen(rows)
    summary = {
        "leader": leader,
        "term": term or max((r["term"] or 0 for r in rows), default=0),
        "members": rows,
    }
    if as_json:
        render.write(json.dumps(summary, indent=2))
        return
    if summary["leader"] is None:
        render.err.print(
            "[red]no leader[/]: no quorum — a majority of the voters must be up and reachable"
        )
    else:
        render.out.print(f"leader: node {summary['leader']}, term {summary['term']}")
    table = [
        {
            "id": r["id"],
            "role": r["role"] + ("" if r["voter"] or r["role"] == "unreachable" else "*"),
            "raft": r["raft"],
            "api": r["api"],
            "term": r["term"],
            "commit": r["commit"],
            "applied": r["applied"],
            "lag": r["lag"],
        }
        for r in rows
    ]
    render.json_or_table(table, False, "members")


@cluster.command("add")
@click.argument("member")
def add(member: str) -> None:
    """Add ID=HOST:PORT (its Raft address) as a learner, then a voter once caught up.

    Start the node first: corral server --cluster --join --node-id ID --peers …"""
    node_id, address = cluster_view.parse_member(member)
    result = _client().request("POST", "/cluster/members", {"id": node_id, "address": address})
    render.out.print(f"node {node_id} ({address}) is a voter; voters {result['voters']}")


@cluster.command("remove")
@click.argument("node_id", type=int)
def remove(node_id: int) -> None:
    """Remove member NODE_ID (the leader too: it steps down first)."""
    result = _client().request("DELETE", f"/cluster/members/{node_id}")
    render.out.print(f"node {node_id} removed; voters {result['voters']}")


@cluster.command("transfer-leader")
@click.argument("node_id", type=int, required=False)
def transfer_leader(node_id: int | None) -> None:
    """Move leadership to NODE_ID (default: the most caught-up other voter)."""
    body = {} if node_id is None else {"to": node_id}
    result = _client().request("POST", "/cluster/transfer-leader", body)
    render.out.print(f"leader: node {result['from']} → node {result['leader']}")
