"""SQLite schema of the node registry (sqlite-utils ``Migrations`` set "kentongan.central.pki")."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("kentongan.central.pki")


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
