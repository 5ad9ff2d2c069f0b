"""Central's store on SQLite: the embedded default (demo, one-machine installs).

The schema is built by sqlite-utils ``Migrations`` (set ``central_store``) under a file lock
(``locking.py``), so several processes may open a fresh file at once. Durability: WAL with
``synchronous=FULL``, because central's commit is what a node trusts when it deletes an event
after the ``Ack``.

Thread-safety: one ``sqlite3`` connection shared by all threads and guarded by an ``RLock``;
every public method takes the lock. Several processes may open the same file; SQLite's busy
timeout serialises their writers, and a writer still locked out raises an error that
``is_transient`` recognises. Writes are serialised, so ``rowid`` and ``change_seq`` grow in commit
order and the change feed can poll them.

Rejections and commands (the operations log) are ``sqlite_ops_log.SqliteOpsLog``, mixed in.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from central_sync.errors import StoreError
from central_sync.store.audit_tables import AuditTables
from central_sync.store.base import ChangeFeed, Row, TransientStoreError, coalesce_nodes
from central_sync.store.checks import ValueRefused, check_event, safe_text
from central_sync.store.desk_tables import DeskTables
from central_sync.store.locking import apply_pending, migration_lock
from central_sync.store.registry_tables import RegistryTables
from central_sync.store.rows import (
    EVENT_SELECT,
    NODE_ID,
    NODE_SELECT,
    SNAPSHOT_META,
    TIMED_TYPES_SQL,
    check_timed_type,
    event_row,
    node_row,
)
from central_sync.store.siren_tables import SirenTables
from central_sync.store.sql import SqliteRunner
from central_sync.store.sqlite_desk_schema import desk_migrations
from central_sync.store.sqlite_ops_log import SqliteOpsLog
from central_sync.store.sqlite_registry_schema import MIGRATIONS as registry_migrations
from central_sync.store.sqlite_schema import migrations
from central_sync.store_types import EventCommit, RejectedRow
from edge.sync.wire import EventEnvelope, Heartbeat, Presence, SnapshotEnvelope, unb64

__all__ = ["CentralStore", "is_sqlite_transient", "migrations"]


_INSERT_EVENT = ("INSERT OR IGNORE INTO events (event_id, node_id, boot_id, seq, mono_ns, wall_time, time_quality, "
                 "type, priority, incident_id, payload, sig, received_at) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
#: ``json.dumps(payload, separators=(",", ":"), ensure_ascii=False)`` without an encoder per row.
_PAYLOAD_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

class CentralStore(SqliteOpsLog):
    """Central's database. See the module docstring for durability and thread-safety."""

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.busy_timeout_s = busy_timeout_s
        self.lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            # Switching a fresh file to WAL needs its exclusive lock, and SQLite may answer
            # "database is locked" at once instead of waiting when another process is doing the
            # same: the switch runs under the migration file lock with the migrations.
            with self.lock, migration_lock(conn):
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                apply_pending(conn, migrations, desk_migrations, registry_migrations)
            self._conn = conn
            self._db = Database(conn)
            reader = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                     check_same_thread=False)
            reader.execute("PRAGMA query_only=ON")
            self._reader = reader
            runner = SqliteRunner(conn, self.lock, reader)
            self._desk = DeskTables(runner)
            self._registry = RegistryTables(runner)
            self._audit = AuditTables(runner)
            self._sirens = SirenTables(runner)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open central database {self.path}: {exc}") from exc
        self._closed = False

    # -- plumbing --------------------------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        """The shared connection (autocommit mode; rows are ``sqlite3.Row``). Hold ``lock``."""
        return self._conn

    def database(self) -> Database:
        """The sqlite-utils view of the connection, for other modules' ``Migrations.apply``."""
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` so busy errors happen up front); a locked
        or busy database raises ``TransientStoreError``."""
        with self.lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if is_sqlite_transient(exc):
                    raise TransientStoreError(f"database busy: {exc}") from exc
                raise
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                try:
                    conn.execute("COMMIT")
                except sqlite3.OperationalError as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if is_sqlite_transient(exc):
                        raise TransientStoreError(f"database busy: {exc}") from exc
                    raise

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self.lock:
            return list(self._conn.execute(sql, params).fetchall())

    def _bump(self, conn: sqlite3.Connection) -> int:
        """Next change sequence number (inside a write transaction: commit-ordered)."""
        conn.execute("UPDATE change_counter SET seq = seq + 1 WHERE id = 1")
        return int(conn.execute("SELECT seq FROM change_counter WHERE id = 1").fetchone()[0])

    def desk(self) -> DeskTables:
        """The desk's tables (incidents, users, sessions, ...) in this file."""
        return self._desk

    def registry_tables(self) -> RegistryTables:
        """The node registry's tables in this file."""
        return self._registry

    def audit_tables(self) -> AuditTables:
        """The administrative audit log in this file."""
        return self._audit

    def siren_tables(self) -> SirenTables:
        """Siren activations central started (``central_sync.siren_control``)."""
        return self._sirens

    def change_feed(self) -> ChangeFeed:
        """Polls this file for commits of any process (see ``sqlite_feed.SqliteChangeFeed``)."""
        from central_sync.store.sqlite_feed import SqliteChangeFeed

        return SqliteChangeFeed(self.path, busy_timeout_s=self.busy_timeout_s)

    def close(self) -> None:
        with self.lock:
            if not self._closed:
                self._closed = True
                self._conn.close()
                self._reader.close()

    # -- events ----------------------------------------------------------------------------------
    def commit_events(self, envs: Sequence[EventEnvelope], received_at: float) -> EventCommit:
        """Insert events in ONE transaction; duplicates per (node_id, event_id) are reported, rows
        the store cannot hold are rejected (never raised). A statement that still fails splits the
        batch (savepoints) until only the offending rows are left out."""
        out = EventCommit()
        good: list[EventEnvelope] = []
        for env in envs:
            try:
                check_event(env)
            except ValueRefused as exc:
                out.rejected.append(RejectedRow(safe_text(env.event_id, 64), exc.reason, exc.detail))
                continue
            good.append(env)
        if not good:
            return out
        with self._tx() as conn:
            outcome = self._insert_rows(conn, good, received_at)
            touched = sorted({env.node_id for i, env in enumerate(good) if outcome[i] is True})
            if touched:
                seq = self._bump(conn)
                conn.executemany(
                    "INSERT INTO nodes (node_id, last_seen, change_seq) VALUES (?, ?, ?) ON CONFLICT (node_id) "
                    "DO UPDATE SET last_seen = MAX(COALESCE(last_seen, 0), excluded.last_seen), "
                    "change_seq = excluded.change_seq",
                    [(node_id, received_at, seq) for node_id in touched])
        for i, env in enumerate(good):
            result = outcome[i]
            if isinstance(result, RejectedRow):
                out.rejected.append(result)
            elif result:
                out.inserted.append(env.event_id)
            else:
                out.duplicates.append(env.event_id)
        return out

    @staticmethod
    def _insert_rows(conn: sqlite3.Connection, envs: list[EventEnvelope],
                     received_at: float) -> list[bool | RejectedRow]:
        """Insert each row with a statement of its own: True (new), False (duplicate) or the
        rejection of a row the database refused. SQLite undoes a failing statement alone
        (statement atomicity) and the transaction goes on with the other rows, so no savepoint
        is needed (its sub-journal copied every page the batch touched, past 64 KiB into a
        temporary file: measured at a fifth of the commit's CPU)."""
        out: list[bool | RejectedRow] = []
        execute = conn.execute
        for env in envs:
            try:
                cur = execute(_INSERT_EVENT, (
                    env.event_id, env.node_id, env.boot_id, env.seq, env.mono_ns, env.wall_time,
                    env.time_quality, env.type, env.priority, env.incident_id,
                    _PAYLOAD_JSON(env.payload), env.sig, received_at))
            except (sqlite3.DataError, sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError,
                    OverflowError, UnicodeError, ValueError, TypeError) as exc:
                out.append(RejectedRow(safe_text(env.event_id, 64), "store_refused",
                                       safe_text(f"{type(exc).__name__}: {exc}", 300)))
                continue
            out.append(cur.rowcount == 1)
        return out

    def insert_events(self, envs: Sequence[EventEnvelope], received_at: float) -> tuple[list[str], list[str]]:
        """``commit_events`` returning (new ids, duplicate ids) in input order (rejected rows are left out)."""
        result = self.commit_events(envs, received_at)
        return result.inserted, result.duplicates

    def get_events(self, event_ids: Sequence[str], node_id: str | None = None) -> list[dict[str, Any]]:
        """Rows of these events (those that exist), in arrival order. With ``node_id`` (event ids
        are unique per post only) a look-up in the UNIQUE ``(node_id, event_id)`` index; without
        it a scan of the table (tests and tools: no index on ``event_id`` alone, see m003)."""
        out: list[dict[str, Any]] = []
        ids = list(event_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            if node_id is None:
                rows = self._query(f"{EVENT_SELECT} WHERE event_id IN ({marks})", chunk)
            else:
                rows = self._query(f"{EVENT_SELECT} WHERE node_id = ? AND event_id IN ({marks})", [node_id, *chunk])
            out.extend(event_row(dict(r)) for r in rows)
        out.sort(key=lambda r: r["rowid"])
        return out

    def list_events(self, *, node_id: str | None = None, since_rowid: int = 0,
                    limit: int = 1000) -> list[dict[str, Any]]:
        """Events with ``rowid > since_rowid`` in arrival order (``rowid`` increases)."""
        if node_id is None:
            rows = self._query(f"{EVENT_SELECT} WHERE rowid > ? ORDER BY rowid LIMIT ?", (since_rowid, limit))
        else:
            rows = self._query(f"{EVENT_SELECT} WHERE node_id = ? AND rowid > ? ORDER BY rowid LIMIT ?",
                               (node_id, since_rowid, limit))
        return [event_row(dict(r)) for r in rows]

    def latest_events(self, *, node_id: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The last ``limit`` events (optionally of one node), oldest first."""
        if node_id is None:
            rows = self._query(f"{EVENT_SELECT} ORDER BY rowid DESC LIMIT ?", (limit,))
        else:
            rows = self._query(f"{EVENT_SELECT} WHERE node_id = ? ORDER BY rowid DESC LIMIT ?", (node_id, limit))
        return [event_row(dict(r)) for r in reversed(rows)]

    def last_event_times(self, event_type: str) -> dict[str, float]:
        """Per node, the wall time of its latest event of ``event_type``, one of
        ``TIMED_EVENT_TYPES`` (the partial index ``idx_events_type_node`` holds only those)."""
        check_timed_type(event_type)
        rows = self._query(f"SELECT node_id, MAX(wall_time) FROM events WHERE type = ? AND {TIMED_TYPES_SQL} "
                           "GROUP BY node_id", (event_type,))
        return {r[0]: r[1] for r in rows}

    def get_event(self, event_id: str, node_id: str | None = None) -> dict[str, Any] | None:
        """One event; ``node_id`` as in ``get_events`` (without it: a scan, tests and tools)."""
        rows = self.get_events([event_id], node_id)
        return rows[0] if rows else None

    def count_events(self, node_id: str | None = None) -> int:
        if node_id is None:
            return int(self._query("SELECT COUNT(*) FROM events")[0][0])
        return int(self._query("SELECT COUNT(*) FROM events WHERE node_id = ?", (node_id,))[0][0])

    # -- snapshots -------------------------------------------------------------------------------
    def insert_snapshot(self, env: SnapshotEnvelope, received_at: float) -> bool:
        """Store the snapshot's bytes; False when ``snapshot_id`` is already stored."""
        data = unb64(env.data)
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO snapshots (snapshot_id, event_id, node_id, taken_at, content_type, sealed, "
                "data, size, sig, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (env.snapshot_id, env.event_id, env.node_id, env.taken_at, env.content_type, int(env.sealed),
                 data, len(data), env.sig, received_at),
            )
            return cur.rowcount == 1

    def get_snapshot(self, snapshot_id: str) -> dict[str, Any] | None:
        """Metadata plus ``data`` (bytes) of one snapshot."""
        rows = self._query(f"SELECT {', '.join(SNAPSHOT_META)}, data FROM snapshots WHERE snapshot_id = ?",
                           (snapshot_id,))
        if not rows:
            return None
        out = dict(rows[0])
        out["sealed"] = bool(out["sealed"])
        return out

    def list_snapshots(self, *, event_id: str | None = None, node_id: str | None = None) -> list[dict[str, Any]]:
        """Snapshot metadata (no bytes), oldest first."""
        where, params = [], []
        if event_id is not None:
            where.append("event_id = ?")
            params.append(event_id)
        if node_id is not None:
            where.append("node_id = ?")
            params.append(node_id)
        sql = f"SELECT {', '.join(SNAPSHOT_META)} FROM snapshots"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query(sql + " ORDER BY taken_at, snapshot_id", params)
        return [{**dict(r), "sealed": bool(r["sealed"])} for r in rows]

    # -- nodes -----------------------------------------------------------------------------------
    def _ensure_node(self, conn: sqlite3.Connection, node_id: str) -> None:
        conn.execute("INSERT OR IGNORE INTO nodes (node_id) VALUES (?)", (node_id,))

    def apply_node_updates(self, presences: Sequence[Presence], heartbeats: Sequence[Heartbeat],
                           received_at: float) -> None:
        """Presence and heartbeat state coalesced per node (newest wins; a node's presence is
        applied after its heartbeat, so a last will arriving in the same batch marks it offline),
        written in ONE transaction."""
        beats, pres, ident = coalesce_nodes(presences, heartbeats)
        if not beats and not pres:
            return
        with self._tx() as conn:
            seq = self._bump(conn)
            for node_id in sorted(set(beats) | set(pres)):
                self._ensure_node(conn, node_id)
                h = beats.get(node_id)
                if h is not None:
                    backlog = int(h.outbox.get("ready", 0)) + int(h.outbox.get("in_flight", 0))
                    conn.execute(
                        "UPDATE nodes SET online = 1, last_seen = MAX(COALESCE(last_seen, 0), ?), heartbeat_at = ?, "
                        "boot_id = ?, version = ?, backlog = ?, outbox = ?, siren = ?, time_quality = ?, "
                        "clock_offset = ?, change_seq = ? WHERE node_id = ?",
                        (received_at, received_at, h.boot_id, h.version, backlog, json.dumps(h.outbox),
                         json.dumps(h.siren, default=str), h.time_quality, h.clock_offset, seq, node_id))
                p = pres.get(node_id)
                if p is not None:
                    fields = ident.get(node_id, {})
                    sets = ["online = ?", "presence_at = ?", "last_seen = MAX(COALESCE(last_seen, 0), ?)",
                            "change_seq = ?", *(f"{col} = ?" for col in fields)]
                    conn.execute(f"UPDATE nodes SET {', '.join(sets)} WHERE node_id = ?",
                                 [1 if p.state == "online" else 0, received_at, received_at, seq,
                                  *fields.values(), node_id])

    def upsert_presence(self, p: Presence, received_at: float) -> None:
        """Record a birth/last-will message; identity fields are updated only when present."""
        self.apply_node_updates([p], [], received_at)

    def upsert_heartbeat(self, h: Heartbeat, received_at: float) -> None:
        """Record a heartbeat: last seen, reported backlog, siren state, clock quality, version."""
        self.apply_node_updates([], [h], received_at)

    def touch_node(self, node_id: str, received_at: float) -> None:
        """Note that a node was heard from (an event arrived), creating its row if needed."""
        with self._tx() as conn:
            self._ensure_node(conn, node_id)
            conn.execute("UPDATE nodes SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE node_id = ?",
                         (received_at, node_id))

    def list_nodes(self, *, now: float | None = None) -> list[Row]:
        """Every known node with its state; ``status`` is online / stale / offline / unknown."""
        return self._node_rows(f"{NODE_SELECT} ORDER BY {NODE_ID}", (), now)

    def _node_rows(self, sql: str, params: Sequence[Any], now: float | None) -> list[Row]:
        t = time.time() if now is None else now
        return [node_row(dict(r), t) for r in self._query(sql, params)]


def is_sqlite_transient(exc: BaseException) -> bool:
    """True for SQLite errors that go away by themselves (database locked or busy)."""
    if isinstance(exc, TransientStoreError):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "busy" in text
    return False
