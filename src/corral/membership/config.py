"""Timing and dissemination settings of a SWIM member, as named presets plus a validator.

Theory of operation (hashicorp/memberlist's ``DefaultLANConfig``/``DefaultLocalConfig``; SWIM,
Das et al. 2002; Lifeguard, Dadgar et al. 2018): every duration is in seconds and every count is
per protocol period. ``probe_interval`` is the protocol period; a probe that has no ack after
``probe_timeout`` goes indirect through ``indirect_checks`` members, and fails at the end of the
period. A failed probe makes the target *suspect*; the suspicion times out after between
``suspicion_mult · max(1, log10 n) · probe_interval`` (with ``suspicion_mult - 2`` independent
confirmations) and ``suspicion_max_timeout_mult`` times that (with none). Local health
(Lifeguard's LHA) multiplies the probe interval and timeout by up to ``awareness_max_multiplier``.
Updates are piggybacked on every probe and sent to ``gossip_nodes`` members each
``gossip_interval``, each retransmitted ``retransmit_mult · ceil(log10(n + 1))`` times. Every
``push_pull_interval`` a member swaps its whole view with one other (0 turns it off), and every
``reconnect_interval`` it tries one member it believes dead (Serf's reconnect), which is how two
halves of a healed partition find each other again. ``overdue_grace`` (a share of the period; 0
turns the check off) is how late a member's round-robin ping to us may be before we probe it out
of turn (see ``swim``: an addition to memberlist that bounds the wait for a dead member's first
probe).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from corral.errors import UserError


class InvalidMembershipConfig(UserError):
    code = "invalid_membership_config"


@dataclass(frozen=True)
class Config:
    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_checks: int = 3
    suspicion_mult: int = 4
    suspicion_max_timeout_mult: int = 6
    retransmit_mult: int = 4
    gossip_nodes: int = 3
    gossip_interval: float = 0.2
    gossip_to_the_dead: float = 30.0
    push_pull_interval: float = 30.0
    reconnect_interval: float = 10.0
    awareness_max_multiplier: int = 8
    max_piggyback: int = 16  # updates per packet: what fits a 1400-byte UDP datagram
    nack_fraction: float = 0.8  # a relay nacks after this share of the probe timeout
    overdue_grace: float = 0.25  # share of a period a round-robin ping may be late; 0: off

    def validate(self) -> Config:
        problems: list[str] = []
        positive = ("probe_interval", "probe_timeout", "gossip_interval", "reconnect_interval")
        for name in positive:
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.probe_timeout >= self.probe_interval:
            problems.append(
                f"probe_timeout ({self.probe_timeout}) must be below probe_interval "
                f"({self.probe_interval}): indirect probes need the rest of the period"
            )
        at_least_one = (
            "suspicion_mult",
            "suspicion_max_timeout_mult",
            "retransmit_mult",
            "gossip_nodes",
            "awareness_max_multiplier",
            "max_piggyback",
        )
        for name in at_least_one:
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.indirect_checks < 0:
            problems.append(f"indirect_checks must be >= 0, got {self.indirect_checks}")
        if self.push_pull_interval < 0:
            problems.append(f"push_pull_interval must be >= 0, got {self.push_pull_interval}")
        if self.gossip_to_the_dead < 0:
            problems.append(f"gossip_to_the_dead must be >= 0, got {self.gossip_to_the_dead}")
        if self.overdue_grace < 0:
            problems.append(
                f"overdue_grace must be >= 0 (0 turns it off), got {self.overdue_grace}"
            )
        if not 0 < self.nack_fraction < 1:
            problems.append(f"nack_fraction must be in (0, 1), got {self.nack_fraction}")
        if problems:
            raise InvalidMembershipConfig(
                "membership config: " + "; ".join(problems),
                "start from a preset (LAN, LOCAL, TEST) and change one field at a time",
            )
        return self

    def with_(self, **changes: object) -> Config:
        return replace(self, **changes).validate()  # type: ignore[arg-type]  # dataclass fields


# memberlist's DefaultLANConfig: probe 1 s, timeout 500 ms, 3 indirect checks, suspicion
# multiplier 4 (max 6×), gossip to 3 nodes every 200 ms, push-pull every 30 s.
LAN = Config().validate()
# memberlist's DefaultLocalConfig: one machine or a quiet LAN, so shorter timeouts and fewer
# retransmits.
LOCAL = Config(
    probe_timeout=0.2,
    indirect_checks=1,
    retransmit_mult=2,
    suspicion_mult=3,
    push_pull_interval=15.0,
    gossip_interval=0.1,
    gossip_to_the_dead=15.0,
).validate()
# Tests on real processes: everything 5× faster than LAN, so a death is seen in about a second.
TEST = Config(
    probe_interval=0.2,
    probe_timeout=0.1,
    gossip_interval=0.04,
    gossip_to_the_dead=6.0,
    push_pull_interval=6.0,
    reconnect_interval=2.0,
).validate()
PRESETS = {"lan": LAN, "local": LOCAL, "test": TEST}
