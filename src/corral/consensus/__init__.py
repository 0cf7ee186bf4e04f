"""Raft consensus, pure core first (``RaftNode``), in the shape of etcd-io/raft.

The driver contract, written once. Call ``tick()`` every ``config.tick_seconds``, ``step(m)``
for every message received, ``propose``/``read_index`` for clients. Whenever ``has_ready()``:

1. ``rd = node.ready()``
2. persist ``rd.snapshot``, ``rd.entries`` (truncating any conflicting suffix), then
   ``rd.hard_state`` — durably (fsync) when ``rd.must_sync``;
3. send ``rd.messages`` — votes and append acks never before step 2: they promise that what
   step 2 wrote is durable. A leader may send its *appends* to followers before its own fsync
   (Raft thesis §10.2.1, as etcd does): nothing is acknowledged to a client until a later
   Ready, processed only after this one is on disk (see ``consensus.node``);
4. restore ``rd.snapshot`` into the state machine, apply ``rd.committed_entries`` in order
   (conf-change entries through ``node.apply_conf_change``), serve reads whose
   ``rd.read_states`` index is now applied;
5. ``node.advance(rd)``. One Ready at a time: ``has_ready()`` is False until ``advance``.

A proposal is acknowledged to a client only when its entry is applied (so it is durable on a
majority). Modules: ``messages`` (types), ``storage`` (stable log seam + MemoryStorage),
``log`` (log with unstable tail), ``progress`` (flow control), ``readonly`` (ReadIndex),
``config`` (presets), ``core`` (the node).
"""

from corral.consensus.config import DEFAULT, FAST, PRESETS, Config, InvalidRaftConfig
from corral.consensus.core import ProposalDropped, RaftNode, RaftUsageError, Role, Status
from corral.consensus.log import RaftSafetyError
from corral.consensus.messages import (
    NONE,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Snapshot,
    SoftState,
)
from corral.consensus.storage import MemoryStorage, RaftStorageError, Storage

__all__ = [
    "DEFAULT",
    "FAST",
    "NONE",
    "PRESETS",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Config",
    "Entry",
    "EntryType",
    "HardState",
    "InvalidRaftConfig",
    "MemoryStorage",
    "Message",
    "MessageType",
    "ProposalDropped",
    "RaftNode",
    "RaftSafetyError",
    "RaftStorageError",
    "RaftUsageError",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SoftState",
    "Status",
    "Storage",
]
