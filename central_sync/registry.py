"""Central's node registry: who is enrolled, with which keys and certificates, and who is revoked.

Own tables in central's database (own sqlite-utils ``Migrations`` set "kentongan.central.pki"):

* ``node_registry``: node_id, signing_public_key (Ed25519 PEM), kelurahan_code, rw, rt,
  display_name, status (``enrolled`` | ``revoked``), cert_serial (hex), cert_not_after (epoch),
  enrolled_at, revoked_at.
* ``node_certs``: every certificate ever issued to a node (serial, not_after, revoked_at); the CRL
  lists all certificates of revoked nodes, including renewed ones.
* ``event_digests``: SHA-256 of the first envelope seen for each (node, event id), so that
  ``EventVerifier`` can tell a duplicate (same bytes) from a replay (same id, other content).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from central_sync.errors import PkiError
from edge.signing import NodeKey, public_key_from_pem

MIGRATIONS = Migrations("kentongan.central.pki")

STATUS_ENROLLED = "enrolled"
STATUS_REVOKED = "revoked"


@MIGRATIONS(name="0001_registry")
def _m0001(db: Database) -> None:
    db.execute("""
        CREATE TABLE node_registry (
            node_id TEXT PRIMARY KEY,
            signing_public_key TEXT NOT NULL,
            kelurahan_code TEXT NOT NULL,
            rw INTEGER NOT NULL,
            rt INTEGER NOT NULL,
            display_name TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('enrolled', 'revoked')),
            cert_serial TEXT NOT NULL,
            cert_not_after REAL NOT NULL,
            enrolled_at REAL NOT NULL,
            revoked_at REAL
        )""")
    db.execute("""
        CREATE TABLE node_certs (
            serial TEXT PRIMARY KEY,
            node_id TEXT NOT NULL REFERENCES node_registry(node_id),
            not_after REAL NOT NULL,
            issued_at REAL NOT NULL,
            revoked_at REAL
        )""")
    db.execute("CREATE INDEX node_certs_node ON node_certs(node_id)")
    db.execute("""
        CREATE TABLE event_digests (
            node_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            digest BLOB NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (node_id, event_id)
        ) WITHOUT ROWID""")


def migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the registry tables in ``conn``'s database."""
    MIGRATIONS.apply(Database(conn))


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    signing_public_key: str
    kelurahan_code: str
    rw: int
    rt: int
    display_name: str
    status: str
    cert_serial: str
    cert_not_after: float
    enrolled_at: float
    revoked_at: float | None


class Registry:
    """Registry operations on one SQLite connection (central's store, or its own file)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        migrate(conn)

    def get(self, node_id: str) -> NodeRecord | None:
        row = self.conn.execute(
            "SELECT node_id, signing_public_key, kelurahan_code, rw, rt, display_name, status, "
            "cert_serial, cert_not_after, enrolled_at, revoked_at FROM node_registry "
            "WHERE node_id = ?", (node_id,)).fetchone()
        return NodeRecord(*row) if row else None

    def add(self, *, node_id: str, signing_public_key: str, kelurahan_code: str, rw: int,
            rt: int, display_name: str, cert_serial: str, cert_not_after: float,
            replace: bool = False) -> None:
        existing = self.get(node_id)
        if existing is not None and not replace:
            raise PkiError(f"node {node_id} is already enrolled ({existing.status}); "
                           "revoke it and use --replace to enrol it again")
        now = time.time()
        with self.conn:
            if existing is not None:
                # A re-enrolment replaces every older certificate: revoke them.
                self.conn.execute("UPDATE node_certs SET revoked_at = ? WHERE node_id = ? "
                                  "AND revoked_at IS NULL", (now, node_id))
            self.conn.execute(
                "INSERT OR REPLACE INTO node_registry VALUES (?,?,?,?,?,?,?,?,?,?,NULL)",
                (node_id, signing_public_key, kelurahan_code, rw, rt, display_name,
                 STATUS_ENROLLED, cert_serial, cert_not_after, now))
            self.conn.execute("INSERT INTO node_certs VALUES (?,?,?,?,NULL)",
                              (cert_serial, node_id, cert_not_after, now))

    def record_renewal(self, node_id: str, cert_serial: str, cert_not_after: float) -> None:
        now = time.time()
        with self.conn:
            self.conn.execute("UPDATE node_registry SET cert_serial = ?, cert_not_after = ? "
                              "WHERE node_id = ?", (cert_serial, cert_not_after, node_id))
            self.conn.execute("INSERT INTO node_certs VALUES (?,?,?,?,NULL)",
                              (cert_serial, node_id, cert_not_after, now))

    def revoke(self, node_id: str) -> None:
        if self.get(node_id) is None:
            raise PkiError(f"unknown node {node_id}")
        now = time.time()
        with self.conn:
            self.conn.execute("UPDATE node_registry SET status = ?, revoked_at = ? "
                              "WHERE node_id = ?", (STATUS_REVOKED, now, node_id))
            self.conn.execute("UPDATE node_certs SET revoked_at = ? WHERE node_id = ? "
                              "AND revoked_at IS NULL", (now, node_id))

    def revoked_serials(self) -> list[tuple[int, dt.datetime]]:
        """(serial, revoked_at) of every revoked certificate still within its validity."""
        rows = self.conn.execute(
            "SELECT serial, revoked_at FROM node_certs WHERE revoked_at IS NOT NULL "
            "AND not_after > ?", (time.time(),)).fetchall()
        return [(int(s, 16), dt.datetime.fromtimestamp(r, dt.UTC)) for s, r in rows]

    def lookup(self, node_id: str) -> NodeKey | None:
        """The ``EventVerifier`` lookup: key and status of ``node_id`` (None when unknown)."""
        rec = self.get(node_id)
        if rec is None:
            return None
        return NodeKey(rec.node_id, public_key_from_pem(rec.signing_public_key), rec.status)

    def listing(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT * FROM node_registry ORDER BY node_id")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


class SqliteDigestLog:
    """``edge.signing.DigestLog`` persisted in ``event_digests`` (survives central restarts)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        migrate(conn)

    def check_and_record(self, node_id: str, event_id: str, digest: bytes) -> bytes | None:
        row = self.conn.execute("SELECT digest FROM event_digests WHERE node_id = ? AND "
                                "event_id = ?", (node_id, event_id)).fetchone()
        if row is not None:
            return bytes(row[0])
        with self.conn:
            self.conn.execute("INSERT OR IGNORE INTO event_digests VALUES (?,?,?,?)",
                              (node_id, event_id, digest, time.time()))
        return None

    def prune(self, older_than_seconds: float) -> int:
        with self.conn:
            cur = self.conn.execute("DELETE FROM event_digests WHERE seen_at < ?",
                                    (time.time() - older_than_seconds,))
        return cur.rowcount


def registry_status(conn: sqlite3.Connection) -> dict[str, str]:
    """``{node_id: status}`` for every registered node (for central's ``nodes`` listing)."""
    migrate(conn)
    return dict(conn.execute("SELECT node_id, status FROM node_registry ORDER BY node_id")
                .fetchall())
