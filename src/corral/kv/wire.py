"""What AP-store nodes and their clients exchange: the causal-context header, objects on the
wire, and the node-to-node RPC messages.

Theory of operation (Riak KV's HTTP API and ``X-Riak-Vclock``; Dynamo §4.4): a read returns the
object's causal context as an opaque header, ``X-Kv-Context``, the URL-safe base64 of the
msgpack-encoded version vector; the client sends it back unchanged with its next write, and the
write then supersedes exactly the siblings that read returned. A write's answer carries the
context of what the client has now seen — what it sent plus the new write's dot — never the
context of siblings it has not read, so a client cannot overwrite a value it never saw.

Objects travel without their local ``actor`` (an actor never leaves its node, see
``versions``). Messages are msgspec structs, tagged so one decoder reads any of them; every
request has exactly one reply type, listed beside it.
"""

from __future__ import annotations

import base64
import binascii

import msgspec

from corral.errors import PlatformUnavailable, UserError
from corral.kv.versions import Context, Dot, Sibling, Versioned

CONTEXT_HEADER = "X-Kv-Context"
SIBLINGS_TYPE = "application/vnd.corral.siblings+json"


class BadContext(UserError):
    code = "bad_context"


class NoQuorum(PlatformUnavailable):
    """Fewer than R (or W) replicas answered in time: the operation's outcome is unknown."""

    code = "no_quorum"


class ReplicaUnavailable(PlatformUnavailable):
    """One replica did not answer (refused, closed, timed out)."""

    code = "replica_unavailable"


class ReplicaFailed(ReplicaUnavailable):
    """A replica answered, with a failure: it is up, and the request is what it refused."""

    code = "replica_failed"


# ----------------------------------------------------------------------------- context header


_context_encoder = msgspec.msgpack.Encoder()
_context_decoder = msgspec.msgpack.Decoder(list[tuple[str, int]])


def encode_context(context: Context) -> str:
    return base64.urlsafe_b64encode(_context_encoder.encode(list(context))).decode().rstrip("=")


def decode_context(text: str | None) -> Context:
    if not text:
        return ()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        pairs = _context_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError) as exc:
        raise BadContext(
            f"the {CONTEXT_HEADER} header is not a context this store issued ({exc})",
            f"send back the {CONTEXT_HEADER} value of your last read unchanged, or none",
        ) from None
    if any(counter < 1 for _, counter in pairs):
        raise BadContext(
            f"the {CONTEXT_HEADER} header holds a counter below 1",
            f"send back the {CONTEXT_HEADER} value of your last read unchanged",
        )
    return tuple(sorted(pairs))


# ----------------------------------------------------------------------------- objects


class WireObject(msgspec.Struct, frozen=True, array_like=True):
    siblings: list[tuple[str, int, bytes | None, float]]
    context: list[tuple[str, int]]


def to_wire(obj: Versioned) -> WireObject:
    return WireObject(
        [(s.dot.actor, s.dot.counter, s.value, s.stamp) for s in obj.siblings],
        [tuple(pair) for pair in obj.context],  # type: ignore[misc]  # Context is pairs
    )


def from_wire(obj: WireObject, actor: str = "") -> Versioned:
    siblings = tuple(Sibling(Dot(a, c), v, st) for a, c, v, st in obj.siblings)
    return Versioned(
        tuple(sorted(siblings, key=lambda s: s.dot)), tuple(sorted(obj.context)), actor
    )


# ----------------------------------------------------------------------------- node RPC


class Hello(msgspec.Struct, frozen=True, array_like=True):
    """First frame of a connection: the receiver checks the cluster and that it is ``to``."""

    cluster: str
    frm: str
    to: str


class Replicate(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Store ``obj`` durably (as a hint for ``hint_for`` if set) → ``Done``."""

    key: str
    obj: WireObject
    hint_for: str | None = None


class Fetch(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Return the local copy (hints included) → ``Found``."""

    key: str


class Handoff(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A hint delivered to its owner → ``Done`` once durable."""

    key: str
    obj: WireObject


class Coordinate(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """A client write forwarded to a replica (only replicas issue dots) → ``Written``."""

    key: str
    value: bytes | None
    context: list[tuple[str, int]]
    w: int


class AeTree(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The sender's Merkle tree (heap order) over keys both nodes hold → ``AeObjects`` with the
    receiver's objects in the differing leaves (the sender then merges them and answers with
    its own through ``AeApply``)."""

    hashes: bytes  # MerkleTree.hashes()


class AeApply(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """Objects to merge (anti-entropy) → ``Done``."""

    objects: list[tuple[str, WireObject]]


Request = Replicate | Fetch | Handoff | Coordinate | AeTree | AeApply


class Done(msgspec.Struct, frozen=True, tag=True, array_like=True):
    pass


class Found(msgspec.Struct, frozen=True, tag=True, array_like=True):
    obj: WireObject


class Written(msgspec.Struct, frozen=True, tag=True, array_like=True):
    """The coordinator's copy after the write (the client has seen all of it), or an error."""

    ok: bool
    obj: WireObject
    error: str = ""


class AeObjects(msgspec.Struct, frozen=True, tag=True, array_like=True):
    leaves: list[int]
    objects: list[tuple[str, WireObject]]


class Failed(msgspec.Struct, frozen=True, tag=True, array_like=True):
    error: str


Reply = Done | Found | Written | AeObjects | Failed


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    id: int
    body: Request | Reply
