"""Stores: the Store protocol and its backends (SQLite default)."""

from corral.store.base import (
    Compare,
    Delete,
    DeleteRange,
    KeyValue,
    Op,
    Put,
    RangeResult,
    Store,
    TxnResult,
    WatchEvent,
)

__all__ = [
    "Compare",
    "Delete",
    "DeleteRange",
    "KeyValue",
    "Op",
    "Put",
    "RangeResult",
    "Store",
    "TxnResult",
    "WatchEvent",
]
