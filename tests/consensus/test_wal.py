"""The durable Raft log: what survives a crash, what is refused, and how often it syncs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from corral.consensus import ConfState, Entry, HardState
from corral.consensus.wal import DiskStorage
from corral.errors import StoreCorrupt


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term=term, index=i, data=b"cmd-%d" % i) for i in range(first, last + 1)]


def segment(directory: Path) -> Path:
    (only,) = sorted((directory / "wal").iterdir())
    return only


def write_batches(directory: Path, batches: int = 3) -> None:
    wal = DiskStorage.open(directory)
    for b in range(batches):
        wal.save(HardState(term=1, vote=1, commit=b * 10), entries(b * 10 + 1, b * 10 + 10))
    wal.close()


def test_term_and_vote_survive_a_restart(tmp_path: Path) -> None:
    wal = DiskStorage.open(tmp_path)
    wal.save(HardState(term=7, vote=3, commit=0), [])
    wal.save(HardState(term=8, vote=2, commit=0), [])
    wal.close()
    again = DiskStorage.open(tmp_path)
    assert again.initial_state()[0] == HardState(term=8, vote=2, commit=0)


def test_entries_and_a_conflicting_suffix_replay_as_the_leader_wrote_them(tmp_path: Path) -> None:
    wal = DiskStorage.open(tmp_path)
    wal.save(HardState(term=1, vote=1), entries(1, 5, term=1))
    # a new leader of term 2 overwrites entries 4..5 (they were never committed)
    wal.save(HardState(term=2, vote=2, commit=3), entries(4, 6, term=2))
    wal.close()
    again = DiskStorage.open(tmp_path)
    got = again.entries(1, again.last_index() + 1, 1 << 30)
    assert [(e.index, e.term) for e in got] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]


def test_a_torn_tail_is_truncated_and_the_log_keeps_working(tmp_path: Path) -> None:
    write_batches(tmp_path)
    path = segment(tmp_path)
    whole = path.read_bytes()
    # the last batch (entries 21..30, then a 13-byte hard state record) was being written
    path.write_bytes(whole[:-20])
    wal = DiskStorage.open(tmp_path)
    assert wal.last_index() == 20  # the cut batch is gone, everything before it is intact
    assert path.stat().st_size < len(whole) - 20
    wal.save(HardState(term=1, vote=1, commit=20), entries(21, 22))
    wal.close()
    assert DiskStorage.open(tmp_path).last_index() == 22


def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path: Path) -> None:
    write_batches(tmp_path)
    path = segment(tmp_path)
    with open(path, "ab") as f:
        f.write(b"\0" * 4096)
    assert DiskStorage.open(tmp_path).last_index() == 30


def test_a_corrupt_record_in_the_middle_refuses_to_start(tmp_path: Path) -> None:
    write_batches(tmp_path)
    path = segment(tmp_path)
    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # inside the first batch's entries record
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt) as caught:
        DiskStorage.open(tmp_path)
    assert str(path) in caught.value.message and "offset 0" in caught.value.message
    assert "CRC" in caught.value.message
    assert "rejoin" in caught.value.hint
    assert path.read_bytes() == bytes(data)  # left as it was for a human to look at


def test_one_fdatasync_for_a_whole_batch_of_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counting)
    wal = DiskStorage.open(tmp_path)
    wal.save(HardState(term=1, vote=1, commit=0), entries(1, 500))
    assert len(calls) == 1
    wal.stage(HardState(term=1, vote=1, commit=500), [], None)
    wal.sync(durable=False)  # a commit-index-only change needs no sync
    assert len(calls) == 1
    wal.close()


def test_a_checkpoint_compacts_the_log_and_replays_to_the_same_state(tmp_path: Path) -> None:
    wal = DiskStorage.open(tmp_path, segment_bytes=512)  # several segments
    for b in range(10):
        wal.save(HardState(term=1, vote=1, commit=b * 10 + 10), entries(b * 10 + 1, b * 10 + 10))
    assert len(list((tmp_path / "wal").iterdir())) > 1
    conf = ConfState(voters=(1, 2, 3))
    wal.checkpoint(80, conf, b"state machine image at 80", keep=5)
    assert wal.first_index() == 76
    wal.close()
    assert len(list((tmp_path / "wal").iterdir())) == 1
    again = DiskStorage.open(tmp_path)
    snap = again.snapshot()
    assert (snap.index, snap.term, snap.data, snap.conf_state) == (
        80,
        1,
        b"state machine image at 80",
        conf,
    )
    assert again.initial_state() == (HardState(term=1, vote=1, commit=100), conf)
    assert [e.index for e in again.entries(81, 101, 1 << 30)] == list(range(81, 101))


def test_a_missing_snapshot_file_refuses_to_start(tmp_path: Path) -> None:
    wal = DiskStorage.open(tmp_path)
    wal.save(HardState(term=1, vote=1, commit=10), entries(1, 10))
    wal.checkpoint(10, ConfState(voters=(1,)), b"image", keep=0)
    wal.close()
    for snap in (tmp_path / "snap").iterdir():
        snap.unlink()
    with pytest.raises(StoreCorrupt, match="missing"):
        DiskStorage.open(tmp_path)
