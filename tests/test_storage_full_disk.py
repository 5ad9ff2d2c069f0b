"""A 100 % full filesystem (a real tmpfs, filled): P1/P2 events still land on disk through the
write reserve, eviction works and reports exactly what it removed, the reserve comes back once
there is room, and the writer's log lines stay rate-limited."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.clock import Clock
from edge.errors import StorageFullError
from edge.outbox import EventDraft, Outbox, StorageQuota, StoredEvent
from edge.snapshots import SnapshotStore
from tests.fs_helpers import fill, small_fs
from tests.waits import wait_for as _wait

RESERVE = 1 << 20
QUOTA = StorageQuota(disk_quota_bytes=1 << 40, snapshot_quota_bytes=1 << 40, min_free_bytes=0,
                     reserve_bytes=RESERVE)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_fs(tmp_path / "mnt", 16) as mnt:
        yield mnt


def _rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as c:
        return c.execute(sql).fetchall()


def test_p1_p2_land_on_a_full_disk_through_the_reserve(disk: Path) -> None:
    path = disk / "state" / "outbox.db"
    ob = Outbox(path, "node-full", clock=Clock(forced_quality="synced"), quota=QUOTA)
    try:
        assert ob.reserve.present and ob.storage_health()["state"] == "ok"
        ob.record_many([EventDraft("PANIC", 1, {"i": i, "pad": "p" * 200}) for i in range(200)])
        filler = fill(disk)
        # Nothing may be evicted (all unacked P1): only the reserve can take these.
        receipts = [ob.submit(EventDraft("PANIC" if i % 2 else "KERIBUTAN", 1 if i % 2 else 2,
                                         {"i": i, "pad": "q" * 200})) for i in range(60)]
        stored = [r.result(30) for r in receipts]
        assert len({e.event_id for e in stored}) == 60
        health = ob.storage_health()
        assert health["state"] == "degraded" and not health["reserve_present"]
        assert health["reserve_releases"] == 1 and health["disk_full_errors"] >= 1
        store = SnapshotStore(ob, disk / "state" / "snaps", quota_bytes=1 << 30,
                              retention_seconds=3600)
        with pytest.raises(StorageFullError, match="reserve"):  # that room is for events
            store.add(b"jpeg" * 100, event_id=None, priority=1)
        degraded = [e for e in ob.list(limit=1000) if e.type == "STORAGE_DEGRADED"]
        assert [e.payload["reason"] for e in degraded] == ["disk_full"]
        assert degraded[0].payload["reserve_released_bytes"] == RESERVE
        # Space comes back: the reserve is rebuilt by the writer's periodic check.
        filler.unlink()
        _wait(lambda: ob.reserve.present)
        assert store.add(b"jpeg" * 100, event_id=None, priority=1).size == 400
    finally:
        ob.close()
    n = _rows(path, "SELECT COUNT(*) FROM events WHERE priority <= 2")[0][0]
    assert n == 260


def test_p4_does_not_eat_the_reserve_and_fails_honestly(disk: Path) -> None:
    path = disk / "outbox.db"
    ob = Outbox(path, "node-full", quota=QUOTA)
    try:
        ob.record_many([EventDraft("PANIC", 1, {"pad": "p" * 200}) for _ in range(50)])
        fill(disk)
        r = ob.submit(EventDraft("PATROLI", 4, {"pad": "x" * 20000}))
        assert isinstance(r.exception(30), StorageFullError)
        assert ob.reserve.present  # kept for P1/P2
        assert ob.record(EventDraft("PANIC", 1, {"pad": "x" * 20000})).priority == 1
        assert not ob.reserve.present
    finally:
        ob.close()


def _full_disk_with_evictable_p4(disk: Path, wal_events: int = 0
                                 ) -> tuple[Outbox, list[StoredEvent], list[StoredEvent]]:
    """An outbox holding 3,000 unacked P4 and 50 acked events on a filesystem filled to the
    last block, its WAL truncated (every new page needs a new block); ``wal_events`` more P4
    then leave the WAL with the blocks of their transaction (checkpointed)."""
    ob = Outbox(disk / "outbox.db", "node-full", quota=QUOTA)
    p4 = ob.record_many([EventDraft("PATROLI", 4, {"i": i, "pad": "x" * 400})
                         for i in range(3000)])
    acked = ob.record_many([EventDraft("KUMPUL", 4, {"pad": "y" * 400}) for _ in range(50)])
    ob.ack([e.event_id for e in acked])
    ob.evictor.reclaim()
    if wal_events:
        p4 += ob.record_many([EventDraft("PATROLI", 4, {"i": i, "pad": "x" * 400})
                              for i in range(wal_events)])
        assert ob.evictor.checkpoint()  # in the database file; the WAL keeps its blocks
    fill(disk)
    return ob, p4, acked


def _assert_exact_evictions(ob: Outbox, p4: list[StoredEvent],
                            acked: list[StoredEvent]) -> list[dict[str, Any]]:
    """The EVICTION records name exactly the removed events (consecutive rowids per range)."""
    evictions = [e.payload for e in ob.list(limit=100_000) if e.type == "EVICTION"]
    assert evictions, "nothing was evicted on a full disk"
    left = {e.event_id for e in ob.list(limit=100_000)}
    removed = [e for e in p4 if e.event_id not in left]
    removed_acked = [e for e in acked if e.event_id not in left]
    assert sum(int(p["unacked"]) for p in evictions) == len(removed) > 0
    assert sum(int(p["acked"]) for p in evictions) == len(removed_acked)
    by_id = {e.event_id: e.rowid for e in [*p4, *acked]}
    named: set[int] = set()
    for p in evictions:
        assert p["ranges_total"] == len(p["ranges"])
        for r in p["ranges"]:
            lo, hi = by_id[r["first"]], by_id[r["last"]]
            assert hi - lo + 1 == r["count"]
            named |= set(range(lo, hi + 1))
    assert named == {e.rowid for e in [*removed, *removed_acked]}
    assert all(p["reason"] == "disk_full" for p in evictions)
    return evictions


def test_eviction_runs_on_a_full_disk_and_reports_exact_ranges(disk: Path) -> None:
    ob, p4, acked = _full_disk_with_evictable_p4(disk)
    try:
        stored = [ob.submit(EventDraft("PANIC", 1, {"i": i, "pad": "z" * 2000}))
                  for i in range(400)]
        for r in stored:
            r.result(30)
        _assert_exact_evictions(ob, p4, acked)
    finally:
        ob.close()


def test_p1_in_waves_on_a_full_disk_always_find_room_while_p4_remains(disk: Path) -> None:
    """Alarms arriving one burst after another (each stored before the next: what a loaded
    box does to one big burst) must never fail while P4 events can still be evicted. Before,
    a burst stored in the WAL with pages the database file did not have yet, the next burst
    grew the WAL into the last free blocks, the checkpoint could then never grow the file, and
    every later write (eviction included) failed: 250 of 400 PANIC, with 3,000 P4 left."""
    ob, p4, acked = _full_disk_with_evictable_p4(disk)
    try:
        for wave in range(8):
            receipts = [ob.submit(EventDraft("PANIC", 1, {"wave": wave, "i": i,
                                                          "pad": "z" * 2000}))
                        for i in range(50)]
            errors = [r.exception(30) for r in receipts]
            assert errors == [None] * 50, (wave, {str(e) for e in errors})
        assert ob.counts()["by_type"]["PANIC"]["ready"] == 400
        _assert_exact_evictions(ob, p4, acked)
        assert ob.counts()["by_type"]["PATROLI"]["ready"] > 0  # evicted only what was needed
        # Not wedged: the sync lane can still write (claim, ack) on the full disk.
        claimed = ob.claim(50, max_priority=1)
        assert len(claimed) == 50 and ob.ack(e.event_id for e in claimed) == 50
        assert ob.record(EventDraft("PANIC", 1, {"after": True})).priority == 1
    finally:
        ob.close()


def test_full_disk_log_lines_are_rate_limited(disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    ob = Outbox(disk / "outbox.db", "node-full",
                quota=StorageQuota(1 << 40, 1 << 40, 0, reserve_bytes=0))
    try:
        ob.record_many([EventDraft("PANIC", 1, {"pad": "p" * 200}) for _ in range(20)])
        fill(disk)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="edge.outbox"):
            t0 = time.monotonic()
            receipts = [ob.submit(EventDraft("PANIC", 1, {"pad": "x" * 9000}))
                        for _ in range(2000)]
            for r in receipts:
                r.exception(60)
            elapsed = time.monotonic() - t0
        lines = [r for r in caplog.records if r.name == "edge.outbox"]
        assert ob.storage_health()["disk_full_errors"] >= 2
        # at most one line per kind per 10 s window, whatever the number of failures
        kinds = {r.getMessage() for r in lines}
        assert len(lines) <= len(kinds) * (1 + int(elapsed // 10) + 1), [
            r.getMessage() for r in lines]
        assert ob.rlog.suppressed_total > 0
    finally:
        ob.close()


def test_unavailable_database_keeps_receipts_pending_and_close_is_prompt(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the state dir cannot be created: the database cannot be opened
    ob = Outbox(blocker / "outbox.db", "node-x", quota=QUOTA)
    r = ob.submit(EventDraft("PANIC", 1))
    time.sleep(0.3)
    assert not r.done()  # pending, not failed: it would be stored if the disk came back
    health = ob.storage_health()
    assert health["state"] == "unavailable" and not health["db_open"]
    assert ob.counts()["ready"] == 0 and ob.claim(10) == [] and ob.writer_alive()
    t0 = time.monotonic()
    ob.close()
    assert time.monotonic() - t0 < 5
    err = r.exception(0)
    assert err is not None and "could not be opened" in str(err)


def _quota_records(ob: Outbox) -> list[dict[str, Any]]:
    return [e.payload for e in ob.list(limit=100_000)
            if e.type == "EVICTION" and e.payload["reason"] == "quota"]


def test_min_free_on_a_full_disk_is_restored_in_steps_that_fit(
        disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The filesystem is 100 % full and ``min_free`` asks for 2 MiB back; the WAL has about
    0.6 MiB of blocks. Before, every pass tried one eviction of ~3,000 rows whose WAL frames
    could not fit, evicted nothing and logged ``storage_quota_exceeded`` again; the disk
    stayed full until an alarm released the reserve. Now small steps (checkpointed in between)
    free the pages and small vacuum steps give them back: the limit is met, the reserve stays
    in place and the next PANIC needs none of it."""
    ob, p4, _acked = _full_disk_with_evictable_p4(disk, wal_events=1000)
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="edge.outbox"):
            ob.quota = StorageQuota(1 << 40, 1 << 40, min_free_bytes=2 << 20,
                                    reserve_bytes=RESERVE)
            _wait(lambda: ob.storage_health()["free_bytes"] >= 2 << 20, timeout=30,
                  what="min_free restored")
        records = _quota_records(ob)
        assert records and all(p["what"] in ("acked_events", "events_p4") for p in records)
        assert sum(int(p["count"]) for p in records) < len(p4)  # only what was needed
        assert not [r for r in caplog.records if r.getMessage() == "storage_quota_exceeded"]
        assert ob.reserve.present
        assert ob.record(EventDraft("PANIC", 1, {"pad": "z" * 2000})).priority == 1
        health = ob.storage_health()
        assert health["reserve_present"] and health["reserve_releases"] == 0
        assert not health["quota_short"]
    finally:
        ob.close()


