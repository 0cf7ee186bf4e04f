"""Timing and flow-control settings of a Raft node, as named presets plus a validator.

Theory of operation (Raft paper §5.2 and §9.3 on timing; hashicorp/raft's named configs): the
core counts time only in *ticks*; ``tick_seconds`` says how often the driver calls ``tick()``
and is the only place seconds appear. Election timeouts are drawn uniformly from
``[election_ticks, 2 * election_ticks)`` for each term (§5.2), and must be well above the
heartbeat interval so a loaded leader is not deposed (broadcastTime ≪ electionTimeout, §5.6).

Lease reads (``lease_reads``) answer ReadIndex without a heartbeat round. They rely on
check-quorum: followers refuse votes for ``election_ticks`` after hearing from the leader, and
the leader steps down after ``election_ticks`` without a quorum. That is safe only while no
clock runs faster than another by more than ``max_clock_drift`` (a fraction): the leader uses
a lease of ``election_ticks * (1 - max_clock_drift)`` ticks, counted from the *send* time of
the heartbeat round a quorum acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from corral.errors import UserError


class InvalidRaftConfig(UserError):
    code = "invalid_raft_config"


@dataclass(frozen=True)
class Config:
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    tick_seconds: float = 0.05
    max_size_per_msg: int = 1 << 20  # bytes of entries in one MsgApp (at least one entry)
    max_inflight_msgs: int = 256  # unacknowledged MsgApps per follower in REPLICATE
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = False
    max_clock_drift: float = 0.2
    max_learner_lag: int = 16  # entries behind the commit index a learner may be when promoted

    def validate(self) -> Config:
        problems: list[str] = []
        if self.heartbeat_ticks < 1:
            problems.append(f"heartbeat_ticks must be >= 1, got {self.heartbeat_ticks}")
        if self.election_ticks < 2 * self.heartbeat_ticks + 1:
            problems.append(
                f"election_ticks ({self.election_ticks}) must exceed twice heartbeat_ticks "
                f"({self.heartbeat_ticks}) so one lost heartbeat does not start an election"
            )
        if self.tick_seconds <= 0:
            problems.append(f"tick_seconds must be > 0, got {self.tick_seconds}")
        if self.max_size_per_msg < 1:
            problems.append(f"max_size_per_msg must be >= 1, got {self.max_size_per_msg}")
        if self.max_inflight_msgs < 1:
            problems.append(f"max_inflight_msgs must be >= 1, got {self.max_inflight_msgs}")
        if self.lease_reads and not self.check_quorum:
            problems.append("lease_reads needs check_quorum (the lease is check-quorum's bound)")
        if not 0 <= self.max_clock_drift < 0.5:
            problems.append(f"max_clock_drift must be in [0, 0.5), got {self.max_clock_drift}")
        if self.max_learner_lag < 0:
            problems.append(f"max_learner_lag must be >= 0, got {self.max_learner_lag}")
        if problems:
            raise InvalidRaftConfig(
                "raft config: " + "; ".join(problems),
                "start from a preset (DEFAULT, FAST) and change one field at a time",
            )
        return self

    @property
    def election_timeout_seconds(self) -> tuple[float, float]:
        return self.election_ticks * self.tick_seconds, 2 * self.election_ticks * self.tick_seconds

    @property
    def lease_ticks(self) -> int:
        return int(self.election_ticks * (1 - self.max_clock_drift))

    def with_(self, **changes: object) -> Config:
        return replace(self, **changes).validate()  # type: ignore[arg-type]  # dataclass fields


# 0.5 to 1.0 s election timeouts, 100 ms heartbeats: etcd's 1 s class (etcd draws 1 to 2 s), so
# a leader's death is noticed in ≈ 0.75 s on median while 5 heartbeats fit in the shortest
# timeout — a loaded 2-core machine must miss all of them to cause a needless election.
DEFAULT = Config(election_ticks=10, heartbeat_ticks=2, tick_seconds=0.05)
# 150 to 300 ms election timeouts (the paper's Fig. 16 range), 30 ms heartbeats.
FAST = Config(election_ticks=10, heartbeat_ticks=2, tick_seconds=0.015)
PRESETS = {"default": DEFAULT, "fast": FAST}
