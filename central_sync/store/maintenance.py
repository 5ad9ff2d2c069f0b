"""Store maintenance, either backend: event retention, audit-log retention, PostgreSQL partitions.

``StoreMaintenance(runner, settings).run(now)`` (``kentongan-central store maintain``, started by
``systemd/kentongan-store-maintain.timer``):

1. PostgreSQL: the current month's partition and ``partitions_ahead`` more exist
   (``partitions.ensure_months``).
2. Events received more than ``event_retention_days`` ago are deleted, except the *held* ones:
   events of an open incident, or of an incident closed less than ``evidence_hold_days`` ago
   (``partitions.HELD``). PostgreSQL drops whole expired months (held rows move to the DEFAULT
   partition), then purges expired unheld rows of the DEFAULT partition and the ``event_keys`` of
   every event gone. SQLite deletes in chunks of ``chunk_rows`` rows, each its own short
   ``BEGIN IMMEDIATE`` transaction, pausing ``chunk_pause_ms`` between chunks so ingest's commits
   get the write lock; the index ``idx_events_received_at`` these deletions need is created on the
   first run.
3. Audit-log rows older than ``audit_log_retention_days`` are deleted (chunked the same way).

Incidents and their log stay (the desk's history); only the events go. Every deletion is a
``retention_log`` row and a ``retention_deleted`` log line, like ``central_sync.retention``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from central_sync.errors import StoreError
from central_sync.maintenance_settings import MaintenanceSettings
from central_sync.store import partitions
from central_sync.store.base import TransientStoreError
from central_sync.store.desk_tables import RetentionTx
from central_sync.store.partitions import HELD
from central_sync.store.sql import SqlRunner, SqlTx
from edge.logs import log_event

log = logging.getLogger("central.maintenance")
DAY = 86400.0
#: A deletion chunk refused as busy this many times in a row ends the run (the next one resumes).
_BUSY_RETRIES = 8


@dataclass
class MaintenanceReport:
    partitions_created: list[str] = field(default_factory=list)
    partitions_left: list[str] = field(default_factory=list)
    months_dropped: list[str] = field(default_factory=list)
    months_left: list[str] = field(default_factory=list)
    events_deleted: int = 0
    events_held: int = 0
    keys_deleted: int = 0
    audit_rows_deleted: int = 0
    default_partition_rows: int = 0


class StoreMaintenance:
    """Maintenance of one store, through its ``SqlRunner`` (``store.desk().runner``)."""

    def __init__(self, runner: SqlRunner, settings: MaintenanceSettings,
                 progress: Callable[[str], None] | None = None) -> None:
        self.runner, self.settings = runner, settings
        self._progress = progress or (lambda _line: None)
        self.postgres = runner.dialect.name == "postgres"

    # -- plumbing --------------------------------------------------------------------------------
    def _chunks(self, step: Callable[[SqlTx], int]) -> int:
        """Run ``step`` (deleting at most ``chunk_rows`` rows) in its own transaction until it
        deletes fewer than a full chunk; the write lock is free between chunks."""
        total = 0
        busy = 0
        while True:
            try:
                with self.runner.tx() as tx:
                    n = step(tx)
            except TransientStoreError:
                busy += 1  # the write lock stayed taken past the busy timeout: back off, retry
                if busy > _BUSY_RETRIES:
                    raise
                time.sleep(min(5.0, 0.2 * 2 ** busy))
                continue
            busy = 0
            total += n
            if n < self.settings.chunk_rows:
                return total
            if self.settings.chunk_pause_ms:
                time.sleep(self.settings.chunk_pause_ms / 1000.0)

    def _deleted(self, now: float, kind: str, object_id: str, reason: str) -> None:
        with self.runner.tx() as tx:
            RetentionTx(tx, self.runner).log_deletion(now, kind, object_id, reason)
        log_event(log, "retention_deleted", kind=kind, object_id=object_id, reason=reason)

    # -- the run ---------------------------------------------------------------------------------
    def run(self, now: float | None = None) -> MaintenanceReport:
        now = time.time() if now is None else now
        s = self.settings
        report = MaintenanceReport()
        cutoff = now - s.event_retention_days * DAY
        hold_cut = now - s.evidence_hold_days * DAY
        if self.postgres:
            self.ensure_partitions(now, report)
            self._postgres_events(now, cutoff, hold_cut, report)
        else:
            self._sqlite_events(now, cutoff, hold_cut, report)
        self._audit(now, report)
        log_event(log, "store_maintained", partitions_created=report.partitions_created,
                  partitions_left=report.partitions_left,
                  months_dropped=report.months_dropped, months_left=report.months_left,
                  events_deleted=report.events_deleted, events_held=report.events_held,
                  keys_deleted=report.keys_deleted, audit_rows_deleted=report.audit_rows_deleted,
                  default_partition_rows=report.default_partition_rows)
        return report

    def ensure_partitions(self, now: float, report: MaintenanceReport | None = None) -> list[str]:
        """PostgreSQL: create the current and the next ``partitions_ahead`` month partitions."""
        created: list[str] = []
        timeout_ms = int(self.settings.lock_timeout_s * 1000)
        for start in partitions.months_to_ensure(now, self.settings.partitions_ahead):
            try:
                with self.runner.tx() as tx:
                    made = partitions.ensure_month(tx, start, timeout_ms)
            except StoreError as exc:  # its lock was not free in time: the next run creates it
                if report is not None:
                    report.partitions_left.append(f"{start:%Y-%m}")
                log_event(log, "partition_left", logging.WARNING, month=f"{start:%Y-%m}",
                          error=f"{type(exc).__name__}: {exc}"[:300])
                self._progress(f"partition {start:%Y-%m} left for the next run: {type(exc).__name__}")
                continue
            if made:
                created.append(f"{start:%Y-%m}")
                self._progress(f"partition {start:%Y-%m} created")
        if report is not None:
            report.partitions_created = created
        return created

    def _postgres_events(self, now: float, cutoff: float, hold_cut: float, report: MaintenanceReport) -> None:
        s = self.settings
        with self.runner.tx() as tx:
            expired = partitions.expired_months(tx, cutoff)
        for month in expired:
            try:
                with self.runner.tx() as tx:
                    dropped = partitions.drop_month(tx, month, hold_cut, int(s.lock_timeout_s * 1000))
            except StoreError as exc:  # a lock timeout (or any refusal) leaves the month for next run
                report.months_left.append(month.label)
                log_event(log, "retention_month_left", logging.WARNING, month=month.label,
                          error=f"{type(exc).__name__}: {exc}"[:300])
                self._progress(f"month {month.label} left for the next run: {type(exc).__name__}")
                continue
            if dropped is None:
                continue
            report.months_dropped.append(month.label)
            report.events_deleted += dropped.deleted
            self._deleted(now, "event_month", month.label,
                          f"older than {s.event_retention_days:g} days: {dropped.deleted} events "
                          f"deleted, {dropped.held} kept for incidents")
            self._progress(f"month {month.label} dropped: {dropped.deleted} events, {dropped.held} held")
        purged = self._chunks(lambda tx: partitions.purge_default(tx, cutoff, hold_cut, s.chunk_rows))
        if purged:
            report.events_deleted += purged
            self._deleted(now, "events", f"{purged} rows", f"older than {s.event_retention_days:g} days "
                          "(default partition)")
        with self.runner.tx() as tx:
            floor = partitions.key_floor(tx, cutoff)
        report.keys_deleted = self._chunks(lambda tx: partitions.purge_keys(tx, floor, s.chunk_rows))
        with self.runner.tx() as tx:
            report.default_partition_rows = partitions.default_rows(tx)
            report.events_held = partitions.held_rows(tx, "events_default", cutoff, hold_cut)
        if report.keys_deleted:
            self._progress(f"event keys deleted: {report.keys_deleted}")

    def _sqlite_events(self, now: float, cutoff: float, hold_cut: float, report: MaintenanceReport) -> None:
        s = self.settings
        with self.runner.tx() as tx:
            tx.run("CREATE INDEX IF NOT EXISTS idx_events_received_at ON events (received_at)")
        deleted = self._chunks(lambda tx: tx.run(
            f"DELETE FROM events WHERE rowid IN (SELECT e.rowid FROM events e WHERE e.received_at < ? "
            f"AND NOT {HELD} ORDER BY e.received_at LIMIT ?)", (cutoff, hold_cut, s.chunk_rows)))
        with self.runner.tx() as tx:
            report.events_held = partitions.held_rows(tx, "events", cutoff, hold_cut)
        report.events_deleted = deleted
        if deleted:
            since = dt.datetime.fromtimestamp(cutoff, dt.UTC).strftime("%Y-%m-%d")
            self._deleted(now, "events", f"{deleted} rows", f"received before {since} (older than "
                          f"{s.event_retention_days:g} days); {report.events_held} kept for incidents")
            self._progress(f"events deleted: {deleted}, {report.events_held} held")

    def _audit(self, now: float, report: MaintenanceReport) -> None:
        s = self.settings
        before = now - s.audit_log_retention_days * DAY
        n = self._chunks(lambda tx: tx.run(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < ? ORDER BY id LIMIT ?)",
            (before, s.chunk_rows)))
        report.audit_rows_deleted = n
        if n:
            self._deleted(now, "audit_log", f"{n} rows", f"older than {s.audit_log_retention_days:g} days")
            self._progress(f"audit log rows deleted: {n}")
