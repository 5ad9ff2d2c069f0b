"""A P1 record the post cannot encode is rejected by the P1 lane at once (docs/storage.md,
"Oversized events"), against a real Mosquitto, a real central and a real SQLite outbox.

Before, the P1 lane only noted such a record; it moved to ``rejected_local`` at the end of its
claim, and a claim that also holds a backlog is paced by the broker's PUBACKs: with the broker
frozen (SIGSTOP, a broker swamped by a reconnecting fleet) the record stayed ``in_flight`` in
the post's window for as long as the broker was away. A backlog record is still rejected at the
end of its claim, but before a lost connection releases the window (it used to go back to
``ready`` and be built again). A ``rejected_local`` P1 still counts as unacknowledged for the SMS
fallback.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from helpers_sync import SmsRecorder, node_config, plain_post, running_service, wait_until

from central_sync.broker import LocalMosquitto
from edge.clock import Clock
from edge.outbox import EventDraft, Outbox
from edge.sync.service import SyncService
from edge.sync.uplink import MAX_UNCONFIRMED
from edge.sync.wire import MAX_EVENT_BYTES
from tests.helpers_central import IngestInThread

NODE = "pos-rt03"
BAD = "0190a0a0-0000-7000-8000-00000000beef"
RECIPIENTS = [{"name": "Ketua RT", "number": "+6281200000001"},
              {"name": "Bhabinkamtibmas", "number": "+6281200000002"}]


def _outbox(path: Path) -> Outbox:
    return Outbox(path, NODE, clock=Clock(forced_quality="synced"))


def _row(rowid: int, event_id: str, priority: int, payload: dict[str, Any], *, typ: str,
         incident_id: str | None = None) -> tuple[Any, ...]:
    return (rowid, event_id, NODE, "older-agent", rowid, rowid, time.time(), "synced", typ, priority,
            incident_id, json.dumps(payload))


def _insert_raw(path: Path, rows: list[tuple[Any, ...]]) -> None:
    """Rows as another writer of the same file inserts them (an older agent: no record-time
    bound), in one transaction; ``rows`` hold their rowid offsets from the next free rowid."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]
        conn.executemany("INSERT INTO events (id, event_id, node_id, boot_id, seq, mono_ns, wall_time,"
                         " time_quality, type, priority, incident_id, payload)"
                         " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [(top + r[0], *r[1:]) for r in rows])
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'commits'")
        conn.execute("COMMIT")
    finally:
        conn.close()


def _oversized_p1(offset: int, incident_id: str | None = None) -> tuple[Any, ...]:
    return _row(offset, BAD, 1, {"modem_log": "x" * (MAX_EVENT_BYTES * 2)}, typ="PANIC",
                incident_id=incident_id)


def _status(ob: Outbox, event_id: str) -> str | None:
    ev = ob.get(event_id)
    return None if ev is None else ev.status


def test_an_unsendable_p1_leading_a_paced_claim_is_rejected_at_once(
        tmp_path: Path, mosquitto: LocalMosquitto, ingest_central: IngestInThread) -> None:
    path = tmp_path / "outbox.db"
    ob = _outbox(path)
    assert mosquitto.proc is not None
    pid = mosquitto.proc.pid
    try:
        svc = plain_post(mosquitto.port, ob)
        with running_service(svc):
            ob.record(EventDraft("PATROLI", 4, {"warm": True}))
            wait_until(lambda: ob.counts()["acked"] == 1, 60, what="the lane runs, central acks")
            messages = svc.stats.messages
            os.kill(pid, signal.SIGSTOP)
            try:
                # One transaction: the next claim holds the P1 first, then a backlog of 2,979.
                _insert_raw(path, [_oversized_p1(1)] + [
                    _row(2 + i, f"0190a0a0-0000-7000-9000-{i:012x}", 4, {"i": i}, typ="PATROLI")
                    for i in range(2999)])
                # Counted on the loop once the write returns, so wait for both.
                wait_until(lambda: _status(ob, BAD) == "rejected_local" and svc.stats.rejected_local == 1, 30,
                           what="the unsendable P1 rejected while the backlog waits for the broker")
                # Still the same claim, paced by PUBACKs that cannot come: not its end.
                assert svc.stats.messages - messages <= MAX_UNCONFIRMED
                assert ob.counts()["in_flight"] >= 2900 and BAD not in svc.events.inflight
            finally:
                os.kill(pid, signal.SIGCONT)
            wait_until(lambda: ob.counts()["acked"] == 3000, 120, what="the backlog acked")
        at_central = set(ingest_central.events(NODE))
        assert len(at_central) == 3000 and BAD not in at_central
        assert ob.flags(BAD)["rejected_local"].startswith("oversized")
        assert svc.stats.rejected_local == 1  # counted (and logged) once
        counts = ob.counts()
        assert counts["rejected_local"] == 1 and counts["in_flight"] == 0
    finally:
        ob.close()


def test_unsendable_backlog_records_are_rejected_before_a_lost_connection_releases_them(
        tmp_path: Path, mosquitto: LocalMosquitto, ingest_central: IngestInThread) -> None:
    """A backlog record is rejected at the end of its claim; when the connection goes first, it
    is rejected before the window is released, not put back to ``ready`` and built again."""
    path = tmp_path / "outbox.db"
    ob = _outbox(path)
    try:
        svc = plain_post(mosquitto.port, ob)
        with running_service(svc):
            ob.record(EventDraft("PATROLI", 4, {"warm": True}))
            wait_until(lambda: ob.counts()["acked"] == 1, 60, what="the lane runs, central acks")
            messages = svc.stats.messages
            assert mosquitto.proc is not None
            os.kill(mosquitto.proc.pid, signal.SIGSTOP)
            _insert_raw(path, [_row(1, BAD, 4, {"modem_log": "x" * (MAX_EVENT_BYTES * 2)}, typ="PATROLI")] + [
                _row(2 + i, f"0190a0a0-0000-7000-9000-{i:012x}", 4, {"i": i}, typ="PATROLI") for i in range(2999)])
            wait_until(lambda: svc.stats.messages > messages, 30, what="the claim's first message, past the bad record")
            assert _status(ob, BAD) == "in_flight"  # a backlog record waits for the end of its claim
            mosquitto.kill()  # the connection is gone before the claim could end
            wait_until(lambda: _status(ob, BAD) == "rejected_local", 30, what="rejected before the release")
            wait_until(lambda: ob.counts()["in_flight"] == 0, 30, what="the rest released")
        assert ob.flags(BAD)["rejected_local"].startswith("oversized")
        assert svc.stats.rejected_local == 1 and ob.counts()["rejected_local"] == 1
    finally:
        ob.close()


def test_a_rejected_local_p1_still_counts_as_unacked_for_the_sms_fallback(
        tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    path = tmp_path / "outbox.db"
    _outbox(path).close()
    _insert_raw(path, [_oversized_p1(1, incident_id="inc-old")])
    ob = _outbox(path)
    sms = SmsRecorder()
    try:
        cfg = node_config(mosquitto.port, NODE, sms_fallback_seconds=0.6,
                          modem={"enabled": True, "port": "/dev/null", "sms_recipients": RECIPIENTS})
        svc = SyncService(cfg, ob, snapshots=None, clock=ob.clock, status_provider=lambda: {},
                          command_handler=None, sms_sender=sms)
        svc.sms.check_s = 0.1
        with running_service(svc):
            wait_until(lambda: _status(ob, BAD) == "rejected_local", 30, what="rejected locally")
            wait_until(lambda: any(e.type == "SMS_SENT" for e in ob.list(limit=100)), 30, what="SMS_SENT")
        with sms.lock:
            assert sorted(n for n, _ in sms.sent) == sorted(r["number"] for r in RECIPIENTS)
            assert all(BAD[:8] in text and "PANIC" in text for _, text in sms.sent)
        assert "sms_sent_at" in ob.flags(BAD) and svc.stats.rejected_local == 1
    finally:
        ob.close()
