"""SQLite schema of central's store (sqlite-utils ``Migrations`` set ``central_store``)."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("central_store")

@migrations()
def m001_initial(db: Database) -> None:
    db.execute("""
        CREATE TABLE events (
            rowid INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            node_id TEXT NOT NULL,
            boot_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            mono_ns INTEGER NOT NULL,
            wall_time REAL NOT NULL,
            time_quality TEXT NOT NULL,
            type TEXT NOT NULL,
            priority INTEGER NOT NULL,
            incident_id TEXT,
            payload TEXT NOT NULL,
            sig TEXT,
            received_at REAL NOT NULL
        )""")
    db.execute("CREATE INDEX idx_events_node_rowid ON events (node_id, rowid)")
    db.execute("""
        CREATE TABLE snapshots (
            snapshot_id TEXT PRIMARY KEY,
            event_id TEXT,
            node_id TEXT NOT NULL,
            taken_at REAL NOT NULL,
            content_type TEXT NOT NULL,
            sealed INTEGER NOT NULL,
            data BLOB NOT NULL,
            size INTEGER NOT NULL,
            sig TEXT,
            received_at REAL NOT NULL
        )""")
    db.execute("CREATE INDEX idx_snapshots_event ON snapshots (event_id)")
    db.execute("CREATE INDEX idx_snapshots_node ON snapshots (node_id, taken_at)")
    db.execute("""
        CREATE TABLE nodes (
            node_id TEXT PRIMARY KEY,
            online INTEGER NOT NULL DEFAULT 0,
            boot_id TEXT,
            version TEXT,
            last_seen REAL,
            presence_at REAL,
            heartbeat_at REAL,
            backlog INTEGER,
            outbox TEXT,
            siren TEXT,
            time_quality TEXT,
            clock_offset REAL,
            kelurahan_code TEXT,
            rw INTEGER,
            rt INTEGER,
            display_name TEXT
        )""")
    db.execute("""
        CREATE TABLE rejections (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            node_id TEXT,
            topic TEXT NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            at REAL NOT NULL
        )""")
    db.execute("CREATE INDEX idx_rejections_reason ON rejections (reason)")
    db.execute("""
        CREATE TABLE commands (
            command_id TEXT PRIMARY KEY,
            node_id TEXT NOT NULL,
            action TEXT NOT NULL,
            params TEXT NOT NULL,
            issued_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            issuer TEXT NOT NULL,
            issued_by TEXT NOT NULL,
            signed INTEGER NOT NULL,
            status TEXT NOT NULL,
            result_ok INTEGER,
            result_detail TEXT,
            result_data TEXT,
            result_at REAL,
            result_received_at REAL
        )""")
    db.execute("CREATE INDEX idx_commands_node ON commands (node_id, issued_at)")


@migrations()
def m002_node_scoped_dedup_and_change_seq(db: Database) -> None:
    """De-duplicate per (node_id, event_id), not globally (one post cannot shadow another's event
    ids); ``change_seq`` on nodes and a change counter for the desk's change feed."""
    db.execute("""
        CREATE TABLE events_new (
            rowid INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            boot_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            mono_ns INTEGER NOT NULL,
            wall_time REAL NOT NULL,
            time_quality TEXT NOT NULL,
            type TEXT NOT NULL,
            priority INTEGER NOT NULL,
            incident_id TEXT,
            payload TEXT NOT NULL,
            sig TEXT,
            received_at REAL NOT NULL,
            UNIQUE (node_id, event_id)
        )""")
    db.execute("INSERT INTO events_new SELECT * FROM events ORDER BY rowid")
    db.execute("DROP TABLE events")
    db.execute("ALTER TABLE events_new RENAME TO events")
    db.execute("CREATE INDEX idx_events_node_rowid ON events (node_id, rowid)")
    db.execute("CREATE INDEX idx_events_event_id ON events (event_id)")
    db.execute("CREATE INDEX idx_events_type_node ON events (type, node_id, wall_time)")
    db.execute("ALTER TABLE nodes ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX idx_nodes_change_seq ON nodes (change_seq)")
    db.execute("CREATE TABLE change_counter (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)")
    db.execute("INSERT INTO change_counter (id, seq) VALUES (1, 0)")
    db.execute("ALTER TABLE rejections ADD COLUMN count INTEGER NOT NULL DEFAULT 1")
    db.execute("ALTER TABLE rejections ADD COLUMN last_at REAL")


@migrations()
def m003_lean_event_indexes(db: Database) -> None:
    """Fewer b-trees written per stored event (docs/central-store.md, "Indexes on the hot insert"):
    ``idx_events_event_id`` goes (every lookup names the post too and uses the UNIQUE
    ``(node_id, event_id)`` index), and ``idx_events_type_node`` holds only the event types the
    posts page asks for (``rows.TIMED_EVENT_TYPES``), not every STATUS and PANIC."""
    db.execute("DROP INDEX IF EXISTS idx_events_event_id")
    db.execute("DROP INDEX IF EXISTS idx_events_type_node")
    db.execute("CREATE INDEX idx_events_type_node ON events (type, node_id, wall_time) "
               "WHERE type IN ('SELFTEST', 'SIREN_TEST', 'SIREN_FAULT')")  # rows.TIMED_TYPES_SQL
