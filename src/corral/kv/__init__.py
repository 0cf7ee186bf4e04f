"""A Dynamo-style AP store for apps: consistent hashing (``ring``), causality (``versions``:
dotted version vectors, LWW, Lamport clocks), Merkle anti-entropy (``merkle``) and quorum
coordination with sloppy quorums, hinted handoff and read repair (``coordinator``). All of these
are pure cores; the HTTP service and storage engine drive them.
"""

from corral.kv.coordinator import (
    AURORA,
    Conflicts,
    GetRequest,
    HintStore,
    InvalidQuorum,
    PutRequest,
    Quorum,
    Target,
    new_version,
    sloppy_targets,
)
from corral.kv.merkle import MerkleError, MerkleTree, diff, leaves_for
from corral.kv.ring import Ring, RingError, key_hash
from corral.kv.versions import (
    EMPTY,
    Context,
    Dot,
    LamportClock,
    Sibling,
    Versioned,
    context_of,
    merge,
    write,
)

__all__ = [
    "AURORA",
    "EMPTY",
    "Conflicts",
    "Context",
    "Dot",
    "GetRequest",
    "HintStore",
    "InvalidQuorum",
    "LamportClock",
    "MerkleError",
    "MerkleTree",
    "PutRequest",
    "Quorum",
    "Ring",
    "RingError",
    "Sibling",
    "Target",
    "Versioned",
    "context_of",
    "diff",
    "key_hash",
    "leaves_for",
    "merge",
    "new_version",
    "sloppy_targets",
    "write",
]
