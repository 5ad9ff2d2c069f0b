"""Storage faults: corrupt database quarantined, disk full and quota pressure evict in order."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest

from edge.config import StorageConfig
from edge.errors import StorageFullError
from edge.outbox import EventDraft, Outbox, StorageQuota
from edge.outbox.shortfall import QuotaShort
from edge.snapshots import SnapshotStore

BIG = StorageQuota(disk_quota_bytes=1 << 40, snapshot_quota_bytes=1 << 40, min_free_bytes=0)


def _set_max_pages(ob: Outbox, pages: int) -> None:
    """Cap the DB size: SQLite then answers SQLITE_FULL exactly like a full disk."""
    with ob.db.lock:
        ob.db.conn.execute(f"PRAGMA max_page_count={pages}").fetchall()


def _page_count(ob: Outbox) -> int:
    with ob.db.lock:
        return int(ob.db.conn.execute("PRAGMA page_count").fetchone()[0])


def _evictions(ob: Outbox) -> list[dict[str, object]]:
    return [e.payload for e in reversed(ob.list(limit=100_000)) if e.type == "EVICTION"]


def _by_priority(ob: Outbox) -> dict[int, int]:
    with ob.db.lock:
        rows = ob.db.conn.execute("SELECT priority, COUNT(*) FROM events"
                                " WHERE type!='EVICTION' GROUP BY priority").fetchall()
    return dict(rows)


@pytest.mark.parametrize("garbage", [b"this is not a database at all" * 100,
                                     b"SQLite format 3\x00" + b"\xff" * 8000])
def test_corrupt_db_quarantined_and_fresh_db_works(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(garbage)
    (tmp_path / "outbox.db-wal").write_bytes(b"junk wal")
    ob = Outbox(path, "node-test")
    try:
        assert ob.quarantined is not None and ob.quarantined.exists()
        assert ob.quarantined.name.startswith("outbox.db.corrupt-")
        assert ob.quarantined.read_bytes() == garbage
        assert Path(str(ob.quarantined) + "-wal").read_bytes() == b"junk wal"
        events = ob.list()
        assert [e.type for e in events] == ["STORAGE_QUARANTINED"]
        assert events[0].priority == 3 and events[0].payload["moved_to"] == str(ob.quarantined)
        ev = ob.record(EventDraft("PANIC", 1))
        assert ob.claim(5)[0].event_id == ev.event_id  # P1 before the P3 record
    finally:
        ob.close()
    ob = Outbox(path, "node-test")  # the fresh file is healthy on the next start
    try:
        assert ob.quarantined is None and ob.counts()["ready"] == 2
    finally:
        ob.close()


def test_truncated_db_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, "node-test")
    ob.record_many([EventDraft("PATROLI", 4, {"pad": "x" * 500}) for _ in range(300)])
    ob.close()
    data = path.read_bytes()
    with path.open("r+b") as fh:  # keep the header, scribble over the b-tree pages
        fh.seek(4096)
        fh.write(b"\x0d" * (len(data) - 8192))
    ob = Outbox(path, "node-test")
    try:
        assert ob.quarantined is not None
        assert ob.list()[0].type == "STORAGE_QUARANTINED"
    finally:
        ob.close()


def test_disk_full_evicts_snapshots_then_p4_never_p1_p2(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db", "node-test", quota=BIG)
    try:
        store = SnapshotStore(ob, tmp_path / "snaps", quota_bytes=1 << 30,
                              retention_seconds=86400)
        snaps = [store.add(b"s" * 2000, event_id=None, priority=4) for _ in range(5)]
        pad = "x" * 300
        ob.record_many([EventDraft("PANIC", 1, {"pad": pad}) for _ in range(40)]
                       + [EventDraft("TAMPER", 2, {"pad": pad}) for _ in range(40)]
                       + [EventDraft("PATROLI", 4, {"pad": pad}) for _ in range(600)])
        _set_max_pages(ob, _page_count(ob))
        futs = [ob.submit(EventDraft("PANIC", 1, {"pad": pad, "i": i})) for i in range(100)]
        for f in futs:
            f.result(30)  # no StorageFullError: there was something to evict
        assert ob.writer_alive()
        assert store.counts()["ready"] == 0 and not any(s.path.exists() for s in snaps)
        assert _by_priority(ob)[1] == 140 and _by_priority(ob)[2] == 40
        assert _by_priority(ob).get(4, 0) < 600
        whats = [e["what"] for e in _evictions(ob)]
        assert whats[0] == "snapshots" and "events_p4" in whats
        assert whats.index("events_p4") > max(i for i, w in enumerate(whats) if w == "snapshots")
        assert all(e["reason"] == "disk_full" for e in _evictions(ob))
    finally:
        ob.close()


def test_disk_full_with_nothing_evictable_fails_future_writer_survives(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db", "node-test", quota=BIG)
    try:
        ob.record_many([EventDraft("PANIC", 1, {"pad": "x" * 300}) for _ in range(50)])
        _set_max_pages(ob, _page_count(ob))
        futs = [ob.submit(EventDraft("PANIC", 1, {"pad": "y" * 3000})) for _ in range(200)]
        errors = [f.exception(30) for f in futs]
        assert any(isinstance(e, StorageFullError) for e in errors)
        assert all(e is None or isinstance(e, StorageFullError) for e in errors)
        committed = sum(e is None for e in errors)
        # Nothing evicted, nothing half-written: the PANIC rows are the 50 recorded before plus
        # exactly those whose receipt said stored. The only other rows allowed are the
        # STORAGE_DEGRADED records owed for each reserve release (the writer's once-a-second
        # periodic commit stores one as soon as a page has room for it, maybe during this test).
        assert ob.counts()["by_type"]["PANIC"]["ready"] == 50 + committed
        others = [e for e in ob.list(limit=1000) if e.type != "PANIC"]
        assert all(e.type == "STORAGE_DEGRADED" and e.payload["reason"] == "disk_full"
                   for e in others), [(e.type, e.payload) for e in others]
        assert ob.counts()["ready"] == 50 + committed + len(others)
        assert _evictions(ob) == []
        assert ob.writer_alive()
        _set_max_pages(ob, 1 << 30)  # space comes back: the same writer carries on
        assert ob.record(EventDraft("PANIC", 1)).priority == 1
        # ... and every owed record is stored with it: one per reserve release.
        degraded = [e for e in ob.list(limit=1000) if e.type == "STORAGE_DEGRADED"]
        assert len(degraded) == ob.reserve.releases >= 1
        assert ob.counts()["by_type"]["PANIC"]["ready"] == 50 + committed + 1
    finally:
        ob.close()


def test_min_free_pressure_evicts_all_but_unacked_p1_p2(tmp_path: Path) -> None:
    starving = StorageQuota(disk_quota_bytes=1 << 40, snapshot_quota_bytes=1 << 40,
                            min_free_bytes=1 << 62)  # the filesystem never has this much free
    ob = Outbox(tmp_path / "outbox.db", "node-test", quota=BIG)
    try:
        store = SnapshotStore(ob, tmp_path / "snaps", quota_bytes=1 << 30,
                              retention_seconds=86400)
        store.add(b"s" * 500, event_id=None, priority=1)
        evs = ob.record_many([EventDraft("PANIC", 1), EventDraft("TAMPER", 2),
                              EventDraft("LELAYU", 3), EventDraft("PATROLI", 4),
                              EventDraft("PANIC", 1, {"acked": True})])
        ob.ack([evs[4].event_id])
        ob.quota = starving
        recorded = ob.enforce_quota()
        assert [e.payload["what"] for e in recorded] == ["snapshots", "acked_events",
                                                         "events_p4", "events_p3"]
        assert all(e.type == "EVICTION" and e.priority == 3 for e in recorded)
        left = {e.event_id for e in ob.list(limit=1000) if e.type != "EVICTION"}
        assert left == {evs[0].event_id, evs[1].event_id}
        assert store.counts()["ready"] == 0
    finally:
        ob.close()


def test_byte_quota_prunes_acked_before_unacked(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db", "node-test", quota=BIG)
    try:
        pad = "z" * 1000
        acked = ob.record_many([EventDraft("PATROLI", 4, {"pad": pad}) for _ in range(400)])
        ob.ack(e.event_id for e in acked)
        unacked = ob.record_many([EventDraft("PATROLI", 4, {"pad": pad}) for _ in range(100)])
        ob.evictor.reclaim()  # measure the database, not WAL blocks kept for reuse
        ob.quota = StorageQuota(disk_quota_bytes=ob.usage_bytes() // 2,
                                snapshot_quota_bytes=1 << 40, min_free_bytes=0)
        recorded = ob.enforce_quota()
        assert recorded and all(e.payload["what"] == "acked_events" for e in recorded)
        assert ob.usage_bytes() <= ob.quota.disk_quota_bytes
        assert all(ob.get(e.event_id) is not None for e in unacked)
    finally:
        ob.close()


def test_quota_from_config() -> None:
    cfg = StorageConfig.model_validate({"disk_quota_mb": 2, "snapshot_quota_mb": 1,
                                        "min_free_mb": 0.5})
    q = StorageQuota.from_config(cfg)
    assert (q.disk_quota_bytes, q.snapshot_quota_bytes, q.min_free_bytes) == (
        2 * 1024 * 1024, 1024 * 1024, 512 * 1024)


def test_io_error_in_writer_fails_futures_not_thread(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db", "node-test", quota=BIG)
    blocker = sqlite3.connect(ob.path, isolation_level=None, timeout=0)
    try:
        with ob.db.lock:
            ob.db.conn.execute("PRAGMA busy_timeout=50")
        blocker.execute("BEGIN IMMEDIATE")
        fut = ob.submit(EventDraft("PANIC", 1))
        err = fut.exception(30)
        assert err is not None and type(err).__name__ == "StorageError"
        blocker.execute("COMMIT")
        time.sleep(0.05)
        assert ob.writer_alive()
        assert ob.record(EventDraft("PANIC", 1)).seq == 0  # failed batch consumed no seq
    finally:
        blocker.close()
        ob.close()


def test_a_quota_shortfall_is_one_condition_not_a_line_per_pass(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    short = QuotaShort(clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="edge.outbox"):
        for t in (0.0, 1.0, 2.0, 599.0):
            now[0] = t
            short.short(4096, evicted=0, full=True)
        now[0] = 601.0
        short.short(4096, evicted=0, full=True)  # the reminder, with the passes since the start
        now[0] = 700.0
        short.ok()
        short.ok()
        short.short(10, evicted=1, full=False)  # a new condition
    lines = [(r.getMessage(), getattr(r, "passes", None)) for r in caplog.records
             if r.name == "edge.outbox"]
    assert lines == [("storage_quota_exceeded", 1), ("storage_quota_exceeded", 5),
                     ("storage_quota_recovered", 5), ("storage_quota_exceeded", 1)]
    assert short.passes == 6 and short.since == 700.0
