"""The node database: one SQLite connection, its lock and its transactions, shared by the
outbox's parts and the snapshot store (nobody else touches the connection).

``open()`` checks the files (``identity.inspect_files``), moves a corrupt file aside, applies the
schema with the project's durability settings (WAL, ``synchronous=FULL``, incremental
auto-vacuum) and checks whose database it is (``identity.adopt``). The node never refuses to
start because of its database: a file that is not this node's is moved aside and reported, and
an error that is not the file's fault (disk full, I/O, permissions) leaves the database closed
(``StorageUnavailable``) while the outbox keeps retrying (see ``writer.py``).

Several processes may open the same file at once: the agent starting while a technician's
``kentongan-edge selftest`` records its result (the agent not answering yet), or a status
command. sqlite-utils applies each migration in its own transaction, so two processes can both
see a step as pending and the second fails ("table meta already exists"); the whole of
``open()`` (file checks, schema, adoption) therefore runs under an exclusive file lock on
``<database>-open.lock``: ``filelock.FileLock`` (an ``flock`` on Linux, the file left in place;
central locks its SQLite migrations with it too, ``central_sync/store/locking.py``: the post
cannot import central, and the library is what both share). See docs/storage.md.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlite_utils import Database

from edge.errors import StorageError
from edge.logs import log_event
from edge.outbox.identity import Finding, ForeignDatabase, adopt, inspect_files, report
from edge.outbox.schema import MIGRATIONS
from edge.storage import SQLITE_HEADER, is_corruption, quarantine

__all__ = ["OutboxDB", "StorageUnavailable"]

log = logging.getLogger("edge.outbox")

_BUMP = "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'commits'"


class StorageUnavailable(StorageError):
    """The database is not open (disk full at start, I/O or permission error); retried."""


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves (sqlite-utils' atomic()
    # does the same); check_same_thread=False: callers serialise access with the lock.
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


@contextmanager
def _open_lock(path: Path) -> Iterator[None]:
    """Exclusive across processes while one of them opens (and maybe creates) ``path``. Where
    the lock cannot be taken (the lock file cannot be created: a disk full before it ever
    existed, a read-only directory; a filesystem without ``flock``) the open goes ahead
    unlocked: a rare race is better than a post that cannot open its outbox. No soft-lock
    fallback: its marker file would outlive a ``kill -9`` and hold every later start."""
    lock = FileLock(f"{path}-open.lock", mode=0o600, fallback_to_soft=False)
    try:
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


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
    # and that WAL is evidence worth keeping. Fall back to read-write when read-only cannot open.
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
            if is_corruption(exc):
                return f"{type(exc).__name__}: {exc}"[:200]
            if not read_only:
                raise
        finally:
            if conn is not None:
                conn.close()
    return None


def _configure_and_migrate(conn: sqlite3.Connection) -> None:
    fresh = conn.execute("PRAGMA page_count").fetchone()[0] == 0
    if fresh:  # must be set before the first table exists
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log_event(log, "storage_wal_unavailable", level=logging.WARNING, mode=mode)
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA journal_size_limit=8388608")
    # Checkpoint at 1 MiB of WAL (default 4 MiB): on a full disk, what is still only in the WAL
    # needs that much room in the database file before anything can be written again, and the
    # write reserve (4 MiB by default) must cover it (docs/storage.md).
    conn.execute("PRAGMA wal_autocheckpoint=256")
    MIGRATIONS.apply(Database(conn, execute_plugins=False))
    # No planner statistics: with them SQLite sees a 3-valued status column and prefers a full
    # scan over events_claim for status='in_flight' (the plans test shows it). Older versions
    # ran PRAGMA optimize at close, which could have created them.
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name='sqlite_stat1'").fetchone():
        conn.execute("DELETE FROM sqlite_stat1 WHERE tbl='events'")
        conn.execute("ANALYZE sqlite_schema")  # reload the (now empty) statistics


class OutboxDB:
    """The shared database object: ``lock`` guards ``conn``; ``tx()`` is one write transaction."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self.db_uuid: str | None = None

    # ------------------------------------------------------------------ opening

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection (hold ``lock``); ``StorageUnavailable`` while the database is closed."""
        conn = self._conn
        if conn is None:
            raise StorageUnavailable(f"database {self.path} is not open")
        return conn

    def open(self, node_id: str) -> list[Finding]:
        """Open (or create) the database for ``node_id``; returns what had to be moved aside.
        Raises ``sqlite3.Error``/``OSError`` for errors that are not the file's fault."""
        with self.lock:
            if self._conn is not None:
                return []
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _open_lock(self.path):
                return self._open_locked(node_id)

    def _open_locked(self, node_id: str) -> list[Finding]:
        findings = inspect_files(self.path, node_id)
        reason = _check(self.path)
        if reason is not None:
            findings.append(self._quarantine("corrupt", reason, None))
        conn = self._connect_migrated(findings)
        for _ in range(3):
            try:
                self.db_uuid, found = adopt(conn, self.path, node_id,
                                            fresh_expected=bool(findings))
                findings.extend(found)
                break
            except ForeignDatabase as exc:
                conn.close()
                findings.append(self._quarantine("foreign", exc.detail, exc.unacked,
                                                 reason=exc.reason))
                conn = self._connect_migrated(findings)
        self._conn = conn
        return findings

    def _quarantine(self, tag: str, detail: str, unacked: int | None, *,
                    reason: str | None = None) -> Finding:
        moved = quarantine(self.path, tag)
        return report(Finding(reason or tag, str(moved), unacked, detail))

    def _connect_migrated(self, findings: list[Finding]) -> sqlite3.Connection:
        conn = _connect(self.path)
        try:
            _configure_and_migrate(conn)
            return conn
        except sqlite3.Error as exc:
            conn.close()
            if not is_corruption(exc) or any(f.reason == "corrupt" for f in findings):
                raise
            findings.append(self._quarantine("corrupt", f"{type(exc).__name__}: {exc}"[:200],
                                             None))
        conn = _connect(self.path)
        _configure_and_migrate(conn)
        return conn

    # ------------------------------------------------------------------ use

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT) under the lock. It bumps
        ``meta.commits``, so every WAL this node writes carries its meta page (identity.py)."""
        with self.lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_BUMP)
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Rows of one read (or ``RETURNING``) statement, under the lock."""
        with self.lock:
            return self.conn.execute(sql, args).fetchall()

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """One autocommit write statement; returns its rowcount."""
        with self.lock:
            return int(self.conn.execute(sql, args).rowcount)

    def plan(self, sql: str, args: Sequence[Any] = ()) -> list[str]:
        """``EXPLAIN QUERY PLAN`` details of ``sql`` (tests and docs assert them)."""
        with self.lock:
            return [r[3] for r in self.conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]

    def close(self) -> None:
        with self.lock:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            conn.close()
