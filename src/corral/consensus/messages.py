"""What Raft nodes exchange and persist: entries, hard state, snapshots, messages, Ready.

Theory of operation (Raft paper §5, Fig. 2; etcd-io/raft's raftpb): every value here is an
immutable msgspec Struct, so a message handed to the network or an entry handed to storage can
never change afterwards, and the same types encode to msgpack for the transport.

Invariants:
- node ids are positive ints; ``NONE`` (0) means "no node" (no leader, no vote);
- an ``Entry`` is identified by ``(index, term)``; two entries with the same pair are equal
  (Log Matching, §5.3);
- ``Snapshot.index``/``term`` are those of the last entry the snapshot covers, and its
  ``conf_state`` is the configuration in force at that entry (§7);
- ``HardState`` (term, vote, commit) is what must be durable before any message that depends
  on it is sent (§5.1, Fig. 2 "persistent state").
"""

from __future__ import annotations

import enum

import msgspec

NONE = 0


class MessageType(enum.IntEnum):
    # local: never cross the network
    HUP = 0  # start an election (the election timer fired, or a test asks)
    BEAT = 1  # the leader's heartbeat timer fired
    CHECK_QUORUM = 2  # the leader checks it heard from a quorum within an election timeout
    UNREACHABLE = 3  # the driver could not deliver to a peer
    SNAP_STATUS = 4  # the driver reports whether a snapshot reached its peer
    # between nodes
    PROP = 10
    APP = 11
    APP_RESP = 12
    VOTE = 13
    VOTE_RESP = 14
    PRE_VOTE = 15
    PRE_VOTE_RESP = 16
    SNAP = 17
    HEARTBEAT = 18
    HEARTBEAT_RESP = 19
    READ_INDEX = 20
    READ_INDEX_RESP = 21
    TRANSFER_LEADER = 22
    TIMEOUT_NOW = 23

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    MessageType.HUP: "MsgHup",
    MessageType.BEAT: "MsgBeat",
    MessageType.CHECK_QUORUM: "MsgCheckQuorum",
    MessageType.UNREACHABLE: "MsgUnreachable",
    MessageType.SNAP_STATUS: "MsgSnapStatus",
    MessageType.PROP: "MsgProp",
    MessageType.APP: "MsgApp",
    MessageType.APP_RESP: "MsgAppResp",
    MessageType.VOTE: "MsgVote",
    MessageType.VOTE_RESP: "MsgVoteResp",
    MessageType.PRE_VOTE: "MsgPreVote",
    MessageType.PRE_VOTE_RESP: "MsgPreVoteResp",
    MessageType.SNAP: "MsgSnap",
    MessageType.HEARTBEAT: "MsgHeartbeat",
    MessageType.HEARTBEAT_RESP: "MsgHeartbeatResp",
    MessageType.READ_INDEX: "MsgReadIndex",
    MessageType.READ_INDEX_RESP: "MsgReadIndexResp",
    MessageType.TRANSFER_LEADER: "MsgTransferLeader",
    MessageType.TIMEOUT_NOW: "MsgTimeoutNow",
}


class EntryType(enum.IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class ConfChangeType(enum.IntEnum):
    ADD_NODE = 0  # add a voter, or promote a learner to voter
    REMOVE_NODE = 1
    ADD_LEARNER = 2


class Entry(msgspec.Struct, frozen=True, array_like=True):
    term: int
    index: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


class ConfState(msgspec.Struct, frozen=True, array_like=True):
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


class ConfChange(msgspec.Struct, frozen=True, array_like=True):
    type: ConfChangeType
    node_id: int

    def encode(self) -> bytes:
        return msgspec.msgpack.encode(self)

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        return msgspec.msgpack.decode(data, type=ConfChange)


class HardState(msgspec.Struct, frozen=True, array_like=True):
    term: int = 0
    vote: int = NONE
    commit: int = 0


class Snapshot(msgspec.Struct, frozen=True, array_like=True):
    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()
    data: bytes = b""


class Message(msgspec.Struct, frozen=True, kw_only=True):
    type: MessageType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0  # MsgApp: term of the entry at ``index``; votes: candidate's last term
    index: int = 0  # MsgApp: index preceding ``entries``; votes: candidate's last index
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0  # a rejected MsgApp: the follower's last index, to skip back fast
    snapshot: Snapshot | None = None
    context: bytes = b""  # ReadIndex request id; b"transfer" on votes forced by TimeoutNow


class ReadState(msgspec.Struct, frozen=True):
    """A linearizable read may be served once the local applied index reaches ``index``."""

    index: int
    context: bytes


class SoftState(msgspec.Struct, frozen=True):
    lead: int
    role: str


class Ready(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the driver must do, in this order (see ``corral.consensus`` docs):

    1. persist ``snapshot``, then ``entries``, then ``hard_state`` (fsync);
    2. send ``messages`` — only now, because votes and append acks depend on step 1;
    3. apply ``committed_entries`` (and restore ``snapshot`` into the state machine);
    4. call ``advance(ready)``.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()

    @property
    def must_sync(self) -> bool:
        return bool(self.entries) or self.hard_state is not None or self.snapshot is not None


def entry_size(entry: Entry) -> int:
    return len(entry.data) + 16


def describe_entry(entry: Entry) -> str:
    if entry.type == EntryType.CONF_CHANGE:
        cc = ConfChange.decode(entry.data)
        return f"{entry.term}/{entry.index} EntryConfChange {cc.type.name.lower()} {cc.node_id}"
    return f"{entry.term}/{entry.index} EntryNormal {entry.data.decode(errors='replace')!r}"


def describe(m: Message) -> str:
    """One line in the style of etcd-io/raft's interaction traces: ``1->2 MsgVote Term:1 …``."""
    parts = [f"{m.frm}->{m.to} {m.type.label} Term:{m.term}"]
    t = m.type
    if t in (MessageType.APP, MessageType.VOTE, MessageType.PRE_VOTE):
        parts.append(f"Log:{m.log_term}/{m.index}")
    if t == MessageType.APP:
        parts.append(f"Commit:{m.commit}")
        if m.entries:
            parts.append("Entries:[" + ", ".join(describe_entry(e) for e in m.entries) + "]")
    elif t in (MessageType.HEARTBEAT,):
        parts.append(f"Commit:{m.commit}")
    elif t in (MessageType.APP_RESP, MessageType.READ_INDEX_RESP):
        parts.append(f"Index:{m.index}")
    if m.reject:
        parts.append(
            f"Rejected (Hint: {m.reject_hint})" if t == MessageType.APP_RESP else "Rejected"
        )
    if m.snapshot is not None:
        s = m.snapshot
        parts.append(f"Snapshot: Index:{s.index} Term:{s.term} Voters:{list(s.conf_state.voters)}")
        if s.conf_state.learners:
            parts.append(f"Learners:{list(s.conf_state.learners)}")
    if m.context:
        parts.append(f"Context:{m.context.decode(errors='replace')}")
    return " ".join(parts)
