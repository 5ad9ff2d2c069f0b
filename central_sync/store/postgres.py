"""Central's store on PostgreSQL 15 (psycopg 3 with a psycopg_pool connection pool): a city.

Every method takes a pooled connection for one transaction. Batches are written with one
statement per table (``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO NOTHING``), so a
commit batch of 500 events costs a handful of round trips and one WAL flush. The event arrays
go in PostgreSQL's binary format (``%b``): psycopg's C dumpers then do the work, 3 us of CPU per
row instead of 17 us for the text form (measured with ``Transformer.dump_sequence``); payloads go
as the text ``json.dumps`` gives (``json_text``) in a ``text[]`` cast to ``jsonb`` by the
statement: the same text PostgreSQL parsed from a ``jsonb[]`` of psycopg ``Jsonb`` wrappers,
whose array dumper called a Python dumper per element (8.5 against 4 us per row of a
three-column array set, ``PostgresQuery.dump``). Each commit that
adds events or changes nodes sends ``NOTIFY kentongan_changes`` in the same transaction
(delivered only if it commits) for the desk's change feed (``postgres_feed.py``).

Errors: lost connections, a server shutting down or starting, serialization failures and
deadlocks raise ``TransientStoreError`` (ingest retries them with backoff); the pool checks each
connection before handing it out, so the first call after a restart reconnects. Values the
database refuses are never raised for a batch: the batch is split with savepoints until only
the offending rows are rejected.

Rejections and commands (the operations log) are ``postgres_ops_log.PostgresOpsLog``, mixed in.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from central_sync.errors import StoreError
from central_sync.store.audit_tables import AuditTables
from central_sync.store.base import ChangeFeed, Row, TransientStoreError, coalesce_nodes
from central_sync.store.checks import ValueRefused, check_event, safe_text
from central_sync.store.desk_tables import DeskTables
from central_sync.store.month_guard import MonthGuard
from central_sync.store.postgres_ops_log import PostgresOpsLog
from central_sync.store.postgres_schema import migrate
from central_sync.store.postgres_support import CHANNEL, is_pg_transient, json_text, notify_chunks
from central_sync.store.registry_tables import RegistryTables
from central_sync.store.rows import (
    EVENT_SELECT,
    NODE_ID,
    NODE_SELECT,
    SNAPSHOT_META,
    TIMED_TYPES_SQL,
    check_timed_type,
    node_row,
)
from central_sync.store.siren_tables import SirenTables
from central_sync.store.sql import PgRunner
from central_sync.store_types import EventCommit, RejectedRow
from edge.sync.wire import EventEnvelope, Heartbeat, Presence, SnapshotEnvelope, unb64


class PostgresStore(PostgresOpsLog):
    """Central's database on PostgreSQL. Thread-safe (one pool, one connection per call)."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 8, timeout_s: float = 10.0) -> None:
        self.url = url
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=int(timeout_s)) as conn:
                migrate(conn)
            self._pool = ConnectionPool(url, min_size=min_size, max_size=max_size, timeout=timeout_s,
                                        kwargs={"row_factory": dict_row}, check=ConnectionPool.check_connection,
                                        open=True, name="kentongan-store")
            self._pool.wait(timeout_s)
        except psycopg.Error as exc:
            if is_pg_transient(exc):
                raise TransientStoreError(f"cannot reach PostgreSQL: {safe_text(str(exc), 300)}") from exc
            raise StoreError(f"cannot open PostgreSQL store: {safe_text(str(exc), 300)}") from exc
        except PoolTimeout as exc:
            raise TransientStoreError(f"cannot reach PostgreSQL: {exc}") from exc
        runner = PgRunner(self._tx)
        self.months = MonthGuard(runner)  # ingest's own partition creation, bounded (month_guard.py)
        self._desk = DeskTables(runner)
        self._registry = RegistryTables(runner)
        self._audit = AuditTables(runner)
        self._sirens = SirenTables(runner)

    def desk(self) -> DeskTables:
        return self._desk

    def registry_tables(self) -> RegistryTables:
        return self._registry

    def audit_tables(self) -> AuditTables:
        return self._audit

    def siren_tables(self) -> SirenTables:
        """Siren activations central started (``central_sync.siren_control``)."""
        return self._sirens

    # -- plumbing --------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection; transient failures become ``TransientStoreError``."""
        try:
            with self._pool.connection() as conn, conn.transaction():
                yield conn
        except ValueRefused:
            raise
        except psycopg.Error as exc:
            if is_pg_transient(exc):
                raise TransientStoreError(f"PostgreSQL unavailable: {safe_text(str(exc), 300)}") from exc
            raise StoreError(f"PostgreSQL error: {safe_text(str(exc), 300)}") from exc
        except PoolTimeout as exc:
            raise TransientStoreError(f"no PostgreSQL connection: {exc}") from exc

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._tx() as conn:
            return list(conn.execute(sql.encode(), params).fetchall())

    def close(self) -> None:
        self._pool.close()

    def change_feed(self) -> ChangeFeed:
        from central_sync.store.postgres_feed import PostgresChangeFeed

        return PostgresChangeFeed(self.url, self)

    @staticmethod
    def _notify(conn: psycopg.Connection[Any], payloads: list[str]) -> None:
        for p in payloads:
            conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, p))

    # -- events ----------------------------------------------------------------------------------
    def commit_events(self, envs: Sequence[EventEnvelope], received_at: float) -> EventCommit:
        """See ``Store.commit_events``: one transaction, duplicates per (node_id, event_id),
        refused rows rejected (checked first; a failing statement is split with savepoints)."""
        out = EventCommit()
        good: list[EventEnvelope] = []
        seen: set[tuple[str, str]] = set()
        outcome: dict[int, bool | RejectedRow] = {}
        for env in envs:
            try:
                check_event(env)
            except ValueRefused as exc:
                out.rejected.append(RejectedRow(safe_text(env.event_id, 64), exc.reason, exc.detail))
                continue
            good.append(env)
        rows: list[tuple[int, EventEnvelope]] = []
        for i, env in enumerate(good):
            key = (env.node_id, env.event_id)
            if key in seen:
                outcome[i] = False
            else:
                seen.add(key)
                rows.append((i, env))
        if rows:
            self.months.ensure(received_at)
            with self._tx() as conn:
                rowids: list[int] = []
                self._insert_split(conn, rows, received_at, outcome, rowids)
                touched = sorted({env.node_id for i, env in rows if outcome.get(i) is True})
                if touched:
                    conn.execute(
                        "INSERT INTO nodes (node_id, last_seen, change_seq) SELECT n, %s, nextval('node_change_seq') "
                        "FROM unnest(%s::text[]) AS n ON CONFLICT (node_id) DO UPDATE SET "
                        "last_seen = GREATEST(COALESCE(nodes.last_seen, 0), excluded.last_seen), "
                        "change_seq = excluded.change_seq", (received_at, touched))
                    self._notify(conn, [f"e:{min(rowids)}:{max(rowids)}", *notify_chunks("n:", touched)])
        for i, env in enumerate(good):
            result = outcome[i]
            if isinstance(result, RejectedRow):
                out.rejected.append(result)
            elif result:
                out.inserted.append(env.event_id)
            else:
                out.duplicates.append(env.event_id)
        return out

    def _insert_split(self, conn: psycopg.Connection[Any], rows: list[tuple[int, EventEnvelope]], received_at: float,
                      outcome: dict[int, bool | RejectedRow], rowids: list[int]) -> None:
        try:
            with conn.transaction():  # a savepoint
                got = conn.execute(
                    "INSERT INTO event_keys (node_id, event_id, received_at) "
                    "SELECT n, e, %s FROM unnest(%b::text[], %b::text[]) AS k(n, e) "
                    "ON CONFLICT DO NOTHING RETURNING node_id, event_id, rowid",
                    (received_at, [env.node_id for _i, env in rows], [env.event_id for _i, env in rows])).fetchall()
                new = {(r["node_id"], r["event_id"]): int(r["rowid"]) for r in got}
                fresh = [(i, env, new[(env.node_id, env.event_id)]) for i, env in rows
                         if (env.node_id, env.event_id) in new]
                if fresh:
                    conn.execute(
                        "INSERT INTO events (rowid, event_id, node_id, boot_id, seq, mono_ns, wall_time, time_quality, "
                        "type, priority, incident_id, payload, sig, received_at) "
                        "SELECT r, e, n, b, s, m, w, q, t, p, i, j::jsonb, g, %s FROM unnest(%b::bigint[], "
                        "%b::text[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::float8[], %b::text[], "
                        "%b::text[], %b::int[], %b::text[], %b::text[], %b::text[]) AS u(r, e, n, b, s, m, w, q, t, p, "
                        "i, j, g)",
                        (received_at, [r for _i, _e, r in fresh], [e.event_id for _i, e, _r in fresh],
                         [e.node_id for _i, e, _r in fresh], [e.boot_id for _i, e, _r in fresh],
                         [e.seq for _i, e, _r in fresh], [e.mono_ns for _i, e, _r in fresh],
                         [e.wall_time for _i, e, _r in fresh], [e.time_quality for _i, e, _r in fresh],
                         [e.type for _i, e, _r in fresh], [e.priority for _i, e, _r in fresh],
                         [e.incident_id for _i, e, _r in fresh], [json_text(e.payload) for _i, e, _r in fresh],
                         [e.sig for _i, e, _r in fresh]))
        except (pgerr.DataError, pgerr.IntegrityError, pgerr.ProgrammingError, pgerr.InternalError_,
                ValueError, TypeError, OverflowError, UnicodeError) as exc:
            if isinstance(exc, psycopg.Error) and is_pg_transient(exc):
                raise
            if len(rows) == 1:
                i, env = rows[0]
                outcome[i] = RejectedRow(safe_text(env.event_id, 64), "store_refused",
                                         safe_text(f"{type(exc).__name__}: {exc}", 300))
                return
            half = len(rows) // 2
            self._insert_split(conn, rows[:half], received_at, outcome, rowids)
            self._insert_split(conn, rows[half:], received_at, outcome, rowids)
            return
        for i, env in rows:
            rowid = new.get((env.node_id, env.event_id))
            outcome[i] = rowid is not None
            if rowid is not None:
                rowids.append(rowid)

    def insert_events(self, envs: Sequence[EventEnvelope], received_at: float) -> tuple[list[str], list[str]]:
        result = self.commit_events(envs, received_at)
        return result.inserted, result.duplicates

    def get_events(self, event_ids: Sequence[str], node_id: str | None = None) -> list[Row]:
        """As ``CentralStore.get_events``: with ``node_id`` the keys come from ``event_keys``'
        primary key and the rows from ``events_rowid``; without it a scan (tests and tools: no
        index on ``event_id`` alone, migration 0009)."""
        if not event_ids:
            return []
        if node_id is None:
            return self._query(f"{EVENT_SELECT} WHERE event_id = ANY(%s) ORDER BY rowid", (list(event_ids),))
        return self._query(f"{EVENT_SELECT} WHERE rowid = ANY(ARRAY(SELECT rowid FROM event_keys WHERE node_id = %s "
                           "AND event_id = ANY(%s))) AND node_id = %s ORDER BY rowid",
                           (node_id, list(event_ids), node_id))

    def get_event(self, event_id: str, node_id: str | None = None) -> Row | None:
        rows = self.get_events([event_id], node_id)
        return rows[0] if rows else None

    def list_events(self, *, node_id: str | None = None, since_rowid: int = 0, limit: int = 1000) -> list[Row]:
        if node_id is None:
            return self._query(f"{EVENT_SELECT} WHERE rowid > %s ORDER BY rowid LIMIT %s", (since_rowid, limit))
        return self._query(f"{EVENT_SELECT} WHERE node_id = %s AND rowid > %s ORDER BY rowid LIMIT %s",
                           (node_id, since_rowid, limit))

    def events_between(self, first_rowid: int, last_rowid: int) -> list[Row]:
        """Events with ``first_rowid <= rowid <= last_rowid`` (the change feed's read)."""
        return self._query(f"{EVENT_SELECT} WHERE rowid BETWEEN %s AND %s ORDER BY rowid",
                           (first_rowid, last_rowid))

    def latest_events(self, *, node_id: str | None = None, limit: int = 20) -> list[Row]:
        if node_id is None:
            rows = self._query(f"{EVENT_SELECT} ORDER BY rowid DESC LIMIT %s", (limit,))
        else:
            rows = self._query(f"{EVENT_SELECT} WHERE node_id = %s ORDER BY rowid DESC LIMIT %s", (node_id, limit))
        return list(reversed(rows))

    def last_event_times(self, event_type: str) -> dict[str, float]:
        check_timed_type(event_type)
        rows = self._query(f"SELECT node_id, MAX(wall_time) AS t FROM events WHERE type = %s AND {TIMED_TYPES_SQL} "
                           "GROUP BY node_id", (event_type,))
        return {r["node_id"]: r["t"] for r in rows}

    def count_events(self, node_id: str | None = None) -> int:
        if node_id is None:
            return int(self._query("SELECT COUNT(*) AS n FROM events")[0]["n"])
        return int(self._query("SELECT COUNT(*) AS n FROM events WHERE node_id = %s", (node_id,))[0]["n"])

    # -- snapshots -------------------------------------------------------------------------------
    def insert_snapshot(self, env: SnapshotEnvelope, received_at: float) -> bool:
        data = unb64(env.data)
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO snapshots (snapshot_id, event_id, node_id, taken_at, content_type, sealed, data, size, "
                "sig, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (env.snapshot_id, env.event_id, env.node_id, env.taken_at, env.content_type, env.sealed, data,
                 len(data), env.sig, received_at))
            return cur.rowcount == 1

    def get_snapshot(self, snapshot_id: str) -> Row | None:
        rows = self._query(f"SELECT {', '.join(SNAPSHOT_META)}, data FROM snapshots WHERE snapshot_id = %s",
                           (snapshot_id,))
        if not rows:
            return None
        out = rows[0]
        out["data"] = bytes(out["data"])
        return out

    def list_snapshots(self, *, event_id: str | None = None, node_id: str | None = None) -> list[Row]:
        where, params = [], []
        if event_id is not None:
            where.append("event_id = %s")
            params.append(event_id)
        if node_id is not None:
            where.append("node_id = %s")
            params.append(node_id)
        sql = f"SELECT {', '.join(SNAPSHOT_META)} FROM snapshots"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self._query(sql + " ORDER BY taken_at, snapshot_id", params)

    # -- nodes -----------------------------------------------------------------------------------
    def apply_node_updates(self, presences: Sequence[Presence], heartbeats: Sequence[Heartbeat],
                           received_at: float) -> None:
        """Coalesced per node (see ``base.coalesce_nodes``), ONE transaction, one NOTIFY."""
        beats, pres, ident = coalesce_nodes(presences, heartbeats)
        touched = sorted(set(beats) | set(pres))
        if not touched:
            return
        with self._tx() as conn:
            seq = int(conn.execute("SELECT nextval('node_change_seq') AS s").fetchone()["s"])  # type: ignore[index]
            conn.execute("INSERT INTO nodes (node_id) SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (touched,))
            if beats:
                hs = [beats[n] for n in sorted(beats)]
                conn.execute(
                    "UPDATE nodes SET online = true, last_seen = GREATEST(COALESCE(last_seen, 0), %s), "
                    "heartbeat_at = %s, boot_id = u.boot_id, version = u.version, backlog = u.backlog, "
                    "outbox = u.outbox, siren = u.siren, time_quality = u.tq, clock_offset = u.co, change_seq = %s "
                    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[], "
                    "%s::text[], %s::float8[]) AS u(node_id, boot_id, version, backlog, outbox, siren, tq, co) "
                    "WHERE nodes.node_id = u.node_id",
                    (received_at, received_at, seq, [h.node_id for h in hs], [h.boot_id for h in hs],
                     [h.version for h in hs],
                     [int(h.outbox.get("ready", 0)) + int(h.outbox.get("in_flight", 0)) for h in hs],
                     [json.dumps(h.outbox) for h in hs], [json.dumps(h.siren, default=str) for h in hs],
                     [h.time_quality for h in hs], [h.clock_offset for h in hs]))
            for node_id in sorted(pres):
                p = pres[node_id]
                fields = ident.get(node_id, {})
                sets = ["online = %s", "presence_at = %s", "last_seen = GREATEST(COALESCE(last_seen, 0), %s)",
                        "change_seq = %s", *(f"{col} = %s" for col in fields)]
                conn.execute(f"UPDATE nodes SET {', '.join(sets)} WHERE node_id = %s".encode(),
                             [p.state == "online", received_at, received_at, seq, *fields.values(), node_id])
            self._notify(conn, notify_chunks("n:", touched))

    def upsert_presence(self, p: Presence, received_at: float) -> None:
        self.apply_node_updates([p], [], received_at)

    def upsert_heartbeat(self, h: Heartbeat, received_at: float) -> None:
        self.apply_node_updates([], [h], received_at)

    def touch_node(self, node_id: str, received_at: float) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO nodes (node_id, last_seen, change_seq) "
                         "VALUES (%s, %s, nextval('node_change_seq')) ON CONFLICT (node_id) DO UPDATE SET "
                         "last_seen = GREATEST(COALESCE(nodes.last_seen, 0), "
                         "excluded.last_seen), change_seq = excluded.change_seq", (node_id, received_at))
            self._notify(conn, [f"n:{node_id}"])

    def list_nodes(self, *, now: float | None = None) -> list[Row]:
        t = time.time() if now is None else now
        return [node_row(r, t) for r in self._query(f"{NODE_SELECT} ORDER BY {NODE_ID}")]

    def nodes_by_id(self, node_ids: Sequence[str], *, now: float | None = None) -> list[Row]:
        t = time.time() if now is None else now
        return [node_row(r, t) for r in self._query(f"{NODE_SELECT} WHERE {NODE_ID} = ANY(%s)", (list(node_ids),))]