def test_a_limit_that_cannot_be_met_is_logged_once_and_counted(
        disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing can be committed at all (WAL truncated, disk filled): each pass skips the
    eviction it cannot do; the condition is logged once, counted, and the PANIC that comes
    still lands (the reserve, then the writer's own eviction)."""
    ob, _p4, _acked = _full_disk_with_evictable_p4(disk)
    try:
        with caplog.at_level(logging.INFO, logger="edge.outbox"):
            caplog.clear()
            ob.quota = StorageQuota(1 << 40, 1 << 40, min_free_bytes=2 << 20,
                                    reserve_bytes=RESERVE)
            for _ in range(5):
                ob.enforce_quota()
            health = ob.storage_health()
            assert health["quota_short"] and health["quota_short_passes"] >= 5
            exceeded = [r for r in caplog.records if r.getMessage() == "storage_quota_exceeded"]
            assert len(exceeded) == 1
            assert ob.reserve.present  # the quota path never takes the alarms' room
            assert ob.record(EventDraft("PANIC", 1, {"pad": "z" * 2000})).priority == 1
            _wait(lambda: not ob.storage_health()["quota_short"], timeout=30,
                  what="min_free restored after the reserve release")
        assert [r for r in caplog.records if r.getMessage() == "storage_quota_recovered"]
    finally:
        ob.close()
