"""The Store protocol: a revisioned key-value store in the etcd v3 model.

Every control-plane component talks to every other only through a Store (and the HTTP API).
The SQLite backend is the default; Raft and etcd backends implement the same protocol and pass
the same contract suite (``tests/store/contract.py``).

Theory of operation (the etcd v3 data model):
- The store has one **revision** counter. Each successful write transaction bumps it by one;
  every key written by that transaction gets ``mod_revision`` = the new revision. A key's
  ``create_revision`` is the revision that created it (reset when it is deleted and re-created)
  and its ``version`` counts writes since creation (1 on create).
- ``txn(compares, on_success, on_failure)`` is the only way to write. All compares are evaluated
  against one consistent state; then either every op of ``on_success`` or of ``on_failure`` is
  applied atomically. A txn that writes nothing does not bump the revision.
- ``watch(prefix, start_revision)`` yields every change to keys under ``prefix`` with revision
  ``>= start_revision`` in revision order, with no gaps, then keeps following. If history
  before ``start_revision`` has been compacted it raises ``Compacted`` (the watcher re-lists).
- Leases: ``grant(ttl)`` returns a lease id; keys put with that lease vanish (one delete
  revision) when it expires or is revoked. Every lease's timer restarts at its full TTL when a
  store opens (or gains leadership), so a control plane that was down does not wake up to mass
  expiry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

CompareTarget = Literal["value", "create_revision", "mod_revision", "version", "exists"]
CompareOp = Literal["==", "!=", "<", ">"]


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class Compare:
    """A condition on one key. For a missing key: ``exists`` is False, revisions and version
    are 0 and ``value`` compares unequal to everything."""

    key: str
    target: CompareTarget
    op: CompareOp
    value: bytes | int | bool


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class DeleteRange:
    prefix: str


Op = Put | Delete | DeleteRange


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store revision after the txn (unchanged if it wrote nothing)


@dataclass(frozen=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int
    more: bool = False


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["put", "delete"]
    kv: KeyValue  # for deletes: key, mod_revision = the delete's revision, value b""
    prev: KeyValue | None = None


@dataclass(frozen=True)
class Lease:
    id: int
    ttl: float
    keys: list[str] = field(default_factory=list)


# Helpers used by every backend to evaluate compares identically.
def compare_holds(cmp: Compare, kv: KeyValue | None) -> bool:
    if cmp.target == "exists":
        actual: bytes | int | bool = kv is not None
    elif cmp.target == "value":
        if kv is None:
            return cmp.op == "!="
        actual = kv.value
    elif kv is None:
        actual = 0
    else:
        actual = getattr(kv, cmp.target)
    expected = cmp.value
    if cmp.op == "==":
        return actual == expected
    if cmp.op == "!=":
        return actual != expected
    if isinstance(actual, bool) or isinstance(expected, bool):
        return False
    if type(actual) is not type(expected) and not (
        isinstance(actual, int) and isinstance(expected, int)
    ):
        return False
    if cmp.op == "<":
        return actual < expected  # type: ignore[operator]  # same type checked above
    return actual > expected  # type: ignore[operator]  # same type checked above


def prefix_end(prefix: str) -> str:
    """The smallest key greater than every key that starts with ``prefix``."""
    return prefix + "\U0010ffff"


class Store(Protocol):
    """The one seam between control-plane components. All methods are coroutines except
    ``watch``, which returns an async iterator (it raises ``Compacted`` on first iteration when
    history before ``start_revision`` is gone)."""

    async def get(self, key: str) -> KeyValue | None: ...

    async def range(self, prefix: str, limit: int = 0) -> RangeResult: ...

    async def txn(
        self,
        compares: Sequence[Compare],
        on_success: Sequence[Op],
        on_failure: Sequence[Op] = (),
    ) -> TxnResult: ...

    def watch(self, prefix: str, start_revision: int = 0) -> AsyncIterator[WatchEvent]: ...

    async def compact(self, revision: int) -> None: ...

    async def grant(self, ttl: float) -> int: ...

    async def keepalive(self, lease_id: int) -> float: ...

    async def revoke(self, lease_id: int) -> None: ...

    async def close(self) -> None: ...


async def put(store: Store, key: str, value: bytes, lease: int = 0) -> int:
    """A one-op txn; returns the new revision."""
    return (await store.txn([], [Put(key, value, lease)])).revision


async def delete(store: Store, key: str) -> int:
    return (await store.txn([], [Delete(key)])).revision
