"""PostgreSQL month partitions of ``events``: created ahead of time, dropped after retention.

Rules (docs/central-store.md, *Retention of events and the audit log*):

* ``ensure_months`` creates the current month and ``ahead`` further months, so ingest finds its
  partition in place at a month's rollover (``PostgresStore`` still creates a missing one itself,
  but then under the parent's lock, at the busiest moment: ``month_guard`` bounds that wait and
  defers the month, its rows going to the DEFAULT partition meanwhile). When the DEFAULT partition already
  holds rows of that month (rows kept as evidence, rows written before the partition existed),
  they are moved into the new partition in the same transaction, because PostgreSQL refuses to
  create a partition whose rows sit in the default one.
* ``drop_month`` removes one month whose last day is older than the retention: in ONE
  transaction it detaches the partition (waiting at most ``lock_timeout_s`` for the lock, else the
  month is left for the next run), copies the rows that must be kept (``HELD``: events of an open
  incident or of one closed within the evidence hold) back into ``events`` (they land in the
  DEFAULT partition, since no partition covers that month any more) and drops the detached
  table. Readers never see the month half gone.
* ``purge_default`` and ``purge_keys`` then delete, in bounded chunks, default-partition rows
  older than the retention that are no longer held, and the ``event_keys`` rows of every event
  that is gone. Both are idempotent: a run killed half-way is finished by the next one.

Every statement here runs through ``sql.SqlTx`` (the same seam as the desk's tables).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from central_sync.store.desk_tables import OPEN
from central_sync.store.postgres_schema import MIGRATION_LOCK, month_start, next_month, partition_name
from central_sync.store.sql import SqlTx, one

#: pg_advisory_xact_lock key of partition DDL (maintenance, copy and ingest's ``month_guard``).
PARTITION_LOCK = MIGRATION_LOCK + 1
_MONTH = re.compile(r"^events_(\d{4})_(\d{2})$")

#: Rows of ``e`` (an events table or partition) that retention must keep: events of an open
#: incident, or of one closed after the evidence-hold cut (parameter).
HELD = ("EXISTS (SELECT 1 FROM incident_events ie JOIN incidents i ON i.incident_id = ie.incident_id "
        "WHERE ie.node_id = e.node_id AND ie.event_id = e.event_id "
        f"AND (i.state IN {OPEN} OR i.closed_at IS NULL OR i.closed_at >= ?))")


@dataclass(frozen=True, slots=True)
class Month:
    name: str
    start: dt.datetime

    @property
    def end(self) -> dt.datetime:
        return next_month(self.start)

    @property
    def label(self) -> str:
        return f"{self.start:%Y-%m}"


@dataclass(frozen=True, slots=True)
class DroppedMonth:
    month: Month
    deleted: int
    held: int


def month_of(name: str) -> Month | None:
    m = _MONTH.match(name)
    if m is None:
        return None
    year, month = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12:
        return None
    return Month(name, dt.datetime(year, month, 1, tzinfo=dt.UTC))


def attached_months(tx: SqlTx) -> list[Month]:
    """The month partitions of ``events``, oldest first (the DEFAULT partition is not one)."""
    rows = tx.rows("SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                   "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'events' "
                   "AND p.relnamespace = 'public'::regnamespace")
    months = [m for m in (month_of(str(r["name"])) for r in rows) if m is not None]
    return sorted(months, key=lambda m: m.start)


def event_columns(tx: SqlTx) -> list[str]:
    return [str(r["attname"]) for r in tx.rows(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'public.events'::regclass AND attnum > 0 "
        "AND NOT attisdropped ORDER BY attnum")]


def _exists(tx: SqlTx, name: str) -> bool:
    row = one(tx, "SELECT to_regclass(?) IS NOT NULL AS x", (f"public.{name}",))
    return bool(row and row["x"])


def ensure_month(tx: SqlTx, start: dt.datetime, lock_timeout_ms: int | None = None) -> bool:
    """Create the partition of the month starting at ``start`` if missing; True when created.
    Creating takes the parent's exclusive lock: with ``lock_timeout_ms`` it waits at most that
    long (then the lock error propagates), so it never queues ingest behind a long reader."""
    tx.rows("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(?)) AS l", (PARTITION_LOCK,))
    name = partition_name(start)
    if _exists(tx, name):
        return False
    if lock_timeout_ms is not None:
        tx.run(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
    lo, hi = start.timestamp(), next_month(start).timestamp()
    bounds = f"FOR VALUES FROM ({lo!r}) TO ({hi!r})"
    in_default = one(tx, "SELECT EXISTS (SELECT 1 FROM events_default WHERE received_at >= ? "
                     "AND received_at < ?) AS x", (lo, hi))
    if in_default and in_default["x"]:
        cols = ", ".join(event_columns(tx))
        tx.run(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        tx.run(f"WITH moved AS (DELETE FROM events_default WHERE received_at >= ? AND received_at < ? "
               f"RETURNING {cols}) INSERT INTO {name} ({cols}) SELECT {cols} FROM moved", (lo, hi))
        tx.run(f"ALTER TABLE events ATTACH PARTITION {name} {bounds}")
    else:
        tx.run(f"CREATE TABLE {name} PARTITION OF events {bounds}")
    return True


def months_to_ensure(now: float, ahead: int) -> list[dt.datetime]:
    """The current month and ``ahead`` months after it."""
    out = [month_start(now)]
    for _ in range(ahead):
        out.append(next_month(out[-1]))
    return out


def expired_months(tx: SqlTx, cutoff: float) -> list[Month]:
    """Attached months whose end is at or before ``cutoff`` (every row in them is older)."""
    return [m for m in attached_months(tx) if m.end.timestamp() <= cutoff]


def drop_month(tx: SqlTx, month: Month, hold_cut: float, lock_timeout_ms: int) -> DroppedMonth | None:
    """Detach and drop ``month``, keeping its held rows (see the module docstring). None when the
    month is gone already (another run dropped it). The month is read (counted, held rows set
    aside) BEFORE the detach, so the parent's exclusive lock is held only for the detach, the
    re-insert of the few held rows and the drop."""
    tx.rows("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(?)) AS l", (PARTITION_LOCK,))
    if month.name not in {m.name for m in attached_months(tx)}:
        return None
    cols = ", ".join(event_columns(tx))
    total_row = one(tx, f"SELECT COUNT(*) AS n FROM {month.name}")
    total = int(total_row["n"]) if total_row else 0
    tx.run("CREATE TEMP TABLE kentongan_held (LIKE events) ON COMMIT DROP")
    tx.run(f"INSERT INTO kentongan_held ({cols}) SELECT {cols} FROM {month.name} e WHERE {HELD}", (hold_cut,))
    tx.run(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
    tx.run(f"ALTER TABLE events DETACH PARTITION {month.name}")
    tx.run("SET LOCAL lock_timeout = 0")
    held = tx.run(f"INSERT INTO events ({cols}) SELECT {cols} FROM kentongan_held")
    tx.run(f"DROP TABLE {month.name}")
    return DroppedMonth(month, total - held, held)


def purge_default(tx: SqlTx, cutoff: float, hold_cut: float, limit: int) -> int:
    """Delete up to ``limit`` default-partition rows received before ``cutoff`` and not held."""
    return tx.run(f"DELETE FROM events_default WHERE ctid = ANY(ARRAY(SELECT e.ctid FROM events_default e "
                  f"WHERE e.received_at < ? AND NOT {HELD} LIMIT ?))", (cutoff, hold_cut, limit))


def key_floor(tx: SqlTx, cutoff: float) -> float:
    """Keys received before this have no event outside the DEFAULT partition: the start of the
    oldest attached month, never above the retention cutoff."""
    months = attached_months(tx)
    oldest = months[0].start.timestamp() if months else cutoff
    return min(oldest, cutoff)


def purge_keys(tx: SqlTx, floor: float, limit: int) -> int:
    """Delete up to ``limit`` ``event_keys`` rows received before ``floor`` whose event is gone."""
    return tx.run("DELETE FROM event_keys WHERE ctid = ANY(ARRAY(SELECT k.ctid FROM event_keys k "
                  "WHERE k.received_at < ? AND NOT EXISTS (SELECT 1 FROM events_default d "
                  "WHERE d.node_id = k.node_id AND d.event_id = k.event_id) LIMIT ?))", (floor, limit))


def default_rows(tx: SqlTx) -> int:
    row = one(tx, "SELECT COUNT(*) AS n FROM events_default")
    return int(row["n"]) if row else 0


def held_rows(tx: SqlTx, table: str, cutoff: float, hold_cut: float) -> int:
    """Rows of ``table`` (``events`` or ``events_default``) past the retention but held."""
    row = one(tx, f"SELECT COUNT(*) AS n FROM {table} e WHERE e.received_at < ? AND {HELD}", (cutoff, hold_cut))
    return int(row["n"]) if row else 0
