"""The outbox knows whose it is: node id and database uuid inside it, checked at every open.
Zero-length, foreign or mismatched databases and WALs are moved aside and reported; rows of
another node id are moved to ``foreign_events`` and never claimed (real SQLite files)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from edge.outbox import EventDraft, Outbox, StorageQuota
from edge.outbox.identity import sidecar_path

Q = StorageQuota(disk_quota_bytes=1 << 40, snapshot_quota_bytes=1 << 40, min_free_bytes=0,
                 reserve_bytes=0)


def _quarantine_events(ob: Outbox) -> list[dict[str, object]]:
    return [e.payload for e in ob.list(limit=10_000) if e.type == "STORAGE_QUARANTINED"]


def _ours(n: int, path: Path, node: str = "node-a") -> list[str]:
    ob = Outbox(path, node, quota=Q)
    try:
        return [e.event_id for e in ob.record_many([EventDraft("PANIC", 1, {"i": i})
                                                   for i in range(n)])]
    finally:
        ob.close()


def test_meta_holds_node_id_and_database_uuid(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    _ours(3, path)
    with sqlite3.connect(path) as c:
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
    assert meta["node_id"] == "node-a" and len(meta["db_uuid"]) == 36
    assert int(meta["commits"]) >= 1
    side = json.loads(sidecar_path(path).read_text())
    assert side == {"node_id": "node-a", "db_uuid": meta["db_uuid"]}
    ob = Outbox(path, "node-a", quota=Q)  # our own database: nothing to report
    try:
        assert ob.quarantined is None and _quarantine_events(ob) == []
        assert ob.db.db_uuid == meta["db_uuid"]
    finally:
        ob.close()


def test_zero_length_database_is_quarantined_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    _ours(5, path)
    path.write_bytes(b"")  # truncated to nothing by a bad power cut
    ob = Outbox(path, "node-a", quota=Q)
    try:
        reports = _quarantine_events(ob)
        assert [r["reason"] for r in reports] == ["zero_length"]
        assert ob.quarantined is not None and ob.quarantined.name.startswith(
            "outbox.db.zero-length-") and ob.quarantined.stat().st_size == 0
        assert reports[0]["unacked_lost"] is None  # not known: the file was empty
    finally:
        ob.close()


def test_database_of_another_node_is_quarantined_with_unacked_count(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ids = _ours(7, path, node="node-a")
    ob = Outbox(path, "node-b", quota=Q)  # a cloned SD card, or node_id changed in the config
    try:
        reports = _quarantine_events(ob)
        assert [r["reason"] for r in reports] == ["foreign_database"]
        assert reports[0]["unacked_lost"] == 7
        assert ob.claim(100)[0].type == "STORAGE_QUARANTINED"  # nothing of node-a is sent
        assert all(ob.get(i) is None for i in ids)
        assert ob.quarantined is not None and ob.quarantined.name.startswith("outbox.db.foreign-")
        with sqlite3.connect(ob.quarantined) as c:  # kept intact for a technician
            assert c.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 7
    finally:
        ob.close()


def test_database_replaced_by_another_one_of_the_same_node_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    _ours(2, path)
    other = tmp_path / "other" / "outbox.db"
    _ours(4, other)  # same node id, another database (restored backup, copied file)
    shutil.copy(other, path)
    ob = Outbox(path, "node-a", quota=Q)
    try:
        reports = _quarantine_events(ob)
        assert [r["reason"] for r in reports] == ["mismatched_database"]
        assert reports[0]["unacked_lost"] == 4
    finally:
        ob.close()


def test_missing_database_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    _ours(2, path)
    path.unlink()
    ob = Outbox(path, "node-a", quota=Q)
    try:
        assert [r["reason"] for r in _quarantine_events(ob)] == ["database_missing"]
    finally:
        ob.close()


def test_foreign_wal_is_quarantined_and_our_events_survive(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ours = _ours(300, path, node="node-a")
    # Another node's database with un-checkpointed writes in its WAL; copy the live WAL.
    other = tmp_path / "b" / "outbox.db"
    ob_b = Outbox(other, "node-b", quota=Q)
    try:
        ob_b.record_many([EventDraft("PANIC", 1, {"b": i}) for i in range(50)])
        shutil.copy(str(other) + "-wal", str(path) + "-wal")
    finally:
        ob_b.close()
    ob = Outbox(path, "node-a", quota=Q)
    try:
        reports = _quarantine_events(ob)
        assert [r["reason"] for r in reports] == ["foreign_wal"]
        assert Path(str(reports[0]["moved_to"])).name.startswith("outbox.db-wal.foreign-")
        assert all(ob.get(i) is not None for i in ours)  # all 300 of ours are still there
        assert {e.node_id for e in ob.list(limit=1000)} == {"node-a"}
    finally:
        ob.close()


def test_rows_of_another_node_are_moved_aside_and_never_claimed(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ours = _ours(5, path, node="node-a")
    # A database from before meta existed that also holds another node's rows.
    c = sqlite3.connect(path)
    with c:
        c.execute("DELETE FROM meta WHERE key IN ('node_id', 'db_uuid')")
        c.execute("UPDATE events SET node_id='node-x' WHERE id IN (1, 2)")
        c.execute("UPDATE events SET status='acked', acked_at=1 WHERE id = 2")
    c.close()  # checkpointed: no WAL left behind
    sidecar_path(path).unlink()
    ob = Outbox(path, "node-a", quota=Q)
    try:
        reports = _quarantine_events(ob)
        assert [(r["reason"], r["rows"], r["unacked_lost"]) for r in reports] == [
            ("foreign_rows", 2, 1)]
        claimed = ob.claim(100)
        assert {e.node_id for e in claimed} == {"node-a"}
        assert {e.event_id for e in claimed} >= set(ours[2:])
        assert ob.counts()["by_type"]["PANIC"]["in_flight"] == 3
        with sqlite3.connect(path) as c:
            assert c.execute("SELECT node_id, reason FROM foreign_events").fetchall() == [
                ("node-x", "foreign_node"), ("node-x", "foreign_node")]
    finally:
        ob.close()
