"""An in-memory Raft cluster driven command by command, printing the protocol trace.

This is the interaction harness behind the scenario transcripts (etcd-io/raft's
``rafttest.InteractionEnv``, written afresh): each node has a ``MemoryStorage`` that stands for
its disk, Ready processing follows the driver contract (persist, send, apply, advance), and
messages wait in per-node mailboxes until ``stabilize`` or ``deliver-msgs`` hands them over.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from corral.consensus import (
    ConfChange,
    ConfChangeType,
    Config,
    EntryType,
    MemoryStorage,
    Message,
    ProposalDropped,
    RaftNode,
    Ready,
)
from corral.consensus.messages import describe, describe_entry

TEST_CONFIG = Config(election_ticks=10, heartbeat_ticks=1, max_inflight_msgs=4)


@dataclass
class Member:
    node: RaftNode
    storage: MemoryStorage
    applied: list[str] = field(default_factory=list)
    snapshot_data: bytes = b""


class Harness:
    def __init__(self) -> None:
        self.members: dict[int, Member] = {}
        self.mailbox: dict[int, list[Message]] = {}
        self.groups: list[set[int]] = []
        self.config = TEST_CONFIG

    # ------------------------------------------------------------------ plumbing

    def _connected(self, a: int, b: int) -> bool:
        if not self.groups:
            return True
        return any(a in g and b in g for g in self.groups)

    def _node(self, text: str) -> RaftNode:
        return self.members[int(text)].node

    def process_ready(self, nid: int) -> list[str]:
        m = self.members[nid]
        rd: Ready = m.node.ready()
        out = [f"> {nid} handling Ready"]
        if rd.soft_state is not None:
            out.append(f"  Lead:{rd.soft_state.lead} State:{rd.soft_state.role}")
        if rd.hard_state is not None:
            hs = rd.hard_state
            out.append(f"  HardState Term:{hs.term} Vote:{hs.vote} Commit:{hs.commit}")
        if rd.snapshot is not None:
            s = rd.snapshot
            m.storage.apply_snapshot(s)
            m.applied = [f"<snapshot {s.index}>"]
            out.append(
                f"  Snapshot Index:{s.index} Term:{s.term} Voters:{list(s.conf_state.voters)}"
                + (f" Learners:{list(s.conf_state.learners)}" if s.conf_state.learners else "")
            )
        if rd.entries:
            m.storage.append(rd.entries)
            out.append("  Entries:")
            out.extend(f"  {describe_entry(e)}" for e in rd.entries)
        if rd.hard_state is not None:
            m.storage.set_hard_state(rd.hard_state)
        if rd.messages:
            out.append("  Messages:")
            for msg in rd.messages:
                out.append(f"  {describe(msg)}")
                self.mailbox.setdefault(msg.to, []).append(msg)
        if rd.committed_entries:
            out.append("  CommittedEntries:")
            for e in rd.committed_entries:
                out.append(f"  {describe_entry(e)}")
                if e.type == EntryType.CONF_CHANGE:
                    cs = m.node.apply_conf_change(ConfChange.decode(e.data))
                    out.append(
                        f"  INFO {nid} applied conf: voters={list(cs.voters)} "
                        f"learners={list(cs.learners)}"
                    )
                elif e.data:
                    m.applied.append(e.data.decode())
        for rs in rd.read_states:
            out.append(f"  ReadState Index:{rs.index} Context:{rs.context.decode()}")
        m.node.advance(rd)
        return out

    def deliver(self, nid: int) -> list[str]:
        msgs = self.mailbox.pop(nid, [])
        if not msgs or nid not in self.members:
            return []
        out = [f"> {nid} receiving messages"]
        for msg in msgs:
            if not self._connected(msg.frm, msg.to):
                out.append(f"  {describe(msg)} DROPPED (partition)")
                continue
            out.append(f"  {describe(msg)}")
            self.members[nid].node.step(msg)
        return out

    def stabilize(self, ids: list[int]) -> list[str]:
        out: list[str] = []
        for _ in range(1000):
            progressed = False
            for nid in ids:
                while self.members[nid].node.has_ready():
                    out.extend(self.process_ready(nid))
                    progressed = True
            for nid in ids:
                got = self.deliver(nid)
                if got:
                    out.extend(got)
                    progressed = True
            if not progressed:
                return out
        raise AssertionError("stabilize did not converge in 1000 rounds")

    # ------------------------------------------------------------------ commands

    def run(self, line: str) -> str:
        words = line.split()
        cmd, args = words[0], words[1:]
        handler: Callable[[list[str]], list[str]] | None = getattr(
            self, "cmd_" + cmd.replace("-", "_"), None
        )
        if handler is None:
            raise AssertionError(f"unknown command {cmd!r}")
        try:
            out = handler(args)
        except ProposalDropped as exc:
            out = [f"error: {exc}"]
        return "\n".join(out) if out else "ok"

    def cmd_add_nodes(self, args: list[str]) -> list[str]:
        count = int(args[0])
        opts = dict(a.split("=", 1) for a in args[1:])
        changes: dict[str, object] = {
            k.replace("-", "_"): (v == "true") if v in ("true", "false") else int(v)
            for k, v in opts.items()
        }
        self.config = self.config.with_(**changes) if changes else self.config
        first = max(self.members, default=0) + 1
        ids = list(range(first, first + count))
        peers = ids if not self.members else []  # later nodes join empty, like `etcd --join`
        for nid in ids:
            storage = MemoryStorage()
            node = RaftNode(nid, peers, self.config, storage, random.Random(nid))
            self.members[nid] = Member(node, storage)
        return [f"INFO {nid} started, voters={list(peers)}" for nid in ids]

    def cmd_campaign(self, args: list[str]) -> list[str]:
        self._node(args[0]).campaign()
        return []

    def cmd_tick(self, args: list[str]) -> list[str]:
        node = self._node(args[0])
        for _ in range(int(args[1]) if len(args) > 1 else 1):
            node.tick()
        return []

    def cmd_tick_election(self, args: list[str]) -> list[str]:
        node = self._node(args[0])
        for _ in range(node.randomized_election_timeout):
            node.tick()
        return []

    def cmd_tick_heartbeat(self, args: list[str]) -> list[str]:
        node = self._node(args[0])
        for _ in range(node.config.heartbeat_ticks):
            node.tick()
        return []

    def cmd_propose(self, args: list[str]) -> list[str]:
        self._node(args[0]).propose(args[1].encode())
        return []

    def cmd_propose_conf_change(self, args: list[str]) -> list[str]:
        kind = ConfChangeType[args[1].upper().replace("-", "_")]
        self._node(args[0]).propose_conf_change(ConfChange(kind, int(args[2])))
        return []

    def cmd_read_index(self, args: list[str]) -> list[str]:
        self._node(args[0]).read_index(args[1].encode())
        return []

    def cmd_transfer_leader(self, args: list[str]) -> list[str]:
        self._node(args[0]).transfer_leadership(int(args[1]))
        return []

    def cmd_partition(self, args: list[str]) -> list[str]:
        self.groups = [{int(x) for x in part.split()} for part in " ".join(args).split("|")]
        return []

    def cmd_heal(self, args: list[str]) -> list[str]:
        self.groups = []
        return []

    def cmd_stabilize(self, args: list[str]) -> list[str]:
        return self.stabilize([int(a) for a in args] or sorted(self.members))

    def cmd_process_ready(self, args: list[str]) -> list[str]:
        out: list[str] = []
        for nid in [int(a) for a in args]:
            if self.members[nid].node.has_ready():
                out.extend(self.process_ready(nid))
        return out

    def cmd_deliver_msgs(self, args: list[str]) -> list[str]:
        out: list[str] = []
        for nid in [int(a) for a in args] or sorted(self.members):
            out.extend(self.deliver(nid))
        return out

    def cmd_drop_msgs(self, args: list[str]) -> list[str]:
        for nid in [int(a) for a in args] or sorted(self.members):
            self.mailbox.pop(nid, None)
        return []

    def cmd_status(self, args: list[str]) -> list[str]:
        s = self._node(args[0]).status()
        out = [
            f"{s.id}: {s.role.value} term={s.term} vote={s.vote} lead={s.lead} "
            f"commit={s.commit} applied={s.applied} last={s.last_index} "
            f"voters={list(s.voters)} learners={list(s.learners)}"
        ]
        out.extend(f"  {peer}: {text}" for peer, text in s.progress.items())
        return out

    def cmd_raft_log(self, args: list[str]) -> list[str]:
        node = self._node(args[0])
        got = node.log.slice(node.log.first_index(), node.log.last_index() + 1, 1 << 62) or []
        return [describe_entry(e) for e in got] or [f"log empty after {node.log.last_index()}"]

    def cmd_applied(self, args: list[str]) -> list[str]:
        return [f"{args[0]}: {self.members[int(args[0])].applied}"]

    def cmd_compact(self, args: list[str]) -> list[str]:
        m = self.members[int(args[0])]
        index = int(args[1])
        conf = m.node.status()
        from corral.consensus import ConfState

        m.storage.create_snapshot(index, ConfState(conf.voters, conf.learners), b"")
        m.storage.compact(index)
        return [f"{args[0]}: compacted to {index}, first index {m.storage.first_index()}"]

    def cmd_restart(self, args: list[str]) -> list[str]:
        """Crash and restart from storage (everything the harness persisted survives)."""
        nid = int(args[0])
        m = self.members[nid]
        self.mailbox.pop(nid, None)
        m.node = RaftNode(nid, [], self.config, m.storage, random.Random(nid + 100))
        s = m.node.status()
        return [f"INFO {nid} restarted: term={s.term} vote={s.vote} commit={s.commit}"]
