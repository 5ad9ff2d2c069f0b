"""The web app's own tables, kept in central's SQLite file beside the store's tables.

One connection per ``WebDB`` (``check_same_thread=False`` behind a lock) so the web app works
whether it is served from the ingest event loop or from a test thread. Schema changes are
sqlite-utils migrations in the set ``kentongan_web``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from central_sync.errors import StoreError

migrations = Migrations("kentongan_web")


@migrations()
def m001_initial(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS web_users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE IF NOT EXISTS web_user_rts (
            name TEXT NOT NULL REFERENCES web_users(name) ON DELETE CASCADE,
            kelurahan_code TEXT NOT NULL,
            rw INTEGER NOT NULL,
            rt INTEGER NOT NULL,
            PRIMARY KEY (name, kelurahan_code, rw, rt)
        );
        CREATE TABLE IF NOT EXISTS web_sessions (
            token_hash TEXT PRIMARY KEY,
            name TEXT NOT NULL REFERENCES web_users(name) ON DELETE CASCADE,
            csrf TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            client TEXT
        );
        CREATE TABLE IF NOT EXISTS web_login_attempts (
            key TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS web_login_attempts_key ON web_login_attempts(key, at);
        CREATE TABLE IF NOT EXISTS access_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            user TEXT NOT NULL,
            role TEXT NOT NULL,
            action TEXT NOT NULL,
            object_kind TEXT NOT NULL,
            object_id TEXT NOT NULL,
            client TEXT,
            allowed INTEGER NOT NULL DEFAULT 1
        );
        CREATE TABLE IF NOT EXISTS incidents (
            incident_id TEXT PRIMARY KEY,
            node_id TEXT NOT NULL,
            type TEXT NOT NULL,
            priority INTEGER NOT NULL,
            state TEXT NOT NULL,
            opened_at REAL NOT NULL,
            last_event_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            closed_at REAL,
            time_quality TEXT,
            event_count INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS incidents_open ON incidents(node_id, type, state);
        CREATE TABLE IF NOT EXISTS incident_events (
            event_id TEXT PRIMARY KEY,
            incident_id TEXT NOT NULL REFERENCES incidents(incident_id) ON DELETE CASCADE
        );
        CREATE INDEX IF NOT EXISTS incident_events_incident ON incident_events(incident_id);
        CREATE TABLE IF NOT EXISTS incident_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id TEXT NOT NULL REFERENCES incidents(incident_id) ON DELETE CASCADE,
            at REAL NOT NULL,
            step TEXT NOT NULL,
            actor TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE IF NOT EXISTS web_warnings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            node_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS retention_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            object_id TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS web_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """
    )


class WebDB:
    """Central's SQLite connection with the web tables migrated.

    ``WebDB.on_store(store)`` shares the ``CentralStore``'s connection and lock (one writer per
    process); ``WebDB(path)`` opens its own connection (tools and tests without a store).
    """

    def __init__(self, path: str | Path | None = None, *, conn: sqlite3.Connection | None = None,
                 lock: Any = None) -> None:
        self._owned = conn is None
        if conn is None:
            if path is None:
                raise StoreError("WebDB needs a path or a connection")
            try:
                conn = sqlite3.connect(str(path), check_same_thread=False, timeout=10,
                                       isolation_level=None)
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open web tables in {path}: {exc}") from exc
        self.path = str(path) if path is not None else ""
        self._conn = conn
        self._lock = lock if lock is not None else threading.RLock()
        try:
            with self._lock:
                migrations.apply(Database(self._conn))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot migrate web tables: {exc}") from exc

    @classmethod
    def on_store(cls, store: Any) -> WebDB:
        """Share a CentralStore's connection and lock; open its file otherwise."""
        if hasattr(store, "connection") and hasattr(store, "lock"):
            return cls(getattr(store, "path", None), conn=store.connection(), lock=store.lock)
        return cls(store.path)

    def close(self) -> None:
        if self._owned:
            with self._lock:
                self._conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on error)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, params).fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; return the number of rows changed."""
        with self.tx() as conn:
            return conn.execute(sql, params).rowcount

    def get_state(self, key: str, default: str = "") -> str:
        row = self.one("SELECT value FROM web_state WHERE key = ?", (key,))
        return str(row["value"]) if row else default

    def set_state(self, key: str, value: str) -> None:
        self.execute("INSERT INTO web_state(key, value) VALUES (?, ?) "
                     "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
