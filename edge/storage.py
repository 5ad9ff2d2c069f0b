"""SQLite plumbing shared by the outbox and the snapshot store.

* ``open_database`` opens (or creates) the node database with the project's durability settings
  (WAL, ``synchronous=FULL``, incremental auto-vacuum), applies the schema through sqlite-utils'
  ``Migrations`` and, when the file is corrupt, moves it aside first (``<name>.corrupt-<UTC>``
  plus its ``-wal``/``-shm``) and starts with a fresh file: the node never refuses to start
  because of its database (SD cards corrupt on power loss).
* ``is_full_error`` / ``database_bytes`` / ``free_bytes`` are the disk-pressure helpers.

See docs/storage.md for the fsync policy.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from edge.config import StorageConfig
from edge.logs import log_event

log = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_MB = 1024 * 1024

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


@dataclass(frozen=True, slots=True)
class StorageQuota:
    """Disk budget: DB + WAL + snapshot files within ``disk_quota_bytes``; snapshots alone within
    ``snapshot_quota_bytes``; evict when the filesystem has less than ``min_free_bytes`` free."""

    disk_quota_bytes: int
    snapshot_quota_bytes: int
    min_free_bytes: int

    @classmethod
    def from_config(cls, cfg: StorageConfig) -> StorageQuota:
        return cls(
            disk_quota_bytes=int(cfg.disk_quota_mb * _MB),
            snapshot_quota_bytes=int(cfg.snapshot_quota_mb * _MB),
            min_free_bytes=int(cfg.min_free_mb * _MB),
        )


def is_full_error(exc: BaseException) -> bool:
    """True for SQLITE_FULL ("database or disk is full") and OS-level ENOSPC."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and (code & 0xFF) == 13:
            return True
        return "database or disk is full" in str(exc).lower()
    return isinstance(exc, OSError) and exc.errno == 28


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _CORRUPT_CODES:
        return True
    msg = str(exc).lower()
    return "not a database" in msg or "malformed" in msg


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves (sqlite-utils' atomic()
    # does the same); check_same_thread=False: callers serialise access with a lock.
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _check(path: Path) -> str | None:
    """Why ``path`` is unusable as a database (None when fine or absent)."""
    if not path.exists():
        return None
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        return f"unreadable: {exc}"
    if head and head != SQLITE_HEADER:
        return "bad header"
    # Read-only first: a read-write connection to a corrupt file may delete its -wal on close,
    # and that WAL is evidence worth keeping. Fall back to read-write when read-only cannot open
    # (for example a -wal without its -shm in a directory we may not write).
    for read_only in (True, False):
        conn = None
        try:
            if read_only:
                conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                       check_same_thread=False, timeout=30)
            else:
                conn = _connect(path)
            row = conn.execute("PRAGMA quick_check").fetchone()
            if not row or row[0] != "ok":
                return f"quick_check: {row[0] if row else 'no answer'}"[:200]
            return None
        except sqlite3.Error as exc:
            if _is_corruption(exc):
                return f"{type(exc).__name__}: {exc}"[:200]
            if not read_only:
                raise
        finally:
            if conn is not None:
                conn.close()
    return None


def quarantine(path: Path) -> Path:
    """Move ``path`` (and its -wal/-shm) aside as ``<name>.corrupt-<UTC>``; return the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            os.replace(side, Path(str(target) + suffix))
    fsync_dir(path.parent)
    return target


def _configure_and_migrate(conn: sqlite3.Connection) -> None:
    fresh = conn.execute("PRAGMA page_count").fetchone()[0] == 0
    if fresh:  # must be set before the first table exists
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log_event(log, "storage_wal_unavailable", level=logging.WARNING, mode=mode)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA journal_size_limit=8388608")
    MIGRATIONS.apply(Database(conn, execute_plugins=False))


def open_database(path: Path) -> tuple[sqlite3.Connection, Path | None, str | None]:
    """Open ``path`` ready for use: (connection, quarantined-to path or None, reason or None).

    A corrupt file is moved aside and a fresh database created. Other errors (disk full, I/O,
    permissions) propagate as ``sqlite3.Error``/``OSError``: they are not the file's fault.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    moved: Path | None = None
    reason = _check(path)
    if reason is not None:
        moved = quarantine(path)
        log_event(log, "storage_quarantined", level=logging.ERROR, path=str(path),
                  moved_to=str(moved), reason=reason)
    conn = _connect(path)
    try:
        _configure_and_migrate(conn)
    except sqlite3.Error as exc:
        conn.close()
        if moved is not None or not _is_corruption(exc):
            raise
        reason = f"{type(exc).__name__}: {exc}"[:200]
        moved = quarantine(path)
        log_event(log, "storage_quarantined", level=logging.ERROR, path=str(path),
                  moved_to=str(moved), reason=reason)
        conn = _connect(path)
        _configure_and_migrate(conn)
    return conn, moved, reason


def database_bytes(path: Path) -> int:
    """Bytes the database occupies on disk: main file + WAL."""
    total = 0
    for p in (path, Path(str(path) + "-wal")):
        with suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def free_bytes(directory: Path) -> int:
    """Free bytes on the filesystem holding ``directory``."""
    return shutil.disk_usage(directory).free


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename/unlink in it is durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
