"""Central's storage layer: every SQL statement of ingest lives in this module.

SQLite today (PostgreSQL next), so the SQL is kept plain: ``INSERT OR IGNORE`` on primary keys,
simple upserts, no SQLite-only functions in queries. The schema is built by sqlite-utils
``Migrations`` (set ``central_store``); other central modules keep their own tables in the same
file through ``connection()`` and their own migration set.

Durability: WAL with ``synchronous=FULL``, because central's commit is what a node trusts when it
deletes an event after the ``Ack``.

Thread-safety: one ``sqlite3`` connection shared by all threads and guarded by an ``RLock``;
every public method takes the lock, so a ``CentralStore`` may be used from the event loop and
from ``asyncio.to_thread`` workers at once. Callers using ``connection()`` directly should hold
``store.lock`` around multi-statement work. Several ``CentralStore`` objects (processes) may open
the same file; SQLite's busy timeout serialises their writers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from central_sync.errors import StoreError
from edge.sync.wire import Command, CommandResult, EventEnvelope, Heartbeat, Presence, SnapshotEnvelope, unb64

migrations = Migrations("central_store")

#: Seconds without presence or heartbeat after which a node is shown as "stale".
STALE_AFTER_SECONDS = 300.0


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


_EVENT_COLS = ("rowid", "event_id", "node_id", "boot_id", "seq", "mono_ns", "wall_time", "time_quality",
               "type", "priority", "incident_id", "payload", "sig", "received_at")
_EVENT_SELECT = f"SELECT {', '.join(_EVENT_COLS)} FROM events"
_SNAPSHOT_META = ("snapshot_id", "event_id", "node_id", "taken_at", "content_type", "sealed", "size", "sig",
                  "received_at")


def _event_row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    with suppress(TypeError, ValueError):
        out["payload"] = json.loads(out["payload"])
    return out


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


class CentralStore:
    """Central's database. See the module docstring for durability and thread-safety."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._conn = conn
            self._db = Database(conn)
            with self.lock:
                migrations.apply(self._db)
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
        """One write transaction (``BEGIN IMMEDIATE`` so busy errors happen up front)."""
        with self.lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self.lock:
            return list(self._conn.execute(sql, params).fetchall())

    def close(self) -> None:
        with self.lock:
            if not self._closed:
                self._closed = True
                self._conn.close()

    # -- events ----------------------------------------------------------------------------------
    def insert_events(self, envs: Sequence[EventEnvelope], received_at: float) -> tuple[list[str], list[str]]:
        """Insert events in ONE transaction; return (new ids, duplicate ids) in input order.

        De-duplicates by ``event_id`` against the table and within ``envs``.
        """
        new: list[str] = []
        dup: list[str] = []
        with self._tx() as conn:
            for env in envs:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO events (event_id, node_id, boot_id, seq, mono_ns, wall_time, "
                    "time_quality, type, priority, incident_id, payload, sig, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (env.event_id, env.node_id, env.boot_id, env.seq, env.mono_ns, env.wall_time,
                     env.time_quality, env.type, env.priority, env.incident_id,
                     json.dumps(env.payload, separators=(",", ":"), ensure_ascii=False), env.sig, received_at),
                )
                (new if cur.rowcount == 1 else dup).append(env.event_id)
            for node_id in sorted({env.node_id for env in envs}):
                self._ensure_node(conn, node_id)
                conn.execute("UPDATE nodes SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE node_id = ?",
                             (received_at, node_id))
        return new, dup

    def get_events(self, event_ids: Sequence[str]) -> list[dict[str, Any]]:
        """Rows of these events (those that exist), in arrival order."""
        out: list[dict[str, Any]] = []
        ids = list(event_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            out.extend(_event_row(r) for r in self._query(f"{_EVENT_SELECT} WHERE event_id IN ({marks})", chunk))
        out.sort(key=lambda r: r["rowid"])
        return out

    def list_events(self, *, node_id: str | None = None, since_rowid: int = 0,
                    limit: int = 1000) -> list[dict[str, Any]]:
        """Events with ``rowid > since_rowid`` in arrival order (``rowid`` increases)."""
        if node_id is None:
            rows = self._query(f"{_EVENT_SELECT} WHERE rowid > ? ORDER BY rowid LIMIT ?", (since_rowid, limit))
        else:
            rows = self._query(f"{_EVENT_SELECT} WHERE node_id = ? AND rowid > ? ORDER BY rowid LIMIT ?",
                               (node_id, since_rowid, limit))
        return [_event_row(r) for r in rows]

    def latest_events(self, *, node_id: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        """The last ``limit`` events (optionally of one node), oldest first."""
        if node_id is None:
            rows = self._query(f"{_EVENT_SELECT} ORDER BY rowid DESC LIMIT ?", (limit,))
        else:
            rows = self._query(f"{_EVENT_SELECT} WHERE node_id = ? ORDER BY rowid DESC LIMIT ?", (node_id, limit))
        return [_event_row(r) for r in reversed(rows)]

    def last_event_times(self, event_type: str) -> dict[str, float]:
        """Per node, the wall time of its latest event of ``event_type`` (e.g. SELFTEST)."""
        rows = self._query("SELECT node_id, MAX(wall_time) FROM events WHERE type = ? "
                           "GROUP BY node_id", (event_type,))
        return {r[0]: r[1] for r in rows}

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        rows = self._query(f"{_EVENT_SELECT} WHERE event_id = ?", (event_id,))
        return _event_row(rows[0]) if rows else None

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
        rows = self._query(f"SELECT {', '.join(_SNAPSHOT_META)}, data FROM snapshots WHERE snapshot_id = ?",
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
        sql = f"SELECT {', '.join(_SNAPSHOT_META)} FROM snapshots"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query(sql + " ORDER BY taken_at, snapshot_id", params)
        return [{**dict(r), "sealed": bool(r["sealed"])} for r in rows]

    # -- nodes -----------------------------------------------------------------------------------
    def _ensure_node(self, conn: sqlite3.Connection, node_id: str) -> None:
        conn.execute("INSERT OR IGNORE INTO nodes (node_id) VALUES (?)", (node_id,))

    def upsert_presence(self, p: Presence, received_at: float) -> None:
        """Record a birth/last-will message; identity fields are updated only when present."""
        sets = ["online = ?", "presence_at = ?", "last_seen = MAX(COALESCE(last_seen, 0), ?)"]
        params: list[Any] = [1 if p.state == "online" else 0, received_at, received_at]
        for col in ("boot_id", "version", "kelurahan_code", "rw", "rt", "display_name"):
            value = getattr(p, col)
            if value is not None:
                sets.append(f"{col} = ?")
                params.append(value)
        with self._tx() as conn:
            self._ensure_node(conn, p.node_id)
            conn.execute(f"UPDATE nodes SET {', '.join(sets)} WHERE node_id = ?", [*params, p.node_id])

    def upsert_heartbeat(self, h: Heartbeat, received_at: float) -> None:
        """Record a heartbeat: last seen, reported backlog, siren state, clock quality, version."""
        backlog = int(h.outbox.get("ready", 0)) + int(h.outbox.get("in_flight", 0))
        with self._tx() as conn:
            self._ensure_node(conn, h.node_id)
            conn.execute(
                "UPDATE nodes SET online = 1, last_seen = MAX(COALESCE(last_seen, 0), ?), heartbeat_at = ?, "
                "boot_id = ?, version = ?, backlog = ?, outbox = ?, siren = ?, time_quality = ?, clock_offset = ? "
                "WHERE node_id = ?",
                (received_at, received_at, h.boot_id, h.version, backlog, json.dumps(h.outbox),
                 json.dumps(h.siren, default=str), h.time_quality, h.clock_offset, h.node_id),
            )

    def touch_node(self, node_id: str, received_at: float) -> None:
        """Note that a node was heard from (an event arrived), creating its row if needed."""
        with self._tx() as conn:
            self._ensure_node(conn, node_id)
            conn.execute("UPDATE nodes SET last_seen = MAX(COALESCE(last_seen, 0), ?) WHERE node_id = ?",
                         (received_at, node_id))

    def list_nodes(self, *, now: float | None = None) -> list[dict[str, Any]]:
        """Every known node with its state; ``status`` is online / stale / offline / unknown."""
        import time

        t = time.time() if now is None else now
        rows = self._query(
            "SELECT node_id, online, last_seen, backlog, outbox, siren, time_quality, clock_offset, kelurahan_code, "
            "rw, rt, display_name, version, boot_id FROM nodes ORDER BY node_id")
        out = []
        for r in rows:
            d = dict(r)
            d["online"] = bool(d["online"])
            d["siren"] = _loads(d["siren"])
            d["outbox"] = _loads(d["outbox"])
            if d["last_seen"] is None:
                d["status"] = "unknown"
            elif not d["online"]:
                d["status"] = "offline"
            elif t - d["last_seen"] > STALE_AFTER_SECONDS:
                d["status"] = "stale"
            else:
                d["status"] = "online"
            out.append(d)
        return out

    # -- rejections ------------------------------------------------------------------------------
    def record_rejection(self, *, node_id: str | None, topic: str, reason: str, detail: str, at: float) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO rejections (node_id, topic, reason, detail, at) VALUES (?, ?, ?, ?, ?)",
                         (node_id, topic[:300], reason[:100], detail[:500], at))

    def rejection_counts(self) -> dict[str, int]:
        rows = self._query("SELECT reason, COUNT(*) FROM rejections GROUP BY reason ORDER BY reason")
        return {str(r[0]): int(r[1]) for r in rows}

    def list_rejections(self, limit: int = 100) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query(
            "SELECT id, node_id, topic, reason, detail, at FROM rejections ORDER BY id DESC LIMIT ?", (limit,))]

    # -- commands --------------------------------------------------------------------------------
    def record_command(self, cmd: Command, *, issued_by: str) -> None:
        """Record a command about to be published (status 'sent'); re-recording is a no-op."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO commands (command_id, node_id, action, params, issued_at, expires_at, issuer, "
                "issued_by, signed, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'sent')",
                (cmd.command_id, cmd.node_id, cmd.action, json.dumps(cmd.params, default=str), cmd.issued_at,
                 cmd.expires_at, cmd.issuer, issued_by, int(cmd.sig is not None)),
            )

    def record_command_result(self, r: CommandResult, received_at: float) -> None:
        """Attach a node's answer to its command (status 'ok' or 'failed'); unknown ids are kept too."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE commands SET status = ?, result_ok = ?, result_detail = ?, result_data = ?, result_at = ?, "
                "result_received_at = ? WHERE command_id = ? AND node_id = ?",
                ("ok" if r.ok else "failed", int(r.ok), r.detail, json.dumps(r.data, default=str), r.at,
                 received_at, r.command_id, r.node_id),
            )
            if cur.rowcount == 0:
                conn.execute(
                    "INSERT OR IGNORE INTO commands (command_id, node_id, action, params, issued_at, expires_at, "
                    "issuer, issued_by, signed, status, result_ok, result_detail, result_data, result_at, "
                    "result_received_at) VALUES (?, ?, 'unknown', '{}', 0, 0, 'unknown', 'unknown', 0, ?, ?, ?, ?, "
                    "?, ?)",
                    (r.command_id, r.node_id, "ok" if r.ok else "failed", int(r.ok), r.detail,
                     json.dumps(r.data, default=str), r.at, received_at),
                )

    def list_commands(self, node_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM commands"
        params: tuple[Any, ...] = ()
        if node_id is not None:
            sql += " WHERE node_id = ?"
            params = (node_id,)
        out = []
        for r in self._query(sql + " ORDER BY issued_at, command_id", params):
            d = dict(r)
            d["params"] = _loads(d["params"])
            d["result_data"] = _loads(d["result_data"])
            d["signed"] = bool(d["signed"])
            d["result_ok"] = None if d["result_ok"] is None else bool(d["result_ok"])
            out.append(d)
        return out


def is_transient(exc: BaseException) -> bool:
    """True for SQLite errors that go away by themselves (database locked or busy)."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return "locked" in text or "busy" in text
    return False
