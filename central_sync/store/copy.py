"""Copy an SQLite store into PostgreSQL (``kentongan-central store copy``): resumable, idempotent.

Every table of the source that the target also has is copied in the source's key order
(``rowid``, or the primary key of a ``WITHOUT ROWID`` table), ``chunk`` rows per target
transaction. Each transaction also records how far that table got in ``kentongan_copy_progress``
(created in the target by the first copy), so a copy killed at any point resumes after the last
committed chunk, and a finished copy run again copies nothing. ``ON CONFLICT DO NOTHING`` on every
insert is the second guard. Events go through ``event_keys`` exactly as ingest writes them, with
their month partitions created first.

Row ids (event ``rowid``, the ``id`` of log tables) are kept, so the desk's stored cursors stay
meaningful; the sequences are moved past them at the end. ``merge`` (a target that already holds
other data) gives copied rows new ids instead. Not copied: ``web_login_attempts`` (the short-lived
failed-login throttle) and SQLite's ``change_counter`` (PostgreSQL numbers changes with sequences;
``node_change_seq`` is moved past it). Rows PostgreSQL refuses (text with NUL characters, written
by versions before ``checks.py``) are skipped one by one and reported, never a failed copy.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from central_sync.errors import StoreError
from central_sync.store.partitions import ensure_month
from central_sync.store.postgres_schema import month_start
from central_sync.store.sql import PgRunner

#: Copied first (foreign keys), in this order; other tables both sides have follow, events last.
ORDER = ("node_registry", "node_certs", "event_digests", "web_users", "web_user_rts", "web_sessions",
         "incidents", "incident_events", "incident_log", "access_log", "web_warnings", "retention_log",
         "web_state", "nodes", "commands", "rejections", "snapshots", "audit_log")
SKIPPED = {"web_login_attempts": "short-lived failed-login throttle",
           "change_counter": "SQLite's change number (PostgreSQL uses node_change_seq)"}
_INTERNAL = ("sqlite_", "_sqlite_")
PROGRESS = "kentongan_copy_progress"


@dataclass
class TableResult:
    table: str
    source: int
    target: int = 0
    copied: int = 0
    refused: list[str] = field(default_factory=list)

    def ok(self, merge: bool) -> bool:
        expected = self.source - len(self.refused)
        return self.target >= expected if merge else self.target == expected


@dataclass
class CopyReport:
    resumed: bool
    merge: bool
    tables: list[TableResult] = field(default_factory=list)
    not_copied: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok(self.merge) and not t.refused for t in self.tables)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _convert(value: Any, pg_type: str) -> Any:
    if value is None:
        return None
    if pg_type == "boolean":
        return bool(value)
    if pg_type == "jsonb":
        return Jsonb(json.loads(value) if isinstance(value, str | bytes) else value)
    if pg_type == "bytea":
        return bytes(value)
    if pg_type in ("bigint", "integer", "smallint"):
        return int(value)
    if pg_type in ("double precision", "real", "numeric"):
        return float(value)
    return value if isinstance(value, str) else str(value)


class StoreCopy:
    """One copy of ``source`` (an SQLite file) into ``target_url`` (an already migrated store)."""

    def __init__(self, source: Path, target_url: str, *, merge: bool = False, chunk: int = 2000,
                 progress: Callable[[str], None] | None = None) -> None:
        if chunk < 1:
            raise StoreError("--chunk must be at least 1")
        self.source, self.target_url, self.merge, self.chunk = source.resolve(), target_url, merge, chunk
        self.key = str(self.source)
        self._say = progress or (lambda _line: None)
        if not self.source.is_file():
            raise StoreError(f"no SQLite store at {self.source}")
        try:
            self.src = sqlite3.connect(f"file:{self.source}?mode=ro", uri=True)
            self.src.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.source} is not a central store: {exc}") from exc
        try:
            self.dst = psycopg.connect(target_url, connect_timeout=10, autocommit=True)
            self.ddl = psycopg.connect(target_url, connect_timeout=10, autocommit=True, row_factory=dict_row)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the target: {str(exc).strip()[:300]}") from exc
        self.runner = PgRunner(self._ddl_tx)
        self._months: set[float] = set()

    def close(self) -> None:
        self.src.close()
        self.dst.close()
        self.ddl.close()

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        with self.dst.transaction():
            yield self.dst

    @contextmanager
    def _ddl_tx(self) -> Iterator[psycopg.Connection[Any]]:
        """Partition DDL on its own connection (dict rows, as ``partitions`` expects)."""
        with self.ddl.transaction():
            yield self.ddl

    # -- discovery -------------------------------------------------------------------------------
    def _src_tables(self) -> list[str]:
        return [r[0] for r in self.src.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                if not r[0].startswith(_INTERNAL)]

    def _tgt_columns(self, table: str) -> dict[str, tuple[str, bool]]:
        rows = self.dst.execute("SELECT column_name, data_type, is_identity FROM information_schema.columns "
                                "WHERE table_schema = 'public' AND table_name = %s", (table,)).fetchall()
        return {str(r[0]): (str(r[1]), r[2] == "YES") for r in rows}

    def _order_key(self, table: str) -> list[str]:
        try:
            self.src.execute(f"SELECT rowid FROM {_q(table)} LIMIT 0")
            return ["rowid"]
        except sqlite3.OperationalError:  # WITHOUT ROWID: its primary key
            info = self.src.execute(f"PRAGMA table_info({_q(table)})").fetchall()
            return [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]

    def _state(self) -> dict[str, tuple[list[Any], int, str]]:
        self.dst.execute(f"CREATE TABLE IF NOT EXISTS {PROGRESS} (source text NOT NULL, tbl text NOT NULL, "
                         "last_key text NOT NULL, copied bigint NOT NULL, mode text NOT NULL, "
                         "PRIMARY KEY (source, tbl))")
        rows = self.dst.execute(f"SELECT tbl, last_key, copied, mode FROM {PROGRESS} WHERE source = %s",
                                (self.key,)).fetchall()
        return {str(r[0]): (json.loads(r[1]), int(r[2]), str(r[3])) for r in rows}

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.dst.execute(sql.encode(), params).fetchone()
        return None if row is None else row[0]

    def _holding(self, tables: Sequence[str]) -> list[str]:
        return [t for t in tables if self._scalar(f"SELECT EXISTS (SELECT 1 FROM {_q(t)})")]

    # -- the copy --------------------------------------------------------------------------------
    def run(self) -> CopyReport:
        """Copy everything; a database error stops the copy as a ``StoreError`` (run it again to
        resume: every committed chunk stays)."""
        try:
            return self._run()
        except psycopg.Error as exc:
            raise StoreError(f"the copy stopped: {type(exc).__name__}: {str(exc).strip()[:300]} "
                             "(run the same command again to resume)") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.source}: {exc}") from exc

    def _run(self) -> CopyReport:
        state = self._state()
        src_tables = self._src_tables()
        plan: list[str] = []
        report = CopyReport(resumed=bool(state), merge=self.merge)
        for table in [*ORDER, *sorted(t for t in src_tables if t not in ORDER and t != "events"), "events"]:
            if table not in src_tables or table in plan:
                continue
            if table in SKIPPED:
                report.not_copied.append((table, SKIPPED[table]))
            elif not self._tgt_columns(table):
                report.not_copied.append((table, "the target has no such table"))
            else:
                plan.append(table)
        if state:
            modes = {m for _k, _n, m in state.values()}
            report.merge = self.merge = "merge" in modes
            self._say(f"resuming an interrupted copy of {self.source}" + (" (merge)" if self.merge else ""))
        else:
            busy = self._holding(plan)
            if busy and not self.merge:
                raise StoreError(f"the target already holds data ({', '.join(busy)}) that is not a copy of "
                                 f"{self.source}; copy into an empty database, or pass --merge to add to it")
        for table in plan:
            report.tables.append(self._copy_table(table, state.get(table)))
        self._finish_sequences()
        for result in report.tables:
            result.target = self._count_target(result.table)
        return report

    def _count_target(self, table: str) -> int:
        return int(self._scalar(f"SELECT COUNT(*) FROM {_q(table)}"))

    def _copy_table(self, table: str, prior: tuple[list[Any], int, str] | None) -> TableResult:
        key = self._order_key(table)
        src_cols = [r[1] for r in self.src.execute(f"PRAGMA table_info({_q(table)})").fetchall()]
        tgt = self._tgt_columns(table)
        missing = [c for c in src_cols if c not in tgt]
        if missing:
            raise StoreError(f"{table}: the target has no column {', '.join(missing)} (is it migrated by the "
                             "same version?)")
        total = int(self.src.execute(f"SELECT COUNT(*) FROM {_q(table)}").fetchone()[0])
        result = TableResult(table, total)
        last, copied = (prior[0], prior[1]) if prior else (None, 0)
        sel_key = ", ".join(_q(k) for k in key)
        select = f"SELECT {sel_key}, {', '.join(_q(c) for c in src_cols)} FROM {_q(table)}"
        tick = began = time.monotonic()
        while True:
            if last is None:
                rows = self.src.execute(f"{select} ORDER BY {sel_key} LIMIT ?", (self.chunk,)).fetchall()
            else:
                marks = ", ".join("?" for _ in key)
                rows = self.src.execute(f"{select} WHERE ({sel_key}) > ({marks}) ORDER BY {sel_key} LIMIT ?",
                                        (*last, self.chunk)).fetchall()
            if not rows:
                break
            keys = [list(r[:len(key)]) for r in rows]
            data = [dict(zip(src_cols, r[len(key):], strict=True)) for r in rows]
            if table == "events":
                self._ensure_months(data)
            with self._tx():
                n = self._insert(table, tgt, data, keys, result)
                copied += len(rows)
                last = keys[-1]
                self.dst.execute(f"INSERT INTO {PROGRESS} (source, tbl, last_key, copied, mode) VALUES "
                                 "(%s, %s, %s, %s, %s) ON CONFLICT (source, tbl) DO UPDATE SET "
                                 "last_key = excluded.last_key, copied = excluded.copied",
                                 (self.key, table, json.dumps(last), copied, "merge" if self.merge else "copy"))
            result.copied += n
            if time.monotonic() - tick >= 2.0:
                tick = time.monotonic()
                self._say(f"{table}: {copied}/{total} rows")
        took = time.monotonic() - began
        rate = f", {result.copied / took:,.0f} rows/s" if result.copied and took > 0 else ""
        self._say(f"{table}: {copied}/{total} rows, done ({result.copied} copied now{rate})")
        return result

    def _ensure_months(self, rows: list[dict[str, Any]]) -> None:
        for start in {month_start(float(r["received_at"])) for r in rows}:
            if start.timestamp() in self._months:
                continue
            with self.runner.tx() as tx:
                ensure_month(tx, start)
            self._months.add(start.timestamp())

    def _insert(self, table: str, tgt: dict[str, tuple[str, bool]], data: list[dict[str, Any]],
                keys: list[list[Any]], result: TableResult) -> int:
        """Insert one chunk (savepoint); refused rows are retried alone and the bad ones reported."""
        try:
            with self.dst.transaction():
                return self._insert_rows(table, tgt, data)
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError, ValueError) as exc:
            if len(data) == 1:
                first = (str(exc).strip().splitlines() or [""])[0]
                result.refused.append(f"{table} {keys[0]}: {type(exc).__name__}: {first[:200]}")
                return 0
        n = 0
        for row, k in zip(data, keys, strict=True):
            n += self._insert(table, tgt, [row], [k], result)
        return n

    def _insert_rows(self, table: str, tgt: dict[str, tuple[str, bool]], data: list[dict[str, Any]]) -> int:
        if table == "events":
            return self._insert_events(tgt, data)
        cols = [c for c in data[0] if not (self.merge and tgt[c][1])]
        identity = any(tgt[c][1] for c in cols)
        sql = (f"INSERT INTO {_q(table)} ({', '.join(_q(c) for c in cols)}) "
               + ("OVERRIDING SYSTEM VALUE " if identity else "")
               + f"VALUES ({', '.join('%s' for _ in cols)}) ON CONFLICT DO NOTHING")
        with self.dst.cursor() as cur:
            cur.executemany(sql.encode(), [[_convert(r[c], tgt[c][0]) for c in cols] for r in data],
                            returning=False)
        return len(data)

    def _insert_events(self, tgt: dict[str, tuple[str, bool]], data: list[dict[str, Any]]) -> int:
        if self.merge:
            got = self.dst.execute(
                "INSERT INTO event_keys (node_id, event_id, received_at) SELECT * FROM unnest(%s::text[], "
                "%s::text[], %s::float8[]) ON CONFLICT DO NOTHING RETURNING node_id, event_id, rowid",
                ([r["node_id"] for r in data], [r["event_id"] for r in data],
                 [float(r["received_at"]) for r in data])).fetchall()
        else:
            got = self.dst.execute(
                "INSERT INTO event_keys (node_id, event_id, rowid, received_at) SELECT * FROM unnest(%s::text[], "
                "%s::text[], %s::bigint[], %s::float8[]) ON CONFLICT DO NOTHING RETURNING node_id, event_id, rowid",
                ([r["node_id"] for r in data], [r["event_id"] for r in data], [int(r["rowid"]) for r in data],
                 [float(r["received_at"]) for r in data])).fetchall()
        new = {(str(n), str(e)): int(rowid) for n, e, rowid in got}
        fresh = [dict(r, rowid=new[(r["node_id"], r["event_id"])]) for r in data
                 if (r["node_id"], r["event_id"]) in new]
        if fresh:  # their keys are new, so are they: COPY, no conflict handling needed
            cols = list(data[0])
            with self.dst.cursor() as cur, cur.copy(
                    f"COPY events ({', '.join(_q(c) for c in cols)}) FROM STDIN".encode()) as pipe:
                for r in fresh:
                    pipe.write_row([_convert(r[c], tgt[c][0]) for c in cols])
        return len(fresh)

    def _finish_sequences(self) -> None:
        """Move the sequences past the copied ids, so new rows never collide with them."""
        with self._tx():
            rows = self.dst.execute("SELECT table_name, column_name FROM information_schema.columns WHERE "
                                    "table_schema = 'public' AND is_identity = 'YES'").fetchall()
            for table, column in rows:
                self.dst.execute(f"SELECT setval(pg_get_serial_sequence(%s, %s), m) FROM (SELECT MAX({_q(column)}) "
                                 f"AS m FROM {_q(table)}) AS t WHERE m IS NOT NULL", (f"public.{table}", column))
            self.dst.execute("SELECT setval('events_rowid_seq', m) FROM (SELECT MAX(rowid) AS m FROM event_keys) "
                             "AS t WHERE m IS NOT NULL AND m > (SELECT last_value FROM events_rowid_seq)")
            seqs = [self._scalar("SELECT COALESCE(MAX(change_seq), 0) FROM nodes")]
            with suppress(sqlite3.Error, TypeError):
                seqs.append(self.src.execute("SELECT seq FROM change_counter WHERE id = 1").fetchone()[0])
            top = max(int(s or 0) for s in seqs)
            if top > 0:
                self.dst.execute("SELECT setval('node_change_seq', %s) WHERE %s > (SELECT last_value FROM "
                                 "node_change_seq)", (top, top))
