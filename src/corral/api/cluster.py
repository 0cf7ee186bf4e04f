"""The replicated control plane's endpoints: ``/api/v1/cluster…`` (served by every node).

``GET /cluster`` is this node's own view (role, term, leader, commit and applied index, the
configuration, and on the leader each member's replication progress) and answers without
quorum, so ``corral cluster status`` can show a cluster that lost one. Membership changes
and leadership transfer must run on the leader: a follower answers them with a 307 redirect
to the leader's API (the client follows it), or ``no_quorum`` when it knows no leader.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from corral.api.server import Route
from corral.consensus.core import Role
from corral.consensus.messages import NONE
from corral.consensus.node import NoQuorum
from corral.control import cluster_view
from corral.control.cluster_view import MemberRecord, member_key
from corral.errors import Conflict, CorralError, NotFound, PlatformUnavailable, UserError
from corral.store.base import Delete
from corral.store.raft import RaftStore

ROLE_NAMES = {
    Role.LEADER: "leader",
    Role.FOLLOWER: "follower",
    Role.CANDIDATE: "candidate",
    Role.PRE_CANDIDATE: "pre-candidate",
}
ADD_WITHIN = 20.0  # seconds for a new member to catch up as a learner and become a voter
TRANSFER_WITHIN = 5.0


class ClusterApi:
    def __init__(self, store: RaftStore, members: Callable[[], Mapping[int, MemberRecord]]) -> None:
        self.store = store
        self.members = members
        self.leaving = False  # this node is removing itself from the cluster

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/api/v1/cluster", self.status, "This node's view of the cluster"),
            Route("POST", "/api/v1/cluster/members", self.add, "Add a member (leader)"),
            Route("DELETE", "/api/v1/cluster/members/{id}", self.remove, "Remove a member"),
            Route("POST", "/api/v1/cluster/transfer-leader", self.transfer, "Move leadership"),
        ]

    # -- views ------------------------------------------------------------------------------

    def view(self) -> dict[str, Any]:
        node = self.store.node
        st = node.status()
        raft = node.raft
        role = ROLE_NAMES.get(st.role, str(st.role.value))
        if st.id in st.learners:
            role = "learner"
        progress: dict[str, dict[str, Any]] = {}
        if st.role == Role.LEADER and raft is not None:
            for peer in sorted(raft.prs):
                pr = raft.prs[peer]
                progress[str(peer)] = {"match": pr.match, "state": pr.state.value}
        members = self.members()
        return {
            "node": st.id,
            "role": role,
            "term": st.term,
            "leader": st.lead,
            "commit": st.commit,
            "applied": st.applied,
            "last_index": st.last_index,
            "voters": list(st.voters),
            "learners": list(st.learners),
            "peers": {str(k): v for k, v in sorted(node.peers.items())},
            "members": {str(k): {"raft": m.raft, "api": m.api} for k, m in sorted(members.items())},
            "progress": progress,
        }

    async def status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.view())

    # -- leader-only operations -------------------------------------------------------------

    def _on_leader(self, request: web.Request) -> None:
        """Return on the leader; redirect to it from a follower."""
        node = self.store.node
        if node.is_leader:
            return
        lead = node.leader_id
        if lead == NONE:
            raise NoQuorum(
                f"no quorum: node {node.id} knows no leader for {request.method} {request.path}",
                "a majority of the nodes must be up and reachable; "
                "`corral cluster status` shows which are",
            )
        member = self.members().get(lead)
        if member is None or not member.api:
            raise PlatformUnavailable(
                f"node {node.id} is not the leader and does not know node {lead}'s API address",
                "retry in a moment (members publish their API once the cluster has quorum)",
            )
        raise web.HTTPTemporaryRedirect(member.api.rstrip("/") + request.path_qs)

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except ValueError:
            raise UserError("the request body is not valid JSON", "send a JSON object") from None
        if not isinstance(data, dict):
            raise UserError("the request body must be a JSON object", "send {…}")
        return data

    async def add(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        node_id, address = cluster_view.parse_member(
            f"{body.get('id', '')}={body.get('address', '')}"
        )
        self._on_leader(request)
        node = self.store.node
        if node.raft is not None and node_id in node.raft.voters:
            raise Conflict(
                f"node {node_id} is already a voting member",
                "`corral cluster status` lists the members",
            )
        try:
            await node.add_member(node_id, address, within=ADD_WITHIN)
        except NoQuorum as exc:
            raise PlatformUnavailable(
                f"node {node_id} at {address} did not catch up and become a voter within "
                f"{ADD_WITHIN:g} s ({exc.message})",
                f"start it first: corral server --cluster --join --node-id {node_id} "
                "--peers <every member, itself included>; then run this again",
            ) from None
        return web.json_response({"id": node_id, "address": address, **self._conf()})

    async def remove(self, request: web.Request) -> web.StreamResponse:
        raw = request.match_info["id"]
        if not raw.isdigit():
            raise UserError(f"{raw!r} is not a node id", "ids are 1, 2, 3, …")
        node_id = int(raw)
        self._on_leader(request)
        node = self.store.node
        raft = node.raft
        if raft is None or (node_id not in raft.voters and node_id not in raft.learners):
            raise NotFound(
                f"node {node_id} is not a member", "`corral cluster status` lists the members"
            )
        if node_id in raft.voters and len(raft.voters) == 1:
            raise Conflict(f"node {node_id} is the last voter", "add another member first")
        if node_id == node.id:
            # Once removed, this node can no longer write to the Store: forget it first, while
            # it still leads. ``leaving`` stops the node from publishing its record again.
            self.leaving = True
            try:
                await self.store.txn([], [Delete(member_key(node_id))])
                await node.remove_member(node_id)
            except BaseException:
                self.leaving = False  # still a member: it publishes its record again
                raise
        else:
            await node.remove_member(node_id)
            await self._forget(node_id)
        return web.json_response({"id": node_id, **self._conf()})

    async def _forget(self, node_id: int) -> None:
        # A leadership change right after the removal: the delete waits for the next leader.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TRANSFER_WITHIN
        while True:
            try:
                await self.store.txn([], [Delete(member_key(node_id))])
                return
            except CorralError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def transfer(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        self._on_leader(request)
        node = self.store.node
        raft = node.raft
        assert raft is not None
        to = body.get("to")
        if to is None:
            matches = {p: pr.match for p, pr in raft.prs.items()}
            to = cluster_view.transfer_target(raft.voters, node.id, matches)
            if to is None:
                raise Conflict(f"node {node.id} is the only voter", "add members first")
        if not isinstance(to, int) or to not in raft.voters:
            raise UserError(
                f"node {to!r} is not a voting member (voters: {list(raft.voters)})",
                "transfer to one of the voters; `corral cluster status` lists them",
            )
        old = node.id
        if to != old:
            node.transfer_leadership(to)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TRANSFER_WITHIN
            while node.leader_id != to:
                if loop.time() > deadline:
                    raise PlatformUnavailable(
                        f"leadership did not move from node {old} to node {to} within "
                        f"{TRANSFER_WITHIN:g} s (leader now: {node.leader_id or 'none'})",
                        f"node {to} may be down or behind; `corral cluster status` shows its lag",
                    )
                await asyncio.sleep(0.02)
        return web.json_response({"from": old, "leader": to})

    def _conf(self) -> dict[str, Any]:
        raft = self.store.node.raft
        assert raft is not None
        return {"voters": list(raft.voters), "learners": list(raft.learners)}
