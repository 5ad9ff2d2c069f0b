"""The batch operations ingest calls (commit_events, apply_node_updates, record_rejections), on
every store backend (``any_store`` is parametrised over SQLite and PostgreSQL in conftest.py)."""

from __future__ import annotations

import time
import uuid

import pytest

from central_sync.store import Store
from central_sync.store_types import RejectionSummary
from edge.sync.wire import EventEnvelope, Heartbeat, Presence


def ev(node: str = "node-a", seq: int = 0, **kw: object) -> EventEnvelope:
    data: dict[str, object] = dict(event_id=str(uuid.uuid4()), node_id=node, boot_id="boot-1", seq=seq,
                                   mono_ns=seq * 10, wall_time=1_700_000_000.0 + seq, time_quality="synced",
                                   type="PANIC", priority=1, payload={"button": "panic", "n": seq})
    data.update(kw)
    return EventEnvelope.model_validate(data)


def test_commit_events_inserts_dedupes_per_node_and_reports_in_order(any_store: Store) -> None:
    a, b = ev(seq=1), ev(seq=2)
    res = any_store.commit_events([a, b, a], received_at=10.0)
    assert res.inserted == [a.event_id, b.event_id] and res.duplicates == [a.event_id] and res.rejected == []
    # The same event id from ANOTHER node is its own event: one post cannot shadow another's ids.
    other = ev("node-b", 1, event_id=a.event_id)
    res = any_store.commit_events([other, b], received_at=11.0)
    assert res.inserted == [a.event_id] and res.duplicates == [b.event_id]
    assert any_store.count_events() == 3 and any_store.count_events("node-b") == 1
    row = any_store.list_events(node_id="node-b")[0]
    assert row["payload"] == {"button": "panic", "n": 1} and row["received_at"] == 11.0


def test_values_the_store_cannot_hold_are_rejected_and_the_rest_committed(any_store: Store) -> None:
    good = [ev("node-a", 1), ev("node-b", 2)]
    huge_seq = ev("node-c", 2**63)
    nested_big = ev("node-c", 3, payload={"n": [1, {"x": 2**70}]})
    surrogate = ev("node-d", 4, payload={"who": "ab\udc80cd"})
    surrogate_key = ev("node-d", 5, payload={"\ud800": 1})
    # Wire validation refuses this one already; the store still guards against it (defence in depth).
    surrogate_id = ev("node-d", 6).model_copy(update={"event_id": "0123456789abcdef\udfff"})
    nul = ev("node-d", 7, payload={"who": "a\x00b"})
    res = any_store.commit_events([good[0], huge_seq, nested_big, surrogate, surrogate_key, surrogate_id, nul,
                                   good[1]], received_at=5.0)
    assert res.inserted == [g.event_id for g in good]
    reasons = [r.reason for r in res.rejected]
    assert reasons == ["out_of_range", "out_of_range", "bad_text", "bad_text", "bad_text", "bad_text"]
    assert all(r.event_id.encode() for r in res.rejected)  # reported ids are printable/encodable
    assert any_store.count_events() == 2
    assert {n["node_id"] for n in any_store.list_nodes()} == {"node-a", "node-b"}


def test_apply_node_updates_coalesces_per_node_in_one_call(any_store: Store) -> None:
    now = time.time()
    pres = [Presence(node_id="node-a", state="online", boot_id="b1", version="1.0", kelurahan_code="33.74.01.1001",
                     rw=5, rt=3, display_name="Pos RT 03"),
            Presence(node_id="node-b", state="online"),
            Presence(node_id="node-b", state="offline")]
    beats = [Heartbeat(node_id="node-a", boot_id="b1", at=now, version="1.1", time_quality="rtc",
                       outbox={"ready": 1}),
             Heartbeat(node_id="node-a", boot_id="b1", at=now + 1, version="1.1", time_quality="rtc",
                       outbox={"ready": 7, "in_flight": 3}, siren={"on": True}),
             Heartbeat(node_id="node-b", boot_id="b2", at=now, version="2.0", time_quality="synced")]
    any_store.apply_node_updates(pres, beats, now)
    nodes = {n["node_id"]: n for n in any_store.list_nodes(now=now)}
    a, b = nodes["node-a"], nodes["node-b"]
    assert a["online"] is True and a["backlog"] == 10 and a["siren"] == {"on": True} and a["version"] == "1.1"
    # The claimed place and name are not applied (issue 10: the registry's only; none here).
    assert (a["kelurahan_code"], a["rw"], a["rt"], a["display_name"]) == (None, None, None, None)
    assert b["online"] is False and b["status"] == "offline" and b["version"] == "2.0"
    any_store.apply_node_updates([], [], now)  # nothing to do is fine


def test_record_rejections_aggregates(any_store: Store) -> None:
    any_store.record_rejections([
        RejectionSummary("node-a", "not_json", 40, 1.0, 9.0, "kentongan/v1/up/node-a/event", "x"),
        RejectionSummary(None, "wrong_topic", 2, 2.0, 3.0, "bad/\udc80", "bad \x00 text"),
    ])
    any_store.record_rejection(node_id="node-a", topic="t", reason="not_json", detail="y", at=10.0)
    assert any_store.rejection_counts() == {"not_json": 41, "wrong_topic": 2}
    latest = any_store.list_rejections(limit=10)
    assert len(latest) == 3 and {r["reason"] for r in latest} == {"not_json", "wrong_topic"}
    any_store.record_rejections([])


def test_a_batch_the_database_refuses_is_split_to_the_offending_rows(any_store: Store,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: with the pre-commit checks switched off, the database itself refuses the
    bad rows; the batch is split (savepoints) and only those rows are rejected."""
    import central_sync.store.postgres as pg_backend
    import central_sync.store.sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "check_event", lambda env: None)
    monkeypatch.setattr(pg_backend, "check_event", lambda env: None)
    good = [ev(f"node-{i}", i) for i in range(5)]
    bad_text = ev("node-x", 1, payload={"who": "ab\udc80"})
    bad_int = ev("node-y", 2**63)
    batch = [good[0], bad_text, good[1], good[2], bad_int, good[3], good[4]]
    res = any_store.commit_events(batch, 3.0)
    assert res.inserted == [g.event_id for g in good]
    assert sorted(r.event_id for r in res.rejected) == sorted([bad_text.event_id, bad_int.event_id])
    assert {r.reason for r in res.rejected} == {"store_refused"}
    assert any_store.count_events() == 5
