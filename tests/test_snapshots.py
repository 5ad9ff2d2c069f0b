"""Snapshot store: atomic files, sealing, claim budget, quota eviction, retention."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.errors import StorageFullError
from edge.outbox import Outbox
from edge.snapshots import SnapshotStore


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "outbox.db", "node-test")
    yield ob
    ob.close()


def _evictions(ob: Outbox) -> list[dict[str, object]]:
    return [e.payload for e in reversed(ob.list(limit=1000)) if e.type == "EVICTION"]


def test_add_read_claim_ack_release(outbox: Outbox, tmp_path: Path) -> None:
    store = SnapshotStore(outbox, tmp_path / "snaps", quota_bytes=10_000_000,
                          retention_seconds=3600)
    a = store.add(b"A" * 100, event_id="ev-a", priority=4, taken_at=time.time() - 10)
    b = store.add(b"B" * 100, event_id="ev-b", priority=1)
    c = store.add(b"C" * 100, event_id=None, priority=4)
    assert a.path.read_bytes() == b"A" * 100 and store.read(a) == b"A" * 100
    assert not a.sealed and a.status == "ready"
    assert not list((tmp_path / "snaps").glob("*.tmp"))
    # budget 150 bytes: at least one, in priority then age order
    first = store.claim(150)
    assert [s.snapshot_id for s in first] == [b.snapshot_id]
    assert first[0].status == "in_flight"
    rest = store.claim(1_000)
    assert [s.snapshot_id for s in rest] == [a.snapshot_id, c.snapshot_id]
    assert store.claim(1_000) == []
    # a budget smaller than one snapshot still yields one
    assert store.release([a.snapshot_id]) == 1
    assert [s.snapshot_id for s in store.claim(1)] == [a.snapshot_id]
    assert store.ack([b.snapshot_id, "nope"]) == 1
    assert store.ack([b.snapshot_id]) == 0
    assert store.release() == 2
    counts = store.counts()
    assert (counts["ready"], counts["in_flight"], counts["acked"]) == (2, 0, 1)
    assert counts["bytes"] == 300


def test_sealer_applied_to_bytes_on_disk(outbox: Outbox, tmp_path: Path) -> None:
    store = SnapshotStore(outbox, tmp_path / "snaps", quota_bytes=10_000, retention_seconds=60,
                          sealer=lambda data: b"SEALED:" + data[::-1])
    snap = store.add(b"jpeg-bytes", event_id=None, priority=2)
    assert snap.sealed
    assert snap.path.read_bytes() == b"SEALED:setyb-gepj"
    assert b"jpeg-bytes" not in b"".join(p.read_bytes() for p in store.files())
    assert snap.size == len(b"SEALED:setyb-gepj")


def test_quota_evicts_acked_then_low_priority_oldest(outbox: Outbox, tmp_path: Path) -> None:
    store = SnapshotStore(outbox, tmp_path / "snaps", quota_bytes=3_000, retention_seconds=3600)
    t = time.time()
    p1_old = store.add(b"1" * 1000, event_id=None, priority=1, taken_at=t - 50)
    p4_new = store.add(b"4" * 1000, event_id=None, priority=4, taken_at=t - 10)
    p4_old = store.add(b"4" * 1000, event_id=None, priority=4, taken_at=t - 40)
    store.ack([p1_old.snapshot_id])  # uploaded: goes first despite P1
    store.add(b"x" * 1000, event_id=None, priority=2, taken_at=t)
    assert store.get(p1_old.snapshot_id) is None and not p1_old.path.exists()
    store.add(b"y" * 1000, event_id=None, priority=2, taken_at=t)
    assert store.get(p4_old.snapshot_id) is None and not p4_old.path.exists()
    assert store.get(p4_new.snapshot_id) is not None
    assert store.counts()["bytes"] <= 3_000
    assert len(store.files()) == 3
    ev = _evictions(outbox)
    assert [e["reason"] for e in ev] == ["snapshot_quota", "snapshot_quota"]
    assert ev[0]["snapshot_ids"] == [p1_old.snapshot_id] and ev[0]["bytes"] == 1000
    with pytest.raises(StorageFullError):
        store.add(b"z" * 3_001, event_id=None, priority=1)


def test_retention_purge_records_event(outbox: Outbox, tmp_path: Path) -> None:
    store = SnapshotStore(outbox, tmp_path / "snaps", quota_bytes=100_000,
                          retention_seconds=3600)
    now = time.time()
    old = store.add(b"old", event_id=None, priority=1, taken_at=now - 7200)
    new = store.add(b"new", event_id=None, priority=4, taken_at=now - 60)
    assert store.purge_expired(now) == 1
    assert store.get(old.snapshot_id) is None and not old.path.exists()
    assert store.get(new.snapshot_id) is not None
    assert store.purge_expired(now) == 0
    ev = _evictions(outbox)
    assert len(ev) == 1 and ev[0]["reason"] == "retention" and ev[0]["count"] == 1


def test_reconcile_removes_orphans_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, "node-test")
    store = SnapshotStore(ob, tmp_path / "snaps", quota_bytes=100_000, retention_seconds=3600)
    keep = store.add(b"keep", event_id=None, priority=2)
    lost = store.add(b"lost", event_id=None, priority=2)
    store.claim(10)
    ob.close()
    lost.path.unlink()
    (tmp_path / "snaps" / "crashed.snap.tmp").write_bytes(b"half")
    (tmp_path / "snaps" / "orphan.snap").write_bytes(b"no row")
    ob = Outbox(path, "node-test")
    try:
        store = SnapshotStore(ob, tmp_path / "snaps", quota_bytes=100_000,
                              retention_seconds=3600)
        assert store.files() == [keep.path]
        assert store.get(lost.snapshot_id) is None
        assert store.counts()["ready"] == 1  # in_flight reset on reopen
    finally:
        ob.close()
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 1
