"""Retention: old snapshots and personal data are deleted on schedule, and every deletion logged."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path

import pytest

from central_sync.retention import DAY, Retention
from central_sync.store import CentralStore, Store
from central_sync.web.testing import event
from central_sync.web_settings import WebSettings
from edge.sync.wire import SnapshotEnvelope


def _snap(sid: str, event_id: str | None = None) -> SnapshotEnvelope:
    return SnapshotEnvelope(snapshot_id=sid, event_id=event_id, node_id="pos-a",
                            taken_at=time.time(), data=base64.b64encode(b"jpeg").decode())


def test_retention_deletes_and_logs(any_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    store = any_store
    now = time.time()
    old, fresh = now - 31 * DAY, now - 29 * DAY
    store.insert_snapshot(_snap("snap-old-0000000001"), old)
    store.insert_snapshot(_snap("snap-new-0000000001"), fresh)
    old_ids, _ = store.insert_events(
        [event("pos-a", "PANIC", payload={"reporter": "Budi", "phone": "0812",
                                          "button": "b1", "meta": {"caller_name": "x"}})],
        now - 91 * DAY)
    new_ids, _ = store.insert_events(
        [event("pos-a", "PANIC", payload={"reporter": "Ani", "button": "b2"})], now - DAY)
    store.desk().log_access(now - 400 * DAY, "op", "operator", "view_report", "incident", "i1",
                            "127.0.0.1", True)
    retention = Retention(store.desk(), WebSettings())
    with caplog.at_level(logging.INFO, logger="central.retention"):
        report = retention.run_once(now)
    assert (report.snapshots, report.personal, report.access_log) == (1, 1, 1)
    assert store.get_snapshot("snap-old-0000000001") is None
    assert store.get_snapshot("snap-new-0000000001") is not None
    old_event = store.get_event(old_ids[0])
    assert old_event is not None
    assert old_event["payload"] == {"button": "b1", "meta": {}}
    assert old_event["type"] == "PANIC"                 # the event itself stays
    assert old_event["sig"] is None
    kept = store.get_event(new_ids[0])
    assert kept is not None and kept["payload"]["reporter"] == "Ani"
    logged = {(r["kind"], r["object_id"]) for r in retention.log()}
    assert ("snapshot", "snap-old-0000000001") in logged
    assert ("event_personal_data", old_ids[0]) in logged
    assert ("access_log", "1 rows") in logged
    lines = [r for r in caplog.records if r.getMessage() == "retention_deleted"]
    assert {getattr(r, "object_id", None) for r in lines} >= {"snap-old-0000000001",
                                                              old_ids[0]}
    # A second run finds nothing more to do.
    again = retention.run_once(now)
    assert (again.snapshots, again.personal, again.access_log) == (0, 0, 0)
    assert json.loads(json.dumps(retention.log()))  # rows are plain JSON-able data


def test_retention_period_is_configurable(tmp_path: Path) -> None:
    store = CentralStore(tmp_path / "central.db")
    try:
        now = time.time()
        store.insert_snapshot(_snap("snap-8days-00000001"), now - 8 * DAY)
        retention = Retention(store.desk(), WebSettings(snapshot_retention_days=7))
        assert retention.run_once(now).snapshots == 1
        assert store.list_snapshots() == []
    finally:
        store.close()
