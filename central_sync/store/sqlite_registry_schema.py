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


@MIGRATIONS(name="0002_registry_place")
def _m0002(db: Database) -> None:
    """The post's coordinates from enrolment (optional), and the security events of posts whose
    messages claim another place than the registry's: one row per (node, kind), counted."""
    db.execute("ALTER TABLE node_registry ADD COLUMN lat REAL")
    db.execute("ALTER TABLE node_registry ADD COLUMN lon REAL")
    db.execute("""
        CREATE TABLE security_events (
            node_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            claimed TEXT NOT NULL,
            registered TEXT NOT NULL,
            count INTEGER NOT NULL,
            first_at REAL NOT NULL,
            last_at REAL NOT NULL,
            PRIMARY KEY (node_id, kind)
        )""")
