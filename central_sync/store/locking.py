"""Migrations that are safe when several processes open a fresh SQLite database at once.

An exclusive file lock on ``<database>-migrate.lock`` around every migration set: the first
process migrates, the others wait and then find nothing pending. (sqlite-utils wraps each
migration in a transaction but two processes can both see "not applied" before either commits,
which made two ``kentongan-central`` commands started together fail with "table ... already
exists".) The lock is ``filelock.FileLock``, the one the post uses for opening its outbox
(``edge/outbox/db.py``): an ``flock`` on Linux, so threads and processes alike wait; no
soft-lock fallback. PostgreSQL uses ``pg_advisory_lock`` instead (postgres.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from filelock import FileLock
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations


def database_file(conn: sqlite3.Connection) -> str:
    """Path of the main database file of ``conn`` ("" for an in-memory database)."""
    for _seq, name, path in conn.execute("PRAGMA database_list").fetchall():
        if name == "main":
            return str(path or "")
    return ""


@contextmanager
def migration_lock(conn: sqlite3.Connection) -> Iterator[None]:
    """Hold the database's migration file lock (no-op for in-memory databases)."""
    path = database_file(conn)
    if not path:
        yield
        return
    with FileLock(f"{path}-migrate.lock", mode=0o600, fallback_to_soft=False):
        yield


def apply_pending(conn: sqlite3.Connection, *sets: Migrations) -> None:
    """Apply migration sets; the caller holds ``migration_lock(conn)``."""
    db = Database(conn)
    for migrations in sets:
        if migrations.pending(db):
            migrations.apply(db)


def apply_locked(conn: sqlite3.Connection, *sets: Migrations) -> None:
    """Apply migration sets under the migration lock."""
    with migration_lock(conn):
        apply_pending(conn, *sets)
