"""The node database schema: one sqlite-utils ``Migrations`` set (append, never edit a step).

* ``0001_events`` / ``0002_snapshots``: the event outbox and the snapshot rows.
* ``0003_identity``: ``meta`` (whose database this is: node id, database uuid, a commit counter
  every write transaction bumps, see ``identity.py``), ``foreign_events`` (rows of another node
  id, moved aside and never sent), and the indexes that keep the alarm path O(P1 rows):
  ``events_unacked`` (partial, ``status != 'acked'``) serves ``oldest_unacked`` and eviction of
  unacked rows; ``events_acked`` (partial) serves pruning and eviction of acked rows. SQLite
  cannot use ``events_claim (status, priority, id)`` for ``status != 'acked'``; a partial index
  is used when the query repeats its ``WHERE`` term verbatim. docs/storage.md has the plans.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

__all__ = ["EVENT_COLUMNS", "MIGRATIONS"]

#: The node database schema (one migration set; append, never edit applied steps).
MIGRATIONS = Migrations("kentongan.edge")


@MIGRATIONS(name="0001_events")
def _m0001_events(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
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
            status TEXT NOT NULL DEFAULT 'ready',
            attempts INTEGER NOT NULL DEFAULT 0,
            claimed_at REAL,
            acked_at REAL
        )"""
    )
    db.execute("CREATE INDEX events_claim ON events (status, priority, id)")
    db.execute(
        """
        CREATE TABLE event_flags (
            event_id TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (event_id, key)
        ) WITHOUT ROWID"""
    )


@MIGRATIONS(name="0002_snapshots")
def _m0002_snapshots(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE snapshots (
            snapshot_id TEXT PRIMARY KEY,
            event_id TEXT,
            path TEXT NOT NULL,
            size INTEGER NOT NULL,
            priority INTEGER NOT NULL,
            taken_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'ready',
            sealed INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            claimed_at REAL,
            acked_at REAL
        )"""
    )
    db.execute("CREATE INDEX snapshots_claim ON snapshots (status, priority, taken_at)")


#: Columns of ``events`` (and the first columns of ``foreign_events``), in table order.
EVENT_COLUMNS = ("id, event_id, node_id, boot_id, seq, mono_ns, wall_time, time_quality, type,"
                 " priority, incident_id, payload, status, attempts, claimed_at, acked_at")


@MIGRATIONS(name="0003_identity")
def _m0003_identity(db: Database) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
    db.execute("INSERT INTO meta (key, value) VALUES ('commits', '0')")
    db.execute(
        """
        CREATE TABLE foreign_events (
            id INTEGER PRIMARY KEY,
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
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            claimed_at REAL,
            acked_at REAL,
            moved_at REAL NOT NULL,
            reason TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX events_unacked ON events (priority, id) WHERE status != 'acked'")
    db.execute("CREATE INDEX events_acked ON events (acked_at) WHERE status = 'acked'")
