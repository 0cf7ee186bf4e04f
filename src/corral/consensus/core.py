"""The Raft node state machine: ``tick``/``step`` in, ``Ready`` out (etcd-io/raft's shape).

Theory of operation. A ``RaftNode`` does no I/O and reads no clock: time arrives as ``tick()``,
the network as ``step(message)``, clients as ``propose``/``read_index``. Everything the node
wants done comes out of ``ready()``; the driver persists, sends, applies, then ``advance()``s
(the order is on ``Ready``). Randomness (election timeouts) comes from the ``rng`` passed in.

Paper sections followed (Ongaro & Ousterhout, "In Search of an Understandable Consensus
Algorithm"; Ongaro's thesis for §6, §8, §9.6):

- §5.2 election: followers start an election after a randomized timeout in
  ``[election_ticks, 2·election_ticks)``; one vote per term, persisted before it is sent.
- §9.6 pre-vote: a would-be candidate first asks whether it *could* win without bumping its
  term; peers that heard from a leader within an election timeout say no. So a node returning
  from a partition disturbs nobody.
- check-quorum (thesis §6.2): a leader that has not heard from a quorum for an election timeout
  steps down; followers ignore vote requests while they have a live leader (leader lease).
- §5.3 replication: per-follower progress (``progress.py``) with probing, pipelined streaming
  bounded by ``max_inflight_msgs`` and ``max_size_per_msg``; proposals made between two
  ``ready()`` calls leave together (batching: one MsgApp per follower, not one per proposal).
- §5.4.1 election restriction: votes only for candidates whose log is at least as up to date.
- §5.4.2 commitment: the leader advances ``commit`` by counting replicas only for entries of its
  own term; each new leader appends an empty entry at once so earlier entries commit.
- §6 membership (single-server changes, thesis §4.1): one configuration change in flight at a
  time (``pending_conf_index``), and — the fix for the single-server bug — none proposed before
  the leader has committed an entry of its current term. Changes take effect when applied
  (``apply_conf_change``). Learners receive the log but neither vote nor count; a learner is
  promoted only once within ``max_learner_lag`` entries of the commit index.
- §7 snapshots: a follower whose next entry was compacted receives ``MsgSnap``.
- §8 / thesis §6.4 ReadIndex: a read is served at the leader's commit index once a quorum has
  answered a heartbeat sent after the read arrived. Lease reads only with ``lease_reads``.
- thesis §3.10 leadership transfer: the leader brings the target up to date, then sends
  ``MsgTimeoutNow``; the target campaigns at once, past pre-vote and leases.

Persistence rule: every message in a ``Ready`` may depend on the hard state and entries of the
same ``Ready`` (a vote, an append ack), so the driver sends them only after persisting. Because
of that, a leader may count its own unpersisted entries toward commitment: nothing that
reveals the commit leaves the node before its entries are durable.

Liveness while a disk stalls: heartbeats and their answers are check-quorum's and the election
timer's only evidence, so they must not queue behind an fsync (a 0.6 s fdatasync on a loaded
machine deposed healthy leaders). ``take_urgent_messages`` hands them out while a ``Ready`` is
being persisted: a heartbeat answer promises nothing, and a heartbeat's commit is capped at the
leader's durable log, which keeps the rule above (etcd-raft's async storage writes likewise
send what does not depend on the pending write at once).

Invariants checked by the simulator after every event: at most one leader per term; logs that
share an (index, term) share the prefix; a leader holds every committed entry; every node
applies the same sequence; term and vote never go back across restarts.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from corral.consensus.config import Config
from corral.consensus.log import RaftLog
from corral.consensus.messages import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    ReadState,
    Ready,
    Snapshot,
    SoftState,
)
from corral.consensus.messages import MessageType as T
from corral.consensus.progress import Progress, ProgressState
from corral.consensus.readonly import ReadOnly
from corral.consensus.storage import Storage
from corral.errors import PlatformUnavailable, UserError

TRANSFER = b"transfer"
# Forwarded requests carry no term (like etcd's MsgProp), so they never bump anyone's term.
_TERMLESS = frozenset({T.PROP, T.READ_INDEX, T.TRANSFER_LEADER})


class ProposalDropped(PlatformUnavailable):
    """The node cannot take this proposal now (no leader, a transfer, a change in flight)."""

    code = "proposal_dropped"


class RaftUsageError(UserError):
    """The driver broke the node's contract (e.g. ``ready()`` twice without ``advance``)."""

    code = "raft_usage"


