"""The durable Raft log of one node: segment files of CRC-checked records, plus snapshot files.

Theory of operation (etcd's ``wal`` and ``snap`` packages; Raft paper Fig. 2 "persistent
state" and §7). ``DiskStorage`` is ``MemoryStorage`` (the core's read side, kept in memory)
with a disk underneath. The driver hands it each ``Ready`` in two steps: ``stage`` (on the
event loop: updates the in-memory log at once, as the core expects, and encodes records) and
``sync`` (writes every staged record with one ``write`` and one ``os.fdatasync`` — group
commit: all the entries and the hard state of a Ready, however many proposals they batch, cost
one sync). ``sync`` may run in a worker thread; nothing else touches the files meanwhile.

Layout under ``directory``: ``wal/<seq>.wal`` segments and ``snap/<index>.snap`` snapshots.
A record is ``[u32 length][u32 crc32][u8 kind][msgpack payload]`` (length counts kind and
payload; the CRC covers them). Kinds: entries, hard state, snapshot (index, term and
configuration only; the state-machine image lives in its ``.snap`` file, written and fsynced
before the record that names it).

Replay on open applies the records of every segment in order to a ``MemoryStorage``. What a
crash can leave behind is only the unsynced tail of the last segment, so there:
- a record cut short (header or payload running past the end), or a bad record followed by
  nothing but zeros, is a **torn tail**: the file is truncated to the last good record;
- a record that fails its CRC with more data after it is **corruption in the middle**:
  ``StoreCorrupt`` with the path and offset, and the node refuses to start (truncating there
  could drop entries a majority acknowledged).
Any bad record in an earlier segment is corruption too.

``checkpoint`` records a snapshot at an applied index and compacts: it writes the snapshot
file, then a new segment that starts with the snapshot record followed by the entries after
it and the hard state, then deletes the older segments and snapshot files. A crash in between
leaves both, and replaying both gives the same log. The driver's checkpoints carry no image
(the state machine is made durable instead); ``snapshot()`` makes one when a follower needs it.

Invariant: a record is acknowledged to the driver (``sync`` returns) only after fdatasync;
term and vote therefore never go back across a restart, and an entry this node acknowledged
to a leader is on its disk.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import msgspec

from corral.consensus.messages import ConfState, Entry, HardState, Snapshot
from corral.consensus.storage import MemoryStorage, RaftStorageError
from corral.errors import StoreCorrupt

_HEADER = struct.Struct(">IIB")  # length (kind + payload), crc32 (kind + payload), kind
_ENTRIES, _HARD_STATE, _SNAPSHOT = 1, 2, 3
_KINDS = (_ENTRIES, _HARD_STATE, _SNAPSHOT)
SEGMENT_BYTES = 64 << 20
_MAX_RECORD = 1 << 30
_HINT = (
    "this node's Raft log cannot be trusted: move its data directory aside and let the node "
    "rejoin empty (the leader sends it a snapshot), or restore a backup"
)


class _SnapMeta(msgspec.Struct, frozen=True, array_like=True):
    index: int
    term: int
    conf_state: ConfState


_encode = msgspec.msgpack.Encoder().encode
_entries_decoder = msgspec.msgpack.Decoder(tuple[Entry, ...])
_hard_decoder = msgspec.msgpack.Decoder(HardState)
_meta_decoder = msgspec.msgpack.Decoder(_SnapMeta)
_snapshot_decoder = msgspec.msgpack.Decoder(Snapshot)


def _record(kind: int, payload: bytes) -> bytes:
    body = bytes([kind]) + payload
    return struct.pack(">II", len(body), zlib.crc32(body)) + body


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class DiskStorage(MemoryStorage):
    """``MemoryStorage`` made durable. Open with ``DiskStorage.open(directory)``."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        super().__init__()
        self.directory = directory
        self.segment_bytes = segment_bytes
        self._wal_dir = directory / "wal"
        self._snap_dir = directory / "snap"
        self._fd = -1
        self._segment_seq = 0
        self._segment_size = 0
        self._staged: list[bytes] = []
        self._staged_snaps: list[Snapshot] = []
        self.syncs = 0  # fdatasync calls on the log, for tests and figures
        # Makes the state-machine image a snapshot sent to a follower carries (see snapshot()).
        self.image: Callable[[], bytes] | None = None

    # ------------------------------------------------------------------ open / replay

    @classmethod
    def open(cls, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> DiskStorage:
        """Replay the log in ``directory`` (created if absent); ``StoreCorrupt`` if damaged."""
        storage = cls(Path(directory), segment_bytes)
        storage._wal_dir.mkdir(parents=True, exist_ok=True)
        storage._snap_dir.mkdir(parents=True, exist_ok=True)
        segments = storage._segments()
        snap_meta: _SnapMeta | None = None
        for n, path in enumerate(segments):
            last = n == len(segments) - 1
            for kind, payload, offset in storage._read_segment(path, last):
                try:
                    if kind == _ENTRIES:
                        storage.append(_entries_decoder.decode(payload))
                    elif kind == _HARD_STATE:
                        storage.set_hard_state(_hard_decoder.decode(payload))
                    else:
                        snap_meta = _meta_decoder.decode(payload)
                        storage.apply_snapshot(
                            Snapshot(snap_meta.index, snap_meta.term, snap_meta.conf_state)
                        )
                except (msgspec.DecodeError, RaftStorageError) as exc:
                    raise StoreCorrupt(
                        f"raft log {path} is damaged at offset {offset}: {exc}", _HINT
                    ) from exc
        if snap_meta is not None:
            storage._snapshot = storage._load_snapshot(snap_meta)
        if segments:
            storage._open_segment(segments[-1], create=False)
        else:
            storage._open_segment(storage._wal_dir / f"{0:016x}.wal", create=True)
        return storage

    def _segments(self) -> list[Path]:
        return sorted(p for p in self._wal_dir.iterdir() if p.suffix == ".wal")

    def _read_segment(self, path: Path, last: bool) -> list[tuple[int, bytes, int]]:
        data = path.read_bytes()
        records: list[tuple[int, bytes, int]] = []
        offset = 0
        while offset < len(data):
            problem = ""
            if len(data) - offset < _HEADER.size:
                problem = "a record header is cut short"
                torn = True
            else:
                length, crc, kind = _HEADER.unpack_from(data, offset)
                end = offset + 8 + length
                if length == 0 and crc == 0 and not any(data[offset:]):
                    problem, torn = "zeros where a record should start", True
                elif length == 0 or length > _MAX_RECORD:
                    problem, torn = f"impossible record length {length}", False
                elif end > len(data):
                    problem, torn = f"a {length}-byte record runs past the end", True
                elif zlib.crc32(data[offset + 8 : end]) != crc:
                    problem = "a record fails its CRC check"
                    torn = not any(data[end:])
                elif kind not in _KINDS:
                    problem, torn = f"unknown record kind {kind}", False
                else:
                    records.append((kind, data[offset + 9 : end], offset))
                    offset = end
                    continue
            if last and torn:
                # A crash cut the unsynced tail: nothing after it was ever acknowledged.
                with open(path, "r+b") as f:
                    f.truncate(offset)
                    os.fsync(f.fileno())
                return records
            where = "" if last else " (not the last segment, so no crash could cause it)"
            raise StoreCorrupt(
                f"raft log {path} is damaged at offset {offset}: {problem}{where}", _HINT
            )
        return records

    def _snap_path(self, index: int) -> Path:
        return self._snap_dir / f"{index:016x}.snap"

    def _load_snapshot(self, meta: _SnapMeta) -> Snapshot:
        path = self._snap_path(meta.index)
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise StoreCorrupt(f"raft snapshot {path} named by the log is missing", _HINT) from exc
        if len(raw) < 4 or zlib.crc32(raw[4:]) != int.from_bytes(raw[:4], "big"):
            raise StoreCorrupt(f"raft snapshot {path} fails its CRC check", _HINT)
        snap = _snapshot_decoder.decode(raw[4:])
        if (snap.index, snap.term) != (meta.index, meta.term):
            raise StoreCorrupt(
                f"raft snapshot {path} is at {snap.term}/{snap.index}, the log names "
                f"{meta.term}/{meta.index}",
                _HINT,
            )
        return snap

    def _open_segment(self, path: Path, create: bool) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._segment_seq = int(path.stem, 16)
        self._segment_size = os.fstat(self._fd).st_size
        if create:
            _fsync_dir(self._wal_dir)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def snapshot(self) -> Snapshot:
        """The latest snapshot, for the core to send. A local checkpoint records no image
        (writing one would stall the node for a large store); its image is made here, when a
        follower needs it, from the state machine as it is now — possibly past the snapshot's
        index, which is harmless: the follower skips entries its state machine already has."""
        snap = self._snapshot
        if snap.data or self.image is None or snap.index == 0:
            return snap
        return msgspec.structs.replace(snap, data=self.image())

    def stored_snapshot(self) -> Snapshot:
        """The latest snapshot as recorded (no image is made)."""
        return self._snapshot

    # ------------------------------------------------------------------ writing

    def stage(
        self,
        hard_state: HardState | None,
        entries: tuple[Entry, ...] | list[Entry],
        snapshot: Snapshot | None,
    ) -> None:
        """Take one Ready's state into the in-memory log and queue its records for ``sync``.
        Order as the contract says: snapshot, entries (truncating a conflict), hard state."""
        if snapshot is not None:
            self.apply_snapshot(snapshot)
            self._staged_snaps.append(snapshot)
            meta = _SnapMeta(snapshot.index, snapshot.term, snapshot.conf_state)
            self._staged.append(_record(_SNAPSHOT, _encode(meta)))
        if entries:
            self.append(entries)
            self._staged.append(_record(_ENTRIES, _encode(tuple(entries))))
        if hard_state is not None:
            self.set_hard_state(hard_state)
            self._staged.append(_record(_HARD_STATE, _encode(hard_state)))

    def sync(self, durable: bool = True) -> None:
        """Write every staged record in one write; fdatasync once when ``durable``."""
        for snap in self._staged_snaps:
            self._write_snapshot_file(snap)
        self._staged_snaps = []
        if not self._staged:
            return
        data = b"".join(self._staged)
        self._staged = []
        _write_all(self._fd, data)
        self._segment_size += len(data)
        if durable:
            os.fdatasync(self._fd)
            self.syncs += 1
        # Only a durable sync rolls the segment: the driver runs those off the event loop,
        # while a commit-only write happens on it and must not wait for the disk.
        if durable and self._segment_size >= self.segment_bytes:
            self._open_segment(self._wal_dir / f"{self._segment_seq + 1:016x}.wal", create=True)

    def save(
        self,
        hard_state: HardState | None,
        entries: tuple[Entry, ...] | list[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        self.stage(hard_state, entries, snapshot)
        self.sync()

    def _write_snapshot_file(self, snap: Snapshot) -> None:
        path = self._snap_path(snap.index)
        tmp = path.with_suffix(".tmp")
        body = _encode(snap)
        with open(tmp, "wb") as f:
            f.write(zlib.crc32(body).to_bytes(4, "big") + body)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
        _fsync_dir(self._snap_dir)

    def checkpoint(self, index: int, conf_state: ConfState, data: bytes, keep: int) -> Snapshot:
        """Snapshot the state machine image ``data`` taken at applied ``index``, keep at most
        ``keep`` entries before it in memory, and rewrite the log as one short segment."""
        snap, image = self.prepare_checkpoint(index, conf_state, data, keep)
        self.write_checkpoint(snap, image)
        return snap

    def prepare_checkpoint(
        self, index: int, conf_state: ConfState, data: bytes, keep: int
    ) -> tuple[Snapshot, bytes]:
        """The in-memory half of ``checkpoint`` (on the loop, with the core's reads): record
        the snapshot, compact, and encode the new segment's records."""
        snap = self.create_snapshot(index, conf_state, data)
        self.compact(max(self.first_index() - 1, index - keep))
        image = [_record(_SNAPSHOT, _encode(_SnapMeta(snap.index, snap.term, conf_state)))]
        if self.last_index() > snap.index:
            tail = self.entries(snap.index + 1, self.last_index() + 1, 1 << 62)
            image.append(_record(_ENTRIES, _encode(tuple(tail))))
        image.append(_record(_HARD_STATE, _encode(self.hard_state)))
        return snap, b"".join(image)

    def write_checkpoint(self, snap: Snapshot, image: bytes) -> None:
        """The disk half (may run in a worker thread, never beside ``sync``): the snapshot
        file, then the new segment, then the old segments and snapshot files go."""
        self._write_snapshot_file(snap)
        old = self._segments()
        path = self._wal_dir / f"{self._segment_seq + 1:016x}.wal"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _write_all(fd, image)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._open_segment(path, create=True)
        for segment in old:
            segment.unlink(missing_ok=True)
        for other in self._snap_dir.iterdir():
            if other.suffix == ".snap" and other != self._snap_path(snap.index):
                other.unlink(missing_ok=True)
