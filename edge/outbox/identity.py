"""Whose database is this? Node id and database identity, checked at every open.

``meta`` (schema ``0003_identity``) holds ``node_id``, ``db_uuid`` and ``commits``, a counter
every write transaction of ``OutboxDB.tx`` bumps, so the meta page is in every WAL this node
writes. A sidecar ``<db>.identity`` (JSON: node id, db uuid) remembers which database should
be there. Checks, before SQLite may replay a WAL into the database:

* ``zero_length``: an empty database file (a crash while creating it, or a truncation);
* ``orphan_wal``: a ``-wal`` without its database;
* ``foreign_wal``: a ``-wal`` whose view of ``meta`` has another ``db_uuid``, or that adds rows
  of another node id, or that changes the rows without advancing ``commits`` (it was written
  against another file). Replaying it would overwrite this node's pages: it is moved aside;
* after opening: ``foreign_database`` (meta names another node), ``mismatched_database`` (the
  sidecar names another ``db_uuid``): the whole file is moved aside and a fresh one created;
  ``database_missing``: the sidecar says a database existed, but the file is gone;
* ``foreign_rows``: rows of another node id in a database adopted from before ``meta`` existed
  are moved to ``foreign_events`` (never claimed, never sent).

Each finding becomes a ``STORAGE_QUARANTINED`` event (reason, where it went, unacked events
lost when known).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.logs import log_event
from edge.outbox.schema import EVENT_COLUMNS
from edge.storage import quarantine, write_atomic

__all__ = ["Finding", "ForeignDatabase", "adopt", "inspect_files", "report", "sidecar_path"]

log = logging.getLogger("edge.outbox")

_WAL_HEADER = 32


@dataclass(frozen=True, slots=True)
class Finding:
    """Something found at open that the node must report (``STORAGE_QUARANTINED``)."""

    reason: str
    moved_to: str | None = None
    unacked_lost: int | None = None
    detail: str = ""
    rows: int | None = None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "moved_to": self.moved_to or "",
                               "unacked_lost": self.unacked_lost}
        if self.detail:
            out["detail"] = self.detail[:300]
        if self.rows is not None:
            out["rows"] = self.rows
        return out


class ForeignDatabase(Exception):
    """The open database is not this node's: move the whole file aside."""

    def __init__(self, reason: str, detail: str, unacked: int | None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.unacked = unacked


def sidecar_path(db: Path) -> Path:
    return db.with_name(db.name + ".identity")


def _read_sidecar(db: Path) -> dict[str, str] | None:
    try:
        data = json.loads(sidecar_path(db).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_sidecar(db: Path, node_id: str, db_uuid: str) -> None:
    try:
        write_atomic(sidecar_path(db), json.dumps({"node_id": node_id, "db_uuid": db_uuid})
                     .encode())
    except OSError as exc:  # best effort: the next open writes it again
        log_event(log, "storage_identity_sidecar_failed", logging.WARNING, error=str(exc))


def _view(uri: str) -> dict[str, Any] | None:
    """meta + max(id) as seen through ``uri`` (None when unreadable)."""
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error:
        return None
    try:
        out: dict[str, Any] = {"max_id": conn.execute(
            "SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]}
        with contextlib.suppress(sqlite3.Error):
            out.update(dict(conn.execute("SELECT key, value FROM meta").fetchall()))
        return out
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def _new_foreign_rows(db: Path, after_id: int, node_id: str) -> int:
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return 0
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE id > ? AND node_id != ?",
                                (after_id, node_id)).fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def inspect_files(db: Path, node_id: str) -> list[Finding]:
    """File-level checks before the database is opened for writing (see the module doc)."""
    wal, shm = Path(str(db) + "-wal"), Path(str(db) + "-shm")
    if db.exists() and db.stat().st_size == 0:
        moved = quarantine(db, "zero-length")
        return [report(Finding("zero_length", str(moved), None,
                               "the database file was empty"))]
    if not db.exists():
        if wal.exists():
            moved = quarantine(wal, "orphan", with_sidecars=False)
            shm.unlink(missing_ok=True)
            return [report(Finding("orphan_wal", str(moved), None,
                                   "a -wal file without its database"))]
        return []
    if not wal.exists() or wal.stat().st_size <= _WAL_HEADER:
        return []
    main = _view(f"{db.resolve().as_uri()}?immutable=1")
    with_wal = _view(f"{db.resolve().as_uri()}?mode=ro")
    if main is None or with_wal is None:
        return []  # unreadable: the corruption check decides
    why = ""
    if main.get("db_uuid") and with_wal.get("db_uuid") != main.get("db_uuid"):
        why = f"WAL names database {with_wal.get('db_uuid')}, the file {main.get('db_uuid')}"
    elif (main.get("db_uuid") and with_wal.get("commits") == main.get("commits")
          and with_wal["max_id"] != main["max_id"]):
        why = "WAL changes rows without a commit of this database"
    elif main.get("node_id", node_id) == node_id:
        n = _new_foreign_rows(db, int(main["max_id"]), node_id)
        if n:
            why = f"WAL adds {n} rows of another node id"
    if not why:
        return []
    moved = quarantine(wal, "foreign", with_sidecars=False)
    shm.unlink(missing_ok=True)  # our read-only look created it; it indexes the moved WAL
    return [report(Finding("foreign_wal", str(moved), None, why))]


def report(f: Finding) -> Finding:
    log_event(log, "storage_quarantined", logging.ERROR, reason=f.reason, moved_to=f.moved_to,
              unacked_lost=f.unacked_lost, detail=f.detail)
    return f


def adopt(conn: sqlite3.Connection, db: Path, node_id: str, *,
          fresh_expected: bool) -> tuple[str, list[Finding]]:
    """Check ``meta`` of the open database against ``node_id`` and the sidecar; claim a new or
    pre-``meta`` database for this node (moving rows of other node ids aside). Returns
    (db uuid, findings). Raises ``ForeignDatabase`` when the file must be moved aside.
    ``fresh_expected``: a finding already explains why the database is new."""
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    side = _read_sidecar(db)
    findings: list[Finding] = []
    if meta.get("node_id") and meta["node_id"] != node_id:
        raise ForeignDatabase("foreign_database",
                              f"database of node {meta['node_id']!r}, this node is {node_id!r}",
                              _unacked(conn))
    if meta.get("db_uuid"):
        if side and side.get("db_uuid") and side["db_uuid"] != meta["db_uuid"]:
            raise ForeignDatabase("mismatched_database",
                                  f"database {meta['db_uuid']} where {side['db_uuid']} was",
                                  _unacked(conn))
        if not side:
            write_sidecar(db, node_id, meta["db_uuid"])
        return meta["db_uuid"], findings
    # A new database, or one from before 0003: make it this node's.
    has_rows = conn.execute("SELECT EXISTS (SELECT 1 FROM events)").fetchone()[0]
    if side and side.get("db_uuid") and not has_rows and not fresh_expected:
        findings.append(report(Finding("database_missing", None, None,
                                       f"database {side['db_uuid']} is gone")))
    db_uuid = str(uuid.uuid4())
    conn.execute("BEGIN IMMEDIATE")
    try:
        moved = 0
        unacked = 0
        if has_rows:  # one scan, once per legacy database
            unacked = conn.execute("SELECT COUNT(*) FROM events WHERE node_id != ?"
                                   " AND status != 'acked'", (node_id,)).fetchone()[0]
            moved = conn.execute(
                f"INSERT INTO foreign_events ({EVENT_COLUMNS}, moved_at, reason)"
                f" SELECT {EVENT_COLUMNS}, ?, 'foreign_node' FROM events WHERE node_id != ?",
                (time.time(), node_id)).rowcount
            if moved:
                conn.execute("DELETE FROM event_flags WHERE event_id IN"
                             " (SELECT event_id FROM foreign_events)")
                conn.execute("DELETE FROM events WHERE node_id != ?", (node_id,))
        conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                         [("node_id", node_id), ("db_uuid", db_uuid),
                          ("created_at", str(time.time()))])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if moved:
        findings.append(report(Finding("foreign_rows", "foreign_events", int(unacked),
                                       "rows of another node id moved aside", rows=moved)))
    write_sidecar(db, node_id, db_uuid)
    return db_uuid, findings


def _unacked(conn: sqlite3.Connection) -> int | None:
    try:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE status != 'acked'")
                   .fetchone()[0])
    except sqlite3.Error:
        return None
