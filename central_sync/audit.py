"""Append-only audit log of administrative actions (who changed what, when, from where).

Recorded: accounts added, commands sent from the desk, enrolments and revocations (CLI), and
the changes the desk makes. Admins read it at ``GET /api/audit-log``. One table,
``audit_log``, in central's database (own sqlite-utils migration set
``kentongan.central.audit``); the code never updates or deletes a row except ``prune`` of rows
older than the retention the operator chooses.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from edge.logs import log_event

log = logging.getLogger("central.audit")
MIGRATIONS = Migrations("kentongan.central.audit")
MAX_DETAIL_CHARS = 2000


@MIGRATIONS(name="0001_audit_log")
def _m0001(db: Database) -> None:
    db.execute("""
        CREATE TABLE IF NOT EXISTS audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL,
            client TEXT
        )""")
    db.execute("CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log(at)")


def cli_actor() -> str:
    """The operating-system user running a ``kentongan-central`` command (``cli:<user>``)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return f"cli:{name}"


class AuditLog:
    """The audit table on one SQLite connection (thread-safe behind a lock)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._lock = threading.Lock()
        with self._lock:
            MIGRATIONS.apply(Database(conn))

    @classmethod
    def open(cls, path: str | Path) -> AuditLog:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=10, check_same_thread=False,
                               isolation_level=None)
        return cls(conn)

    def record(self, actor: str, action: str, target: str,
               detail: dict[str, Any] | None = None, client: str | None = None) -> None:
        text = json.dumps(detail or {}, sort_keys=True, default=str)[:MAX_DETAIL_CHARS]
        with self._lock:
            self.conn.execute(
                "INSERT INTO audit_log(at, actor, action, target, detail, client) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (time.time(), actor[:120], action[:64], target[:200], text, client))
            if self.conn.in_transaction:
                self.conn.commit()
        log_event(log, "audit", actor=actor, action=action, target=target, client=client)

    def recent(self, limit: int = 200) -> list[dict[str, Any]]:
        with self._lock:
            cur = self.conn.execute(
                "SELECT id, at, actor, action, target, detail, client FROM audit_log "
                "ORDER BY id DESC LIMIT ?", (limit,))
            cols = [c[0] for c in cur.description]
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        for row in rows:
            row["detail"] = json.loads(row["detail"])
        return rows

    def prune(self, older_than_seconds: float) -> int:
        with self._lock:
            cur = self.conn.execute("DELETE FROM audit_log WHERE at < ?",
                                    (time.time() - older_than_seconds,))
            if self.conn.in_transaction:
                self.conn.commit()
        return cur.rowcount
