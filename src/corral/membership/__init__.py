"""Gossip membership: who is in the cluster, who is alive, and what each member says about
itself (address, role, tags). The pure core is ``swim.Swim`` (SWIM + Lifeguard, in the shape of
hashicorp/memberlist); ``config`` holds the timing presets. A driver (sockets, timers) feeds it
packets and ``now`` and sends what it returns.
"""

from corral.membership.config import LAN, LOCAL, PRESETS, TEST, Config, InvalidMembershipConfig
from corral.membership.swim import (
    Ack,
    Alive,
    Dead,
    Gossip,
    IndirectPing,
    Member,
    MemberEvent,
    MembershipUsageError,
    MemberState,
    Message,
    Nack,
    Ping,
    PushPull,
    Send,
    State,
    Suspect,
    Swim,
    Update,
    retransmit_limit,
    suspicion_timeout,
)

__all__ = [
    "LAN",
    "LOCAL",
    "PRESETS",
    "TEST",
    "Ack",
    "Alive",
    "Config",
    "Dead",
    "Gossip",
    "IndirectPing",
    "InvalidMembershipConfig",
    "Member",
    "MemberEvent",
    "MemberState",
    "MembershipUsageError",
    "Message",
    "Nack",
    "Ping",
    "PushPull",
    "Send",
    "State",
    "Suspect",
    "Swim",
    "Update",
    "retransmit_limit",
    "suspicion_timeout",
]