class Role(enum.Enum):
    FOLLOWER = "StateFollower"
    PRE_CANDIDATE = "StatePreCandidate"
    CANDIDATE = "StateCandidate"
    LEADER = "StateLeader"


@dataclass(frozen=True)
class Status:
    id: int
    role: Role
    term: int
    vote: int
    lead: int
    commit: int
    applied: int
    last_index: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    progress: dict[int, str]


def _dropped(why: str) -> ProposalDropped:
    return ProposalDropped(f"raft: proposal dropped: {why}", "retry, on the leader if one is known")


class RaftNode:
    def __init__(
        self,
        id: int,
        peers: Sequence[int],
        config: Config,
        storage: Storage,
        rng: random.Random,
    ) -> None:
        if id <= 0:
            raise RaftUsageError(f"raft node id must be > 0, got {id}", "ids are 1, 2, 3, ...")
        self.id = id
        self.config = config.validate()
        self._rng = rng
        self.log = RaftLog(storage, config.max_size_per_msg)
        hard, conf = storage.initial_state()
        fresh = storage.last_index() == 0 and not conf.voters and not conf.learners
        if fresh and peers:
            # Bootstrap: the initial configuration is a snapshot at index 1, so a node that
            # joins later with an empty log receives it (and every later change) from a leader.
            conf = ConfState(voters=tuple(sorted(set(peers))))
            self.log.restore(Snapshot(index=1, term=0, conf_state=conf))
        self.term = hard.term
        self.vote = hard.vote
        if hard.commit:
            self.log.commit_to(hard.commit)
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.voters: tuple[int, ...] = ()
        self.learners: tuple[int, ...] = ()
        self.prs: dict[int, Progress] = {}
        self._set_conf(conf)
        self.msgs: list[Message] = []
        self._urgent = 0  # heartbeats and their answers in ``msgs``: ``take_urgent_messages``
        self.read_states: list[ReadState] = []
        self.readonly = ReadOnly()
        self.votes: dict[int, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = 0
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self._ticks = 0
        self._ack_sent_tick: dict[int, int] = {}
        self._last_heard: dict[int, int] = {}
        self._prev_hard = hard
        self._prev_soft = SoftState(NONE, Role.FOLLOWER.value)
        self._outstanding = False
        self._bcast_pending = False
        self._become_follower(self.term, NONE)

    # ================================================================== public verbs

    def tick(self) -> None:
        self._ticks += 1
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (a test or an operator; the timer does the same)."""
        self.step(Message(type=T.HUP, frm=self.id))

    def propose(self, data: bytes) -> None:
        if self.role == Role.LEADER:
            if self.lead_transferee != NONE:
                raise _dropped(f"leadership is moving to {self.lead_transferee}")
            if self.id not in self.prs:
                raise _dropped(f"node {self.id} was removed from the configuration")
            # Batching: proposals made between two Readys leave in one MsgApp per follower.
            self._append_entries([Entry(term=0, index=0, data=data)])
            self._bcast_pending = True
        elif self.lead != NONE and self.role == Role.FOLLOWER:
            self._send(Message(type=T.PROP, to=self.lead, entries=(Entry(0, 0, data=data),)))
        else:
            raise _dropped(f"node {self.id} knows no leader in term {self.term}")

    def propose_conf_change(self, change: ConfChange) -> None:
        if self.role != Role.LEADER:
            raise _dropped(f"configuration changes go to the leader (known: {self.lead or '?'})")
        if self.lead_transferee != NONE:
            raise _dropped(f"leadership is moving to {self.lead_transferee}")
        if self.pending_conf_index > self.log.applied:
            raise _dropped(
                f"configuration change at {self.pending_conf_index} is not applied yet "
                f"(applied {self.log.applied}); one change at a time"
            )
        if self.log.term(self.log.committed) != self.term:
            # The single-server change bug (Ongaro, raft-dev 2015): a leader must commit an
            # entry of its own term before it may append a configuration change.
            raise _dropped(f"leader has not committed an entry of term {self.term} yet")
        if change.type == ConfChangeType.ADD_NODE and change.node_id in self.learners:
            pr = self.prs[change.node_id]
            behind = pr.match + self.config.max_learner_lag < self.log.committed
            if behind or pr.state != ProgressState.REPLICATE:
                raise _dropped(
                    f"learner {change.node_id} is at {pr.match}, commit is "
                    f"{self.log.committed}: it must catch up before it may vote"
                )
        entry = Entry(term=0, index=0, type=EntryType.CONF_CHANGE, data=change.encode())
        self._append_and_broadcast([entry])
        self.pending_conf_index = self.log.last_index()

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read; a ``ReadState(index, context)`` comes out of a Ready."""
        if self.role == Role.LEADER:
            self._leader_read_index(context, self.id)
        elif self.lead != NONE and self.role == Role.FOLLOWER:
            self._send(Message(type=T.READ_INDEX, to=self.lead, context=context))
        else:
            raise _dropped(f"node {self.id} knows no leader for a read in term {self.term}")

    def transfer_leadership(self, to: int) -> None:
        self.step(Message(type=T.TRANSFER_LEADER, frm=to, to=self.id))

    def report_unreachable(self, peer: int) -> None:
        self.step(Message(type=T.UNREACHABLE, frm=peer))

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.step(Message(type=T.SNAP_STATUS, frm=peer, reject=not ok))

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Called by the driver when it applies a committed conf-change entry."""
        voters, learners = set(self.voters), set(self.learners)
        node = change.node_id
        if change.type == ConfChangeType.ADD_NODE:
            learners.discard(node)
            voters.add(node)
        elif change.type == ConfChangeType.ADD_LEARNER:
            if node not in voters:
                learners.add(node)
        else:
            voters.discard(node)
            learners.discard(node)
        self._set_conf(ConfState(tuple(sorted(voters)), tuple(sorted(learners))))
        if self.role == Role.LEADER:
            if self.id not in self.prs:
                self._become_follower(self.term, NONE)
            else:
                if self.lead_transferee != NONE and self.lead_transferee not in self.voters:
                    self.lead_transferee = NONE
                if self._maybe_commit():
                    self._bcast_append()
                else:
                    for peer in self._peers():
                        # a new peer starts in PROBE: probe it at once, even with nothing new
                        probe = self.prs[peer].state == ProgressState.PROBE
                        self._maybe_send_append(peer, send_if_empty=probe)
        return ConfState(self.voters, self.learners)

    def status(self) -> Status:
        progress = (
            {p: self.prs[p].describe() for p in sorted(self.prs)}
            if self.role == Role.LEADER
            else {}
        )
        return Status(
            id=self.id,
            role=self.role,
            term=self.term,
            vote=self.vote,
            lead=self.lead,
            commit=self.log.committed,
            applied=self.log.applied,
            last_index=self.log.last_index(),
            voters=self.voters,
            learners=self.learners,
            progress=progress,
        )

    # ------------------------------------------------------------------ Ready / advance

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role.value)

    def has_ready(self) -> bool:
        """Whether ``ready()`` has work; always False while a Ready awaits ``advance``."""
        if self._outstanding:
            return False
        return bool(
            self.msgs
            or self.log.unstable
            or self.log.unstable_snapshot is not None
            or self.read_states
            or self.log.has_next_committed()
            or self._hard_state() != self._prev_hard
            or self._soft_state() != self._prev_soft
        )

    def ready(self) -> Ready:
        if self._outstanding:
            raise RaftUsageError(
                "raft: ready() called again before advance()",
                "process one Ready at a time: persist, send, apply, advance",
            )
        if self._bcast_pending:
            self._bcast_pending = False
            if self.role == Role.LEADER:
                for peer in self._peers():
                    while self._maybe_send_append(peer, send_if_empty=False):
                        pass  # fill the follower's window (pipelining)
        hard, soft = self._hard_state(), self._soft_state()
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=tuple(self.log.unstable),
            snapshot=self.log.unstable_snapshot,
            committed_entries=tuple(self.log.next_committed()),
            messages=tuple(self.msgs),
            read_states=tuple(self.read_states),
        )
        self.msgs = []
        self._urgent = 0
        self.read_states = []
        self._prev_hard, self._prev_soft = hard, soft
        self._outstanding = True
        return rd

    def take_urgent_messages(self) -> list[Message]:
        """Remove and return the messages that may leave before the outstanding ``Ready`` is
        durable: heartbeats (their commit capped at the entries already persisted) and
        heartbeat answers. The driver calls this while it waits for the disk; what stays
        leaves with the next ``Ready`` as usual."""
        if not self._urgent:
            return []  # the common case, called for every inbound message: no scan
        self._urgent = 0
        urgent: list[Message] = []
        rest: list[Message] = []
        durable = self.log.offset - 1  # below ``offset`` every entry was advanced past: on disk
        for m in self.msgs:
            if m.type == T.HEARTBEAT_RESP:
                urgent.append(m)
            elif m.type == T.HEARTBEAT:
                capped = min(m.commit, durable)
                urgent.append(
                    msgspec.structs.replace(m, commit=capped) if capped != m.commit else m
                )
            else:
                rest.append(m)
        self.msgs = rest
        return urgent

    def advance(self, rd: Ready) -> None:
        self._outstanding = False
        if rd.snapshot is not None:
            self.log.stable_snap_to(rd.snapshot.index)
            self.log.applied_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)

    # ================================================================== roles

    def _peers(self) -> list[int]:
        return [p for p in sorted(self.prs) if p != self.id]

    def _quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def _promotable(self) -> bool:
        return self.id in self.voters

    def _set_conf(self, conf: ConfState) -> None:
        self.voters, self.learners = conf.voters, conf.learners
        wanted = set(conf.voters) | set(conf.learners)
        for gone in [p for p in sorted(self.prs) if p not in wanted]:
            del self.prs[gone]
        for node in sorted(wanted):
            pr = self.prs.get(node)
            if pr is None:
                pr = Progress(self.log.last_index() + 1, self.config.max_inflight_msgs)
                if node == self.id:
                    pr.match = self.log.last_index()
                self.prs[node] = pr
            pr.is_learner = node in conf.learners

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.config.election_ticks + self._rng.randrange(
            self.config.election_ticks
        )
        self.lead_transferee = NONE
        self.votes = {}
        self.pending_conf_index = 0
        self.readonly = ReadOnly()
        self._ack_sent_tick = {}
        last = self.log.last_index()
        for node in sorted(self.prs):
            pr = Progress(last + 1, self.config.max_inflight_msgs, self.prs[node].is_learner)
            if node == self.id:
                pr.match = last
            self.prs[node] = pr

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER

    def _become_pre_candidate(self) -> None:
        # Neither the term nor the vote changes: that is the point of pre-vote (§9.6).
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.lead = NONE

    def _become_candidate(self) -> None:
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        # a new leader gives every voter one election timeout to be heard from
        self._last_heard = dict.fromkeys(self.voters, self._ticks)
        self.prs[self.id].become_replicate()
        self.pending_conf_index = self.log.last_index()
        # §5.4.2 / §8: an empty entry of the new term lets earlier entries commit.
        self._append_entries([Entry(term=0, index=0)])

    # ================================================================== time

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self._promotable() and self.election_elapsed >= self.randomized_election_timeout:
            self.election_elapsed = 0
            self.step(Message(type=T.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.config.check_quorum:
            # Checked every tick against when each voter was last heard from, so an isolated
            # leader steps down within one election timeout (etcd checks once per timeout and
            # may take two).
            self.step(Message(type=T.CHECK_QUORUM, frm=self.id))
            if self.role != Role.LEADER:
                return
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.lead_transferee != NONE:
                self.lead_transferee = NONE  # the transfer did not finish in one timeout
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self.step(Message(type=T.BEAT, frm=self.id))

    # ================================================================== step

    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type in (T.VOTE, T.PRE_VOTE):
                forced = m.context == TRANSFER
                lease = self.config.check_quorum or m.type == T.PRE_VOTE
                in_lease = (
                    lease
                    and self.lead != NONE
                    and self.election_elapsed < self.config.election_ticks
                )
                if in_lease and not forced:
                    return  # we have a live leader: a disruptive candidate gets no answer
            if m.type == T.PRE_VOTE or (m.type == T.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change our term
            elif m.type in (T.APP, T.HEARTBEAT, T.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.config.check_quorum or self.config.pre_vote) and m.type in (
                T.HEARTBEAT,
                T.APP,
            ):
                # A stale leader (healed partition) learns the new term from this and steps down.
                self._send(Message(type=T.APP_RESP, to=m.frm))
            elif m.type == T.PRE_VOTE:
                self._send(Message(type=T.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        if m.type == T.HUP:
            self._hup(transfer=False)
        elif m.type in (T.VOTE, T.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER or not self._promotable():
            return
        pending = self.log.slice(
            max(self.log.applied + 1, self.log.first_index()), self.log.committed + 1, 1 << 62
        )
        if pending and any(e.type == EntryType.CONF_CHANGE for e in pending):
            return  # apply committed configuration changes before campaigning under them
        if self.config.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            kind, term = T.PRE_VOTE, self.term + 1
        else:
            self._become_candidate()
            kind, term = T.VOTE, self.term
        if self._poll(self.id, True) == "won":
            if pre:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()
            return
        for peer in self.voters:
            if peer == self.id:
                continue
            self._send(
                Message(
                    type=kind,
                    to=peer,
                    term=term,
                    index=self.log.last_index(),
                    log_term=self.log.last_term(),
                    context=TRANSFER if transfer else b"",
                )
            )

    def _poll(self, frm: int, granted: bool) -> str:
        self.votes.setdefault(frm, granted)
        yes = sum(1 for v in self.voters if self.votes.get(v) is True)
        no = sum(1 for v in self.voters if self.votes.get(v) is False)
        if yes >= self._quorum():
            return "won"
        if no > len(self.voters) - self._quorum():
            return "lost"
        return "pending"

    def _handle_vote_request(self, m: Message) -> None:
        resp = T.VOTE_RESP if m.type == T.VOTE else T.PRE_VOTE_RESP
        can_vote = (
            self.vote == m.frm
            or (self.vote == NONE and self.lead == NONE)
            or (m.type == T.PRE_VOTE and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A granted pre-vote answers in the candidate's future term so it is counted.
            self._send(Message(type=resp, to=m.frm, term=m.term))
            if m.type == T.VOTE:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(type=resp, to=m.frm, term=self.term, reject=True))

    # ------------------------------------------------------------------ leader

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == T.BEAT:
            self._bcast_heartbeat()
        elif t == T.CHECK_QUORUM:
            horizon = self._ticks - self.config.election_ticks
            active = sum(
                1 for v in self.voters if v == self.id or self._last_heard.get(v, 0) > horizon
            )
            if active < self._quorum():
                self._become_follower(self.term, NONE)
        elif t == T.PROP:
            if self.lead_transferee == NONE and self.id in self.prs:
                self._append_entries([Entry(term=0, index=0, data=e.data) for e in m.entries])
                self._bcast_pending = True
        elif t == T.READ_INDEX:
            self._leader_read_index(m.context, m.frm, quiet=True)
        elif t == T.TRANSFER_LEADER:
            self._handle_transfer(m.frm)
        else:
            pr = self.prs.get(m.frm)
            if pr is None:
                return
            if t == T.APP_RESP:
                self._handle_append_response(m, pr)
            elif t == T.HEARTBEAT_RESP:
                self._handle_heartbeat_response(m, pr)
            elif t == T.SNAP_STATUS:
                if pr.state == ProgressState.SNAPSHOT:
                    pr.become_probe()
                    pr.probe_sent = not m.reject  # success: wait for its append ack
            elif t == T.UNREACHABLE and pr.state == ProgressState.REPLICATE:
                pr.become_probe()

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        self._last_heard[m.frm] = self._ticks
        if m.reject:
            if pr.maybe_decr_to(m.index, m.reject_hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._maybe_send_append(m.frm)
            return
        was_paused = pr.is_paused()
        # A probe answered at the index we already knew still shows where the follower is.
        reprobe = pr.match == m.index and pr.state == ProgressState.PROBE
        if not pr.maybe_update(m.index) and not reprobe:
            return
        if pr.state == ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state == ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        elif pr.state == ProgressState.REPLICATE:
            pr.inflights.free_le(m.index)
        if self._maybe_commit():
            self._bcast_append()
        elif was_paused:
            self._maybe_send_append(m.frm)
        while self._maybe_send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match == self.log.last_index():
            self._send(Message(type=T.TIMEOUT_NOW, to=m.frm))

    def _handle_heartbeat_response(self, m: Message, pr: Progress) -> None:
        self._last_heard[m.frm] = self._ticks
        pr.probe_sent = False
        if pr.state == ProgressState.REPLICATE and pr.inflights.full():
            pr.inflights.free_first_one()
        if (
            pr.state == ProgressState.SNAPSHOT
            and self._ticks - pr.snapshot_sent_tick >= self.config.election_ticks
        ):
            pr.become_probe()  # the snapshot was lost on the way: send it again
        if pr.match < self.log.last_index():
            self._maybe_send_append(m.frm)
        self._ack_sent_tick[m.frm] = max(self._ack_sent_tick.get(m.frm, 0), m.index)
        if not m.context:
            return
        acks = self.readonly.recv_ack(m.frm, m.context)
        if acks is None or sum(1 for v in self.voters if v in acks) < self._quorum():
            return
        for request in self.readonly.advance(m.context):
            self._release_read(request.frm, request.index, request.context)

    def _release_read(self, to: int, index: int, context: bytes) -> None:
        if to in (NONE, self.id):
            self.read_states.append(ReadState(index, context))
        else:
            self._send(Message(type=T.READ_INDEX_RESP, to=to, index=index, context=context))

    def _leader_read_index(self, context: bytes, frm: int, quiet: bool = False) -> None:
        if self.log.term(self.log.committed) != self.term:
            # Until its no-op commits, a new leader's commit index may lag the true one (§8).
            if quiet:
                return
            raise _dropped(f"leader has not committed an entry of term {self.term} yet")
        index = self.log.committed
        if (self._quorum() == 1 and self.id in self.voters) or self._lease_valid():
            self._release_read(frm, index, context)
        else:
            self.readonly.add_request(index, context, frm)
            self.readonly.recv_ack(self.id, context)
            self._bcast_heartbeat(context)

    def _lease_valid(self) -> bool:
        if not self.config.lease_reads or self.lead_transferee != NONE:
            return False
        sent = sorted(
            (self._ticks if v == self.id else self._ack_sent_tick.get(v, -(1 << 60)))
            for v in self.voters
        )
        quorum_sent = sent[len(sent) - self._quorum()]
        return self._ticks - quorum_sent < self.config.lease_ticks

    def _handle_transfer(self, to: int) -> None:
        if to not in self.voters or to == self.id:
            return
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0  # it must finish within one election timeout
        if self.prs[to].match == self.log.last_index():
            self._send(Message(type=T.TIMEOUT_NOW, to=to))
        else:
            self._maybe_send_append(to)

    # ------------------------------------------------------------------ candidate / follower

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        expected = T.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else T.VOTE_RESP
        if t in (T.APP, T.HEARTBEAT, T.SNAP):
            self._become_follower(m.term, m.frm)
            self._step_follower(m)
        elif t == expected:
            result = self._poll(m.frm, not m.reject)
            if result == "won":
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self._become_leader()
                    self._bcast_append()
            elif result == "lost":
                self._become_follower(self.term, NONE)

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == T.PROP:
            if self.lead != NONE:
                self._send(Message(type=T.PROP, to=self.lead, entries=m.entries))
        elif t == T.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == T.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self.log.commit_to(m.commit)
            self._send(Message(type=T.HEARTBEAT_RESP, to=m.frm, index=m.index, context=m.context))
        elif t == T.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            assert m.snapshot is not None
            if self._restore(m.snapshot):
                self._send(Message(type=T.APP_RESP, to=m.frm, index=self.log.last_index()))
            else:
                self._send(Message(type=T.APP_RESP, to=m.frm, index=self.log.committed))
        elif t == T.TRANSFER_LEADER:
            if self.lead != NONE:
                self._send(Message(type=T.TRANSFER_LEADER, to=self.lead, frm=m.frm))
        elif t == T.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif t == T.READ_INDEX:
            if self.lead != NONE:
                self._send(Message(type=T.READ_INDEX, to=self.lead, context=m.context))
        elif t == T.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(type=T.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is not None:
            self._send(Message(type=T.APP_RESP, to=m.frm, index=last))
        else:
            hint = min(m.index, self.log.last_index())
            self._send(
                Message(type=T.APP_RESP, to=m.frm, index=m.index, reject=True, reject_hint=hint)
            )

    def _restore(self, snap: Snapshot) -> bool:
        if snap.index <= self.log.committed:
            return False
        if self.log.match_term(snap.index, snap.term):
            self.log.commit_to(snap.index)  # we already hold it: just fast-forward the commit
            return False
        self.log.restore(snap)
        self._set_conf(snap.conf_state)
        return True

    # ================================================================== replication

    def _send(self, m: Message) -> None:
        changes: dict[str, int] = {}
        if m.frm == NONE:
            changes["frm"] = self.id
        if m.term == 0 and m.type not in _TERMLESS:
            changes["term"] = self.term
        if m.type in (T.HEARTBEAT, T.HEARTBEAT_RESP):
            self._urgent += 1
        self.msgs.append(msgspec.structs.replace(m, **changes) if changes else m)

    def _append_entries(self, entries: list[Entry]) -> None:
        last = self.log.last_index()
        stamped = [
            Entry(term=self.term, index=last + i, type=e.type, data=e.data)
            for i, e in enumerate(entries, 1)
        ]
        self.log.append(stamped)
        self.prs[self.id].maybe_update(self.log.last_index())
        self._maybe_commit()

    def _append_and_broadcast(self, entries: list[Entry]) -> None:
        self._append_entries(entries)
        self._bcast_append()

    def _maybe_commit(self) -> bool:
        if not self.voters:
            return False
        matches = sorted((self.prs[v].match for v in self.voters), reverse=True)
        candidate = matches[self._quorum() - 1]
        if candidate > self.log.committed and self.log.term(candidate) == self.term:
            self.log.commit_to(candidate)
            return True
        return False

    def _bcast_append(self) -> None:
        for peer in self._peers():
            self._maybe_send_append(peer)

    def _bcast_heartbeat(self, context: bytes | None = None) -> None:
        ctx = self.readonly.last_pending_context() if context is None else context
        for peer in self._peers():
            pr = self.prs[peer]
            self._send(
                Message(
                    type=T.HEARTBEAT,
                    to=peer,
                    commit=min(pr.match, self.log.committed),
                    index=self._ticks,  # echoed back: when this round was sent (lease reads)
                    context=ctx,
                )
            )

    def _maybe_send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        prev_term = self.log.term(pr.next - 1)
        entries = self.log.entries_from(pr.next) if prev_term is not None else None
        if prev_term is None or entries is None:
            return self._send_snapshot(to, pr)
        if not entries and not send_if_empty:
            return False
        self._send(
            Message(
                type=T.APP,
                to=to,
                index=pr.next - 1,
                log_term=prev_term,
                entries=tuple(entries),
                commit=self.log.committed,
            )
        )
        pr.sent_entries(entries[-1].index if entries else 0)
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        snap = self.log.unstable_snapshot or self.log.storage.snapshot()
        if snap.index == 0:
            return False
        pr.become_snapshot(snap.index, self._ticks)
        self._send(Message(type=T.SNAP, to=to, snapshot=snap))
        return True
