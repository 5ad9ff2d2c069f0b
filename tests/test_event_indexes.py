"""The event indexes kept lean for ingest's hot insert (m003 / PostgreSQL 0009, docs/central-store.md):
look-ups by event id name the post, the type index holds only the types the posts page asks for,
on every backend; SQLite's plans use those indexes; both migrations work on an existing database."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest

from central_sync.store import CentralStore, Store, open_store
from central_sync.store.postgres_schema import migrate
from central_sync.store.rows import TIMED_EVENT_TYPES, TIMED_TYPES_SQL
from edge.sync.wire import EventEnvelope


def ev(node: str, event_type: str, wall: float, event_id: str | None = None) -> EventEnvelope:
    return EventEnvelope.model_validate(dict(
        event_id=event_id or uuid.uuid4().hex, node_id=node, boot_id="boot-1", seq=int(wall), mono_ns=1,
        wall_time=wall, time_quality="synced", type=event_type, priority=2, payload={"n": wall}))


def test_last_event_times_per_post_on_every_backend(any_store: Store) -> None:
    any_store.commit_events([ev("pos-a", "SELFTEST", 100.0), ev("pos-a", "SELFTEST", 300.0),
                             ev("pos-a", "STATUS", 900.0), ev("pos-b", "SELFTEST", 200.0),
                             ev("pos-b", "SIREN_FAULT", 50.0), ev("pos-c", "STATUS", 10.0)], 1.0)
    assert any_store.last_event_times("SELFTEST") == {"pos-a": 300.0, "pos-b": 200.0}
    assert any_store.last_event_times("SIREN_FAULT") == {"pos-b": 50.0}
    assert any_store.last_event_times("SIREN_TEST") == {}
    with pytest.raises(ValueError, match="STATUS"):  # not held by the partial index: refused, never a scan
        any_store.last_event_times("STATUS")


def test_get_events_by_post_on_every_backend(any_store: Store) -> None:
    shared = uuid.uuid4().hex  # event ids are unique per post only
    a, b = ev("pos-a", "PANIC", 1.0, shared), ev("pos-b", "PANIC", 2.0, shared)
    other = ev("pos-a", "STATUS", 3.0)
    any_store.commit_events([a, b, other], 1.0)
    rows = any_store.get_events([shared, other.event_id], "pos-a")
    assert [(r["node_id"], r["event_id"]) for r in rows] == [("pos-a", shared), ("pos-a", other.event_id)]
    assert [r["node_id"] for r in any_store.get_events([shared], "pos-b")] == ["pos-b"]
    assert any_store.get_events([other.event_id], "pos-b") == []
    one = any_store.get_event(shared, "pos-b")
    assert one is not None and one["node_id"] == "pos-b" and one["wall_time"] == 2.0
    assert any_store.get_event("nope", "pos-a") is None
    assert len(any_store.get_events([shared])) == 2  # without the post: both (a scan, tests and tools)


def _plan(store: CentralStore, sql: str, args: tuple[object, ...]) -> str:
    return " ".join(str(r[3]) for r in store.connection().execute(f"EXPLAIN QUERY PLAN {sql}", args))


def test_sqlite_event_reads_use_their_index(tmp_path: Path) -> None:
    store = CentralStore(tmp_path / "central.db")
    try:
        conn = store.connection()
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                            "AND tbl_name = 'events'")}
        # rowid b-tree + UNIQUE (node_id, event_id) + per post in arrival order + the partial type index
        assert names == {"sqlite_autoindex_events_1", "idx_events_node_rowid", "idx_events_type_node"}
        plan = _plan(store, f"SELECT node_id, MAX(wall_time) FROM events WHERE type = ? AND {TIMED_TYPES_SQL} "
                            "GROUP BY node_id", ("SELFTEST",))
        assert "idx_events_type_node" in plan, plan
        plan = _plan(store, "SELECT * FROM events WHERE node_id = ? AND event_id IN (?, ?)", ("pos-a", "x", "y"))
        assert "sqlite_autoindex_events_1" in plan, plan
        # The partial index holds the timed types only.
        store.commit_events([ev("pos-a", t, 1.0) for t in (*TIMED_EVENT_TYPES, "STATUS", "PANIC")], 1.0)
        assert conn.execute("SELECT COUNT(*) FROM events INDEXED BY idx_events_type_node "
                            f"WHERE {TIMED_TYPES_SQL}").fetchone()[0] == 3
    finally:
        store.close()


def test_sqlite_migration_on_an_existing_database(tmp_path: Path) -> None:
    """A database made before m003 (its two full indexes) gets the lean ones and keeps its rows."""
    path = tmp_path / "central.db"
    store = CentralStore(path)
    store.commit_events([ev("pos-a", "SELFTEST", 5.0), ev("pos-a", "STATUS", 6.0)], 1.0)
    store.close()
    conn = sqlite3.connect(path)
    with conn:  # back to m002's schema
        conn.execute("DROP INDEX idx_events_type_node")
        conn.execute("CREATE INDEX idx_events_event_id ON events (event_id)")
        conn.execute("CREATE INDEX idx_events_type_node ON events (type, node_id, wall_time)")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = 'm003_lean_event_indexes'")
    conn.close()
    store = CentralStore(path)
    try:
        sql = {r[0]: r[1] for r in store.connection().execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'")}
        assert "idx_events_event_id" not in sql and "WHERE type IN" in sql["idx_events_type_node"]
        assert store.count_events() == 2 and store.last_event_times("SELFTEST") == {"pos-a": 5.0}
    finally:
        store.close()


def test_postgres_migration_on_an_existing_database(pg_url: str) -> None:
    store = open_store(pg_url)
    store.commit_events([ev("pos-a", "SELFTEST", 5.0), ev("pos-a", "STATUS", 6.0)], 1.0)
    store.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # back to 0008's schema
        conn.execute("DROP INDEX events_type_node")
        conn.execute("CREATE INDEX events_event_id ON events (event_id)")
        conn.execute("CREATE INDEX events_type_node ON events (type, node_id, wall_time)")
        conn.execute("DELETE FROM kentongan_migrations WHERE name = '0009_lean_event_indexes'")
        assert migrate(conn) == ["0009_lean_event_indexes"]
        defs = {r[0]: r[1] for r in conn.execute("SELECT indexname, indexdef FROM pg_indexes "
                                                 "WHERE tablename = 'events'")}
    assert "events_event_id" not in defs and "WHERE" in defs["events_type_node"], defs
    store = open_store(pg_url)
    try:
        assert store.count_events() == 2 and store.last_event_times("SELFTEST") == {"pos-a": 5.0}
    finally:
        store.close()
