"""The small SQL seam under the desk's and the registry's tables (``desk_tables.py``,
``registry_tables.py``): one implementation of their statements, run on either backend.

Statements are written once in the subset both SQLite and PostgreSQL understand (``?``
placeholders, ``ON CONFLICT ... DO NOTHING / DO UPDATE``, ``CASE`` instead of two-argument
``MAX``, quoted ``"user"``); ``Dialect`` holds the few differences (placeholder style, the column
that orders rows by insertion, JSON parameters). Only modules of this package write SQL.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from central_sync.errors import StoreError
from central_sync.store.base import Row, TransientStoreError


@dataclass(frozen=True)
class Dialect:
    name: str
    #: Column giving insertion order in tables without their own id ("rowid" / "ctid"-free id).
    insertion_order: str

    def sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.name == "postgres" else text

    def json_param(self, value: Any) -> Any:
        if self.name == "postgres":
            from psycopg.types.json import Jsonb

            return Jsonb(value)
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


SQLITE = Dialect("sqlite", "rowid")
POSTGRES = Dialect("postgres", "seq")


class SqlTx(Protocol):
    """Statements inside one transaction."""

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute; return the number of rows changed."""
        ...

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None: ...


class SqlRunner(Protocol):
    dialect: Dialect

    def tx(self) -> AbstractContextManager[SqlTx]: ...

    def read(self) -> AbstractContextManager[SqlTx]:
        """For reads only: on SQLite no write lock is taken (a ``tx`` begins IMMEDIATE, which
        would queue every desk read behind the ingest workers' commits and hold theirs up)."""
        ...


def one(tx: SqlTx, sql: str, params: Sequence[Any] = ()) -> Row | None:
    rows = tx.rows(sql, params)
    return rows[0] if rows else None


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.conn.execute(sql, params).rowcount)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return [dict(r) for r in self.conn.execute(sql, params).fetchall()]

    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, params)


class SqliteRunner:
    """Transactions on a shared ``sqlite3`` connection (``row_factory = sqlite3.Row``) guarded by
    ``lock``: ``BEGIN IMMEDIATE`` ... ``COMMIT``; locked/busy becomes ``TransientStoreError``."""

    dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock | None = None,
                 reader: sqlite3.Connection | None = None) -> None:
        conn.row_factory = sqlite3.Row
        self.conn = conn
        self.lock = lock if lock is not None else threading.RLock()
        #: A second connection for ``read`` (its own lock): a read never waits for the writing
        #: connection's lock, which a writer holds while it waits for SQLite's write lock.
        self.reader = reader
        self._read_lock = threading.Lock()
        if reader is not None:
            reader.row_factory = sqlite3.Row

    @contextmanager
    def tx(self) -> Iterator[SqlTx]:
        with self.lock:
            conn = self.conn
            nested = conn.in_transaction
            try:
                conn.execute("SAVEPOINT sql_tx" if nested else "BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                text = str(exc).lower()
                if "locked" in text or "busy" in text:
                    raise TransientStoreError(f"database busy: {exc}") from exc
                raise StoreError(f"database error: {exc}") from exc
            try:
                yield _SqliteTx(conn)
            except BaseException:
                if nested:
                    conn.execute("ROLLBACK TO sql_tx")
                    conn.execute("RELEASE sql_tx")
                elif conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("RELEASE sql_tx" if nested else "COMMIT")

    @contextmanager
    def read(self) -> Iterator[SqlTx]:
        """Statements in autocommit mode (each one its own consistent snapshot) on the reading
        connection; on the writing one when this thread holds it (a read inside its own
        transaction sees that transaction's writes) or when there is no reading connection."""
        if self.reader is None or self.lock._is_owned():  # type: ignore[attr-defined]
            with self.lock:
                yield _SqliteTx(self.conn)
            return
        with self._read_lock:
            yield _SqliteTx(self.reader)


class _PgTx:
    def __init__(self, conn: Any, dialect: Dialect) -> None:
        self.conn = conn
        self.dialect = dialect

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self.conn.execute(self.dialect.sql(sql).encode(), params).rowcount)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self.conn.execute(self.dialect.sql(sql).encode(), params).fetchall())

    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(self.dialect.sql(sql).encode(), params)


class PgRunner:
    """Transactions on pooled PostgreSQL connections (``PostgresStore._tx``)."""

    dialect = POSTGRES

    def __init__(self, tx_factory: Any) -> None:
        self._tx_factory = tx_factory

    @contextmanager
    def tx(self) -> Iterator[SqlTx]:
        with self._tx_factory() as conn:
            yield _PgTx(conn, self.dialect)

    read = tx  # PostgreSQL reads take no lock that holds a writer up
