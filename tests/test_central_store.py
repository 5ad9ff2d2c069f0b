"""The store contract on every backend (SQLite files and a real PostgreSQL started by the tests):
de-duplication, ordering, nodes, commands; plus SQLite's durability settings."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from central_sync.store import CentralStore, Store, migrations, open_store
from central_sync.store.registry_tables import SecurityEventRow
from central_sync.web.testing import register
from edge.sync.wire import Command, CommandResult, EventEnvelope, Heartbeat, Presence, SnapshotEnvelope, b64


def ev(node: str = "node-a", seq: int = 0, **kw: object) -> EventEnvelope:
    data: dict[str, object] = dict(event_id=uuid.uuid4().hex, node_id=node, boot_id="boot-1", seq=seq, mono_ns=seq * 10,
                                   wall_time=1_700_000_000.0 + seq, time_quality="synced", type="PANIC", priority=1,
                                   payload={"button": "panic", "n": seq})
    data.update(kw)
    return EventEnvelope.model_validate(data)


@pytest.fixture
def store(any_store: Store) -> Store:
    return any_store


def test_durability_pragmas_and_migrations(tmp_path: Path) -> None:
    s = CentralStore(tmp_path / "c.db")
    conn = s.connection()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert [m.name for m in migrations.applied(s.database())] == ["m001_initial",
                                                                 "m002_node_scoped_dedup_and_change_seq",
                                                                 "m003_lean_event_indexes"]
    s.insert_events([ev()], 1.0)
    s.close()
    again = CentralStore(tmp_path / "c.db")  # reopening applies nothing twice and keeps the data
    assert again.count_events() == 1
    assert len(migrations.applied(again.database())) == 3
    again.close()


def test_insert_events_dedupes_by_event_id(store: Store) -> None:
    a, b = ev(seq=1), ev(seq=2)
    new, dup = store.insert_events([a, b, a], received_at=10.0)
    assert new == [a.event_id, b.event_id]
    assert dup == [a.event_id]
    new, dup = store.insert_events([b, ev(seq=3)], received_at=11.0)
    assert dup == [b.event_id] and len(new) == 1
    assert store.count_events() == 3
    row = store.get_event(a.event_id)
    assert row is not None
    assert row["payload"] == {"button": "panic", "n": 1}
    assert row["received_at"] == 10.0 and row["type"] == "PANIC" and row["time_quality"] == "synced"
    assert store.get_event("nope") is None


def test_list_events_streams_in_arrival_order(store: Store) -> None:
    for i in range(5):
        store.insert_events([ev("node-a", i), ev("node-b", i)], float(i))
    rows = store.list_events(limit=4)
    rowids = [r["rowid"] for r in rows]
    assert rowids == sorted(rowids) and len(rows) == 4
    rest = store.list_events(since_rowid=rowids[-1])
    assert len(rest) == 6 and rest[0]["rowid"] > rowids[-1]
    only_b = store.list_events(node_id="node-b")
    assert [r["seq"] for r in only_b] == [0, 1, 2, 3, 4]
    assert store.count_events("node-b") == 5
    assert [r["seq"] for r in store.latest_events(node_id="node-a", limit=2)] == [3, 4]


def test_snapshots_store_bytes_once(store: Store) -> None:
    data = bytes(range(256)) * 10
    snap = SnapshotEnvelope(snapshot_id="snap-0000000000000001", event_id="e" * 32, node_id="node-a",
                            taken_at=5.0, data=b64(data))
    assert store.insert_snapshot(snap, 6.0) is True
    assert store.insert_snapshot(snap, 7.0) is False
    got = store.get_snapshot(snap.snapshot_id)
    assert got is not None and got["data"] == data and got["size"] == len(data) and got["sealed"] is False
    assert [s["snapshot_id"] for s in store.list_snapshots(event_id="e" * 32)] == [snap.snapshot_id]
    assert store.list_snapshots(node_id="node-b") == []
    assert "data" not in store.list_snapshots()[0]


def test_presence_and_heartbeat_update_nodes(store: Store) -> None:
    now = time.time()
    store.upsert_presence(Presence(node_id="node-a", state="online", boot_id="b1", version="1.0",
                                   kelurahan_code="33.74.01.1001", rw=5, rt=3, display_name="Pos RT 03"), now)
    store.upsert_heartbeat(Heartbeat(node_id="node-a", boot_id="b1", at=now, version="1.1", time_quality="rtc",
                                     clock_offset=-0.5, outbox={"ready": 7, "in_flight": 3, "acked": 100},
                                     siren={"on": False}), now)
    # A later presence without identity fields keeps the known identity.
    store.upsert_presence(Presence(node_id="node-a", state="offline"), now + 1)
    (node,) = store.list_nodes(now=now + 2)
    assert node["node_id"] == "node-a" and node["online"] is False and node["status"] == "offline"
    assert node["backlog"] == 10 and node["siren"] == {"on": False} and node["version"] == "1.1"
    assert node["time_quality"] == "rtc" and node["clock_offset"] == -0.5
    # The presence's place and name are never applied: the post is not enrolled, so it has none.
    assert (node["kelurahan_code"], node["rw"], node["rt"], node["display_name"]) == (None, None, None, None)
    store.upsert_heartbeat(Heartbeat(node_id="node-a", boot_id="b1", at=now, version="1.1", time_quality="rtc"),
                           now + 3)
    (node,) = store.list_nodes(now=now + 3 + 10_000)
    assert node["online"] is True and node["status"] == "stale" and node["backlog"] == 0
    store.insert_events([ev("node-z")], now)
    assert {n["node_id"] for n in store.list_nodes()} == {"node-a", "node-z"}


def test_place_and_name_come_from_the_registry_only(store: Store) -> None:
    """Issue 10: a node row's kelurahan/RW/RT/name/coordinates are the enrolment registry's; a
    presence claiming another place changes nothing; (re-)enrolment reaches the change feed."""
    now = time.time()
    feed = store.change_feed()
    try:
        mark = feed.head()
        register(store, "node-a", "33.74.01.1001/2/1", name="Pos RW 2", lat=-7.05, lon=110.43)
        store.upsert_presence(Presence(node_id="node-a", state="online", boot_id="b1", version="1.0",
                                       kelurahan_code="33.74.01.1001", rw=1, rt=1, display_name="Pos RW 1"), now)
        (node,) = store.list_nodes(now=now)
        assert (node["kelurahan_code"], node["rw"], node["rt"]) == ("33.74.01.1001", 2, 1)
        assert node["display_name"] == "Pos RW 2" and node["registry_status"] == "enrolled"
        assert (node["lat"], node["lon"]) == (-7.05, 110.43)
        assert node["online"] is True and node["version"] == "1.0"

        def nodes_seen(m: Any) -> tuple[Any, dict[str, Any]]:
            deadline = time.monotonic() + 30
            seen: dict[str, Any] = {}
            while time.monotonic() < deadline:
                ch = feed.wait(m, 1.0)
                m = ch.mark
                seen.update({n["node_id"]: n for n in ch.nodes})
                if "node-a" in seen:
                    return m, seen
            return m, seen

        mark, seen = nodes_seen(mark)
        assert seen["node-a"]["rw"] == 2
        # Re-enrolment at another place: the desk's feed carries the new registry place.
        register(store, "node-a", "33.74.01.1001/3/4", name="Pos RW 3")
        mark, seen = nodes_seen(mark)
        assert (seen["node-a"]["rw"], seen["node-a"]["rt"], seen["node-a"]["lat"]) == (3, 4, None)
    finally:
        feed.close()


def test_security_events_are_one_counted_row_per_node_and_kind(store: Store) -> None:
    tables = store.registry_tables()
    tables.record_security_events([SecurityEventRow("node-a", "place_mismatch", '{"rw":1}', '{"rw":2}', 3, 10.0,
                                                    12.0)])
    tables.record_security_events([SecurityEventRow("node-a", "place_mismatch", '{"rw":4}', '{"rw":2}', 2, 11.0,
                                                    20.0),
                                   SecurityEventRow("node-b", "place_mismatch", '{"rt":9}', '{"rt":1}', 1, 5.0,
                                                    5.0)])
    rows = tables.security_events()
    assert [r["node_id"] for r in rows] == ["node-a", "node-b"]
    a = rows[0]
    assert (a["count"], a["first_at"], a["last_at"], a["claimed"]) == (5, 10.0, 20.0, '{"rw":4}')


def test_rejections_and_commands(store: Store) -> None:
    store.record_rejection(node_id="node-a", topic="t", reason="not_json", detail="x", at=1.0)
    store.record_rejection(node_id=None, topic="t", reason="not_json", detail="y", at=2.0)
    store.record_rejection(node_id="node-a", topic="t", reason="wrong_topic", detail="z", at=3.0)
    assert store.rejection_counts() == {"not_json": 2, "wrong_topic": 1}
    cmd = Command(command_id="cmd-00000001", node_id="node-a", action="sound", params={"pattern": "2-2-2"},
                  issued_at=10.0, expires_at=310.0)
    store.record_command(cmd, issued_by="operator")
    store.record_command_result(CommandResult(command_id=cmd.command_id, node_id="node-a", ok=True, detail="playing",
                                              at=11.0, data={"siren": "on"}), 12.0)
    store.record_command_result(CommandResult(command_id="cmd-unknown1", node_id="node-b", ok=False, at=11.0), 12.0)
    cmds = {c["command_id"]: c for c in store.list_commands()}
    assert cmds[cmd.command_id]["status"] == "ok" and cmds[cmd.command_id]["result_data"] == {"siren": "on"}
    assert cmds[cmd.command_id]["params"] == {"pattern": "2-2-2"} and cmds[cmd.command_id]["issued_by"] == "operator"
    assert cmds["cmd-unknown1"]["status"] == "failed"
    assert [c["command_id"] for c in store.list_commands("node-a")] == [cmd.command_id]


def test_thread_safe_concurrent_writers(store_url: str) -> None:
    store = open_store(store_url)
    other = open_store(store_url)  # a second connection to the same database (another worker)
    shared = [ev(seq=i) for i in range(50)]
    errors: list[BaseException] = []

    def work(s: Store, k: int) -> None:
        try:
            for i in range(20):
                s.insert_events([ev(f"node-{k:03d}", i), *shared[i:i + 5]], float(i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(store if k % 2 else other, k)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert store.count_events() == 6 * 20 + 24  # shared[0:24] got inserted, each once
    ids = [r["event_id"] for r in store.list_events(limit=10_000)]
    assert len(ids) == len(set(ids)) == store.count_events()
    store.close()
    other.close()


def test_last_event_times_per_node_for_the_post_overview(store: Store) -> None:
    store.insert_events([ev("node-a", 1, type="SELFTEST", priority=4),
                         ev("node-a", 5, type="SELFTEST", priority=4),
                         ev("node-b", 2, type="SELFTEST", priority=4),
                         ev("node-b", 9, type="PANIC")], time.time())
    assert store.last_event_times("SELFTEST") == {"node-a": 1_700_000_005.0,
                                                  "node-b": 1_700_000_002.0}
    assert store.last_event_times("SIREN_TEST") == {}  # other types: refused (tests/test_event_indexes.py)


def test_existing_sqlite_desk_tables_migrate_to_per_post_incident_keys(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from central_sync.store.sqlite_desk_schema import desk_migrations

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    desk_migrations.apply(Database(conn), stop_before="m002_incident_events_per_node")
    conn.execute("INSERT INTO incidents(incident_id, node_id, type, priority, state, opened_at, last_event_at, "
                 "updated_at, event_count) VALUES ('inc-1', 'pos-a', 'PANIC', 1, 'new', 1, 1, 1, 1)")
    conn.execute("INSERT INTO incident_events(event_id, incident_id) VALUES ('ev-1', 'inc-1')")
    conn.commit()
    conn.close()
    store = CentralStore(path)
    try:
        assert store.desk().incident_of_event("ev-1", "pos-a") == "inc-1"
        assert store.desk().incident_of_event("ev-1", "pos-b") is None
        assert store.desk().incident_event_ids("inc-1") == ["ev-1"]
    finally:
        store.close()
