"""Every statement the outbox runs uses an index: ``EXPLAIN QUERY PLAN`` of each one, captured
from the outbox's own connection while it does all of its jobs on a real file.

Rules: no full scan of ``events`` anywhere (a bare ``SCAN events``) except the few statements
that run once per open and are listed in ``ONCE_PER_OPEN``; and the alarm-path statements (P1
claim, ``oldest_unacked``, the per-priority probes behind ``counts()``) neither scan ``events``
at all nor sort in a temp B-tree, so they cost O(unacked P1 rows), not O(outbox rows).
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

from edge.clock import Clock
from edge.outbox import EventDraft, Outbox, StorageQuota
from edge.snapshots import SnapshotStore

BIG = StorageQuota(disk_quota_bytes=1 << 40, snapshot_quota_bytes=1 << 40, min_free_bytes=0,
                   reserve_bytes=0)

#: Statements allowed to scan ``events``: they run once per open (load the in-memory counts).
#: (``list()`` without a status walks the rowid b-tree backwards and stops after LIMIT rows: its
#: plan reads "SCAN events" too, and the test accepts exactly that shape.)
ONCE_PER_OPEN = ("SELECT type, status, COUNT(*) FROM events GROUP BY type, status",)


def _plan(conn: sqlite3.Connection, sql: str) -> list[str]:
    return [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]


def _is_alarm_path(sql: str) -> bool:
    s = " ".join(sql.split())
    return ("priority <= 1" in s and "status='ready'" in s) or (
        "status != 'acked' AND priority <=" in s) or ("status='ready' AND priority=" in s) or (
        "MIN(priority)" in s)


def test_every_outbox_statement_uses_an_index(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, "node-plan", clock=Clock(forced_quality="synced"), quota=BIG)
    seen: list[str] = []
    try:
        # A realistic table first (the planner's choices depend on the data): 6,000 rows.
        for p, n in ((4, 4000), (3, 1000), (2, 500), (1, 500)):
            ob.record_many([EventDraft("PATROLI" if p == 4 else "PANIC", p, {"i": i})
                            for i in range(n)])
        with ob.db.lock:
            ob.db.conn.set_trace_callback(seen.append)
        store = SnapshotStore(ob, tmp_path / "snaps", quota_bytes=1 << 30,
                              retention_seconds=3600)
        # Every job of the outbox, once.
        ev = ob.record(EventDraft("PANIC", 1, {"k": 1}))
        ob.claim(5, max_priority=1)
        batch = ob.claim(50)
        ob.ack([batch[0].event_id, ev.event_id])
        ob.release([batch[1].event_id])
        ob.release()
        ob.claim(10)
        ob.requeue_expired(0)
        ob.counts()
        ob.get(ev.event_id)
        ob.list(limit=5)
        ob.list(status="ready", limit=5)
        ob.list(status="acked", limit=5)
        ob.oldest_unacked(1, 0)
        ob.oldest_unacked(2, -86400)
        ob.mark(ev.event_id, "sms_sent_at", 1.0)
        bad = ob.claim(2)
        assert ob.reject_local({bad[0].event_id: "oversized: test"}) == [bad[0].event_id]
        ob.oldest_unacked(1, 0)  # with a rejected_local row present
        ob.flags(ev.event_id)
        ob.prune_acked(0)
        ob.ack([e.event_id for e in ob.claim(100)])
        snap = store.add(b"jpeg", event_id=ev.event_id, priority=1)
        store.claim(1000)
        store.ack([snap.snapshot_id])
        store.counts()
        for _ in range(4):  # snapshots, acked rows, P4 rows, P3 rows
            ob.evictor.evict_step(1000, "test", [])
        ob.enforce_quota()
        store.purge_expired(now=time.time() + 7200)
        with ob.db.lock:
            ob.db.conn.set_trace_callback(None)
            conn = ob.db.conn
            checked = 0
            for sql in dict.fromkeys(seen):
                if not re.match(r"\s*(SELECT|UPDATE|DELETE|WITH|INSERT INTO \w+ \(.*\) SELECT)",
                                sql, re.S):
                    continue
                if "FROM events" not in sql and "UPDATE events" not in sql:
                    continue
                plan = _plan(conn, sql)
                checked += 1
                full_scans = [d for d in plan if d == "SCAN events"]
                rowid_walk = re.search(r"FROM events ORDER BY id DESC LIMIT \d+$", sql)
                if not any(sql.startswith(s) for s in ONCE_PER_OPEN) and not rowid_walk:
                    assert not full_scans, f"full scan of events: {sql}\n{plan}"
                if "event_id IN (" in sql and "FROM events" not in sql.split("event_id IN")[1]:
                    # by id: O(ids), never every row of a status (acks during a 1M drain)
                    assert plan == ["SEARCH events USING INDEX sqlite_autoindex_events_1"
                                    " (event_id=?)"], (sql, plan)
                if _is_alarm_path(sql):
                    assert not any(d.startswith("SCAN events") for d in plan), (sql, plan)
                    assert not any("TEMP B-TREE" in d for d in plan), (sql, plan)
        assert checked >= 15  # the workload really ran through the outbox's statements
    finally:
        ob.close()


def test_alarm_path_plans_by_name(tmp_path: Path) -> None:
    """The named alarm-path statements, as docs/storage.md shows them."""
    ob = Outbox(tmp_path / "outbox.db", "node-plan", quota=BIG)
    try:
        p1_claim = ob.db.plan("SELECT id FROM events WHERE status='ready' AND priority <= 1"
                              " ORDER BY priority, id LIMIT 10")
        unacked = ob.db.plan("SELECT id FROM events WHERE status != 'acked' AND priority <= 1"
                             " AND wall_time <= 1e18 ORDER BY priority, id LIMIT 1000")
        assert p1_claim == ["SEARCH events USING COVERING INDEX events_claim"
                            " (status=? AND priority<?)"]
        assert unacked == ["SEARCH events USING INDEX events_unacked (priority<?)"]
    finally:
        ob.close()
