"""The replicated control plane's membership as data: peer lists, member records, the status
table and the order of API URLs (pure).

Theory of operation. A cluster member has a Raft id (1, 2, 3, …), a Raft address
(``host:port``, given on the command line with ``--peers``) and an API URL, which it
publishes in the Store under ``/corral/cluster/members/<id>`` once the cluster has quorum, so
every node — and through ``$CORRAL_HOME/api`` every client — learns where every API is.
Invariants:

- a peer list names each id once, ids are positive integers, addresses are ``host:port``;
- the API URL list puts the leader first (clients that read one URL reach a node that can
  answer at once) and the others by id, each URL once;
- the status table has one row per member the cluster knows, in id order; a member that did
  not answer is shown as ``unreachable``, never dropped; lag is the highest commit index any
  member reported minus the member's applied index (etcd's "raft index" vs "applied index").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from corral.errors import UserError

MEMBERS = "/corral/cluster/members/"


class MemberRecord(msgspec.Struct, frozen=True):
    id: int
    raft: str  # host:port of its Raft transport
    api: str  # http://host:port of its API


def member_key(node_id: int) -> str:
    return f"{MEMBERS}{node_id}"


def parse_member(text: str, where: str = "member") -> tuple[int, str]:
    """``ID=HOST:PORT`` → (id, address)."""
    ident, sep, address = text.strip().partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not ident.strip().isdigit() or int(ident) < 1:
        raise UserError(
            f"{where} {text!r}: expected ID=HOST:PORT with a positive integer id",
            "e.g. 2=127.0.0.1:7002",
        )
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(
            f"{where} {text!r}: {address!r} is not HOST:PORT",
            "e.g. 2=127.0.0.1:7002 (the node's Raft address, not its API)",
        )
    return int(ident), address


def parse_peers(text: str) -> dict[int, str]:
    """``1=h:p,2=h:p,3=h:p`` → {id: address}."""
    peers: dict[int, str] = {}
    for item in (part for part in text.split(",") if part.strip()):
        node_id, address = parse_member(item, "--peers entry")
        if node_id in peers:
            raise UserError(f"--peers names node {node_id} twice", "give each id once")
        peers[node_id] = address
    if not peers:
        raise UserError("--peers is empty", "--peers 1=127.0.0.1:7001,2=…,3=…")
    taken: dict[str, int] = {}
    for node_id in sorted(peers):
        other = taken.setdefault(peers[node_id], node_id)
        if other != node_id:
            raise UserError(
                f"--peers gives nodes {other} and {node_id} the same address {peers[node_id]}",
                "every node needs its own Raft port",
            )
    return peers


def api_urls(members: Mapping[int, str], leader: int) -> list[str]:
    """Member API URLs (id → URL), the leader's first, then by id, each once."""
    order = sorted(members, key=lambda node_id: (node_id != leader, node_id))
    urls: list[str] = []
    for node_id in order:
        url = members[node_id]
        if url and url not in urls:
            urls.append(url)
    return urls


def transfer_target(voters: Sequence[int], self_id: int, matches: Mapping[int, int]) -> int | None:
    """The voter other than this one with the most of the log (ties: the lowest id)."""
    others = [v for v in voters if v != self_id]
    if not others:
        return None
    return min(others, key=lambda v: (-matches.get(v, 0), v))


def status_rows(
    views: Mapping[int, Mapping[str, Any] | None], members: Mapping[int, MemberRecord]
) -> list[dict[str, Any]]:
    """One row per member from each member's own view of itself (None: it did not answer)."""
    reported = [v for v in views.values() if v is not None]
    top = max((int(v["commit"]) for v in reported), default=0)
    voters: set[int] = set()
    learners: set[int] = set()
    for view in reported:
        voters.update(int(v) for v in view.get("voters", ()))
        learners.update(int(v) for v in view.get("learners", ()))
    rows: list[dict[str, Any]] = []
    for node_id in sorted(set(views) | set(members)):
        member = members.get(node_id)
        seen = views.get(node_id)
        row: dict[str, Any] = {
            "id": node_id,
            "raft": member.raft if member else "",
            "api": member.api if member else "",
            "voter": node_id in voters,
            "learner": node_id in learners,
        }
        if seen is None:
            row.update(role="unreachable", term=None, leader=None, commit=None, applied=None)
            row["lag"] = None
        else:
            row.update(
                role=str(seen["role"]),
                term=int(seen["term"]),
                leader=int(seen["leader"]),
                commit=int(seen["commit"]),
                applied=int(seen["applied"]),
                lag=top - int(seen["applied"]),
            )
        rows.append(row)
    return rows
