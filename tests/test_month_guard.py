"""Ingest's own creation of a missing month partition (real PostgreSQL): it waits a bounded time
for its locks behind a long reader, then defers the month instead of stalling ingest; the
events are stored meanwhile (in the DEFAULT partition), and the next attempt creates the month
and moves them into it."""

from __future__ import annotations

import datetime as dt
import time

import psycopg

from central_sync.store import open_store
from central_sync.store.month_guard import MonthGuard
from central_sync.store.postgres_schema import partition_name
from central_sync.web.testing import event


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0


def _exists(url: str, name: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",)).fetchone()
        return bool(row and row[0])


def test_partition_creation_behind_a_long_reader_is_bounded_then_deferred(pg_url: str) -> None:
    store = open_store(pg_url)
    month = dt.datetime(2031, 5, 1, tzinfo=dt.UTC)
    ts = month.timestamp() + 3 * 86400
    name = partition_name(month)
    clock = FakeClock()
    guard = MonthGuard(store.desk().runner, lock_timeout_ms=300, retry_s=30.0, clock=clock)
    reader = psycopg.connect(pg_url)
    try:
        reader.execute("SELECT COUNT(*) FROM events").fetchone()  # a long report holds its lock
        t0 = time.monotonic()
        assert guard.ensure(ts) is False
        waited = time.monotonic() - t0
        assert waited < 20, waited  # bounded by lock_timeout (300 ms), never by the reader
        assert guard.deferrals == 1 and not _exists(pg_url, name)
        # Deferred: the next commits do not wait again within retry_s.
        t0 = time.monotonic()
        assert guard.ensure(ts) is False and guard.deferrals == 1
        assert time.monotonic() - t0 < 5
        # Ingest stores the events anyway (its own guard is just as bounded): in DEFAULT.
        envs = [event("pos-a", "PATROL_CHECKIN") for _ in range(3)]
        commit = store.commit_events(envs, ts)
        assert len(commit.inserted) == 3
        assert _count(pg_url, "events_default") == 3
    finally:
        reader.close()  # the report ends
    clock.now += 31
    assert guard.ensure(ts) is True
    assert _exists(pg_url, name)
    assert _count(pg_url, name) == 3 and _count(pg_url, "events_default") == 0  # moved, not lost
    assert all(store.get_event(e.event_id) is not None for e in envs)
    clock.now += 3600
    assert guard.ensure(ts) is True and guard.deferrals == 1  # known now: no more DDL
    store.close()
