"""``Outbox``: the node's durable event store, assembled from its parts around one database.

Parts (each a module of this package): ``db`` (the shared database object), ``schema``,
``identity`` (whose database), ``records`` / ``receipts`` (what goes in, what comes back),
``writer`` (group commit) with ``intake`` (its record-time payload checks), ``claims`` (the
sync lane), ``eviction`` (disk pressure) and ``reserve`` (room for P1/P2 on a full disk).
Policy: docs/storage.md.

Threading: every public method is thread-safe (one ``RLock`` on the one connection, held by the
writer only while it commits a batch). Listeners run on the thread that committed.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from edge.clock import Clock
from edge.config import StorageConfig
from edge.errors import StorageError
from edge.logs import RateLimitedLog, log_event
from edge.outbox.claims import Claims, Tally
from edge.outbox.db import OutboxDB, StorageUnavailable
from edge.outbox.eviction import Evictor
from edge.outbox.identity import Finding
from edge.outbox.receipts import Hub, Pending, Receipt, resolve
from edge.outbox.records import EventDraft, StoredEvent
from edge.outbox.reserve import Reserve
from edge.outbox.writer import Writer
from edge.storage import StorageQuota, free_bytes, is_full_error

__all__ = ["Outbox"]

log = logging.getLogger("edge.outbox")

_Events = list[StoredEvent]  # Outbox.list shadows the builtin in the class body
_RESERVE_MARGIN = 1 << 20
_DEGRADED_FOR_S = 60.0


class Outbox:
    """The node's durable event store (see docs/storage.md for the policy)."""

    def __init__(self, path: Path, node_id: str, *, boot_id: str | None = None,
                 clock: Clock | None = None, quota: StorageQuota | None = None) -> None:
        self.path = Path(path)
        self.node_id = node_id
        self.boot_id = boot_id or secrets.token_hex(8)
        self.clock = clock or Clock()
        self._quota = quota or StorageQuota.from_config(StorageConfig.model_validate({}))
        self.db = OutboxDB(self.path)
        self.tally = Tally()
        self.rlog = RateLimitedLog(log, interval_s=10.0)
        self._hub = Hub()
        self._listeners: list[Callable[[StoredEvent], None]] = []
        self.reserve = Reserve(self.path.with_name(self.path.name + ".reserve"),
                               self._quota.reserve_bytes)
        self.findings: list[Finding] = []
        self.quarantined: Path | None = None
        self.unavailable_since: float | None = None
        self.open_error: str | None = None
        self._writer = Writer(self.db, node_id=node_id, boot_id=self.boot_id, clock=self.clock,
                              hub=self._hub, tally=self.tally, reserve=self.reserve,
                              rlog=self.rlog, notify=self._notify)
        self.claims = Claims(self.db, self.clock, self.tally)
        self.evictor = Evictor(self.db, self.tally, self._quota, record=self._record_in,
                               defer=self._defer, notify=self._notify, warn=self.rlog.log)
        self._writer.evict_for_room = self._evict_for_room
        self._writer.make_wal_reusable = self.evictor.checkpoint
        self._writer.try_open = self._try_open
        self._writer.periodic = self._periodic
        self._closed = False
        self._try_open()
        self._writer.start()

    # ---------------------------------------------------------------- opening

    def _try_open(self) -> bool:
        """Open the database (writer thread, or here at start). Never raises."""
        if self.db.is_open:
            return True
        try:
            try:
                findings = self.db.open(self.node_id)
            except (sqlite3.Error, OSError) as exc:
                if not is_full_error(exc) or not self.reserve.release():
                    raise
                findings = self.db.open(self.node_id)  # the reserve made room
                self._writer.tight = True
                self._writer.owe(EventDraft("STORAGE_DEGRADED", 3, {
                    "reason": "disk_full_at_open",
                    "detail": "the write reserve was released to open the database"}))
        except (sqlite3.Error, OSError) as exc:
            self.open_error = f"{type(exc).__name__}: {exc}"
            if self.unavailable_since is None:
                self.unavailable_since = time.time()
            self.rlog.log("outbox_unavailable", logging.ERROR, node_id=self.node_id,
                          path=str(self.path), error=self.open_error)
            return False
        self._after_open(findings)
        return True

    def _after_open(self, findings: list[Finding]) -> None:
        self._writer.load_counters()
        n = self.claims.reset_in_flight()
        self.tally.load(self.db)
        self.findings.extend(findings)
        for f in findings:
            if f.moved_to and f.moved_to != "foreign_events" and self.quarantined is None:
                self.quarantined = Path(f.moved_to)
        log_event(log, "outbox_opened", node_id=self.node_id, boot_id=self.boot_id,
                  path=str(self.path), requeued=n, db_uuid=self.db.db_uuid)
        drafts = [EventDraft("STORAGE_QUARANTINED", 3, f.payload()) for f in findings]
        if self.unavailable_since is not None:
            drafts.append(EventDraft("STORAGE_DEGRADED", 3, {
                "reason": "database_unavailable", "error": self.open_error or "",
                "since": self.unavailable_since,
                "duration_s": round(time.time() - self.unavailable_since, 3)}))
            self.unavailable_since = None
        for d in drafts:
            self._writer.owe(d)
        if drafts:
            try:
                self.record_now([])
            except StorageError as exc:  # stays owed: written with the next commit
                self.rlog.log("outbox_record_failed", logging.WARNING, error=str(exc))
        self._check_pressure()

    def _check_pressure(self) -> None:
        """Rebuild the reserve when there is room; the writer checks each commit's growth of
        the database file (``room.py``) while the reserve is missing or the filesystem has less
        than ``min_free_bytes`` + the reserve + 1 MiB free."""
        placed = self.reserve.ensure(_RESERVE_MARGIN)
        try:
            free = free_bytes(self.path.parent)
        except OSError:
            free = 0
        self._writer.tight = not placed or free < (
            self._quota.min_free_bytes + self.reserve.size + _RESERVE_MARGIN)

    def _periodic(self) -> None:
        """Writer thread, about once a second: reserve back in place and disk pressure, quota,
        owed records."""
        self._check_pressure()
        self.enforce_quota()
        if self._writer.owed:
            with contextlib.suppress(StorageError):
                self.record_now([])

    # ---------------------------------------------------------------- writing

    @property
    def quota(self) -> StorageQuota:
        return self._quota

    @quota.setter
    def quota(self, value: StorageQuota) -> None:
        self._quota = value
        self.evictor.quota = value

    def submit(self, draft: EventDraft) -> Receipt[StoredEvent]:
        """Queue ``draft`` for the writer; the receipt resolves once it is durably committed
        (or fails with ``StorageError``/``StorageFullError``). While the database cannot be
        opened the receipt stays pending and the writer keeps retrying.

        Never blocks and never touches the disk (safe on the alarm path). Clock readings are
        taken here, at submit time."""
        r = self._writer.item(draft)
        if self._closed:
            resolve([r], None, StorageError("outbox is closed"))
            return r
        self._writer.submit(r)
        return r

    def resubmit(self, failed: Receipt[StoredEvent]) -> Receipt[StoredEvent]:
        """Queue the draft of a failed receipt again, with its original clock readings (the
        event keeps the time it was raised, not the time the disk had room again)."""
        r: Receipt[StoredEvent] = Receipt(failed._draft, failed._wall, failed._quality,
                                          failed._mono, self._hub)
        if self._closed:
            resolve([r], None, StorageError("outbox is closed"))
            return r
        self._writer.submit(r)
        return r

    def add_listener(self, fn: Callable[[StoredEvent], None]) -> None:
        """Call ``fn(event)`` after each committed event (on the committing thread)."""
        self._listeners.append(fn)

    def record(self, draft: EventDraft, timeout: float | None = 10) -> StoredEvent:
        """Submit and wait until committed."""
        return self.submit(draft).result(timeout)

    def record_many(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
        """Record ``drafts`` atomically (one transaction), in order; blocking."""
        return self.record_now(drafts)

    def record_now(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
        """Commit ``drafts`` on the calling thread in one transaction (system events)."""
        items = [self._writer.item(d) for d in drafts]
        if not items and not self._writer.owed:
            return []
        stored = self._writer.commit(items)
        self._notify(stored)
        return stored

    def _record_in(self, conn: sqlite3.Connection, payload: dict[str, Any]) -> StoredEvent:
        return self._writer.record_in(conn, EventDraft("EVICTION", 3, payload))

    def _defer(self, payload: dict[str, Any]) -> None:
        self._writer.owe(EventDraft("EVICTION", 3, payload))

    def _evict_for_room(self, need: int) -> int:
        return self.evictor.evict_step(need, "disk_full", [], full=True)

    def _notify(self, stored: Sequence[StoredEvent]) -> None:
        listeners = self._listeners
        if not listeners:
            return
        for ev in stored:
            for fn in listeners:
                try:
                    fn(ev)
                except Exception:
                    log.exception("outbox_listener_failed")

    # ---------------------------------------------------------------- sync side

    def claim(self, limit: int, max_priority: int | None = None) -> _Events:
        """Move up to ``limit`` ready events to in_flight (priority, then age)."""
        return self.claims.claim(limit, max_priority)

    def ack(self, event_ids: Iterable[str]) -> int:
        """Mark events acknowledged by central (idempotent; unknown ids ignored)."""
        return self.claims.ack(event_ids)

    def release(self, event_ids: Iterable[str] | None = None) -> int:
        """Put in_flight events (all when ``event_ids`` is None) back to ready."""
        return self.claims.release(event_ids)

    def requeue_expired(self, older_than_seconds: float) -> int:
        return self.claims.requeue_expired(older_than_seconds)

    def reject_local(self, reasons: dict[str, str]) -> list[str]:
        """Move in_flight events the uplink cannot encode (event id -> reason) to the terminal
        ``rejected_local`` status (kept, flagged with the reason); returns the ids moved."""
        return self.claims.reject_local(reasons)

    def counts(self) -> dict[str, Any]:
        """Counts by status and by type, and the age of the oldest ready event (no scan);
        ``truncated``: events whose payload was cut to the wire limit since this open,
        ``text_replaced``/``values_replaced``: events whose text (lone surrogates, NUL) or
        values (integers past int64, NaN/Infinity, what JSON cannot encode) central would
        refuse were replaced at record time (``sanitise.py``)."""
        out = self.claims.counts()
        checks = self._writer.checks
        out["truncated"] = checks.truncated
        out["text_replaced"] = checks.text_replaced
        out["values_replaced"] = checks.values_replaced
        return out

    def get(self, event_id: str) -> StoredEvent | None:
        return self.claims.get(event_id)

    def list(self, *, status: str | None = None, limit: int = 100) -> _Events:
        """Events, newest first, optionally of one status."""
        return self.claims.list(status=status, limit=limit)

    def oldest_unacked(self, priority_max: int, older_than_s: float) -> _Events:
        """Unacked events with priority <= ``priority_max`` older than ``older_than_s``
        (by wall time), most urgent and oldest first. O(unacked rows of those priorities)."""
        return self.claims.oldest_unacked(priority_max, older_than_s)

    def mark(self, event_id: str, key: str, value: Any) -> None:
        self.claims.mark(event_id, key, value)

    def flags(self, event_id: str) -> dict[str, Any]:
        return self.claims.flags(event_id)

    # ---------------------------------------------------------------- retention and quota

    def prune_acked(self, older_than_seconds: float) -> int:
        """Delete events acknowledged more than ``older_than_seconds`` ago (and their flags)."""
        return self.evictor.prune_acked(older_than_seconds, time.time())

    def snapshot_bytes(self) -> int:
        return self.evictor.snapshot_bytes() if self.db.is_open else 0

    def usage_bytes(self) -> int:
        """DB + WAL + snapshot files, as counted against ``quota.disk_quota_bytes``."""
        return self.evictor.usage_bytes()

    def enforce_quota(self) -> _Events:
        """Evict until within quota and free-space limits; return the EVICTION events."""
        return self.evictor.enforce_quota()

    def delete_snapshots(self, snaps: Sequence[tuple[str, str, int]],
                         event_payload: dict[str, Any]) -> StoredEvent | None:
        """Delete snapshot rows and files, recording one EVICTION event (snapshot store)."""
        return self.evictor.delete_snapshots(snaps, event_payload)

    # ---------------------------------------------------------------- health and lifecycle

    def storage_health(self) -> dict[str, Any]:
        """Storage state for status and heartbeats: ``ok``, ``degraded`` (running without the
        reserve, or disk full in the last minute) or ``unavailable`` (database not open; events
        are kept in memory and the writer keeps retrying)."""
        w = self._writer
        recent_full = (w.last_full_mono is not None
                       and time.monotonic() - w.last_full_mono < _DEGRADED_FOR_S)
        reserve_ok = self.reserve.present or self.reserve.size == 0
        state = ("unavailable" if not self.db.is_open
                 else "degraded" if recent_full or not reserve_ok else "ok")
        reasons = []
        if not self.db.is_open:
            reasons.append(f"database not open: {self.open_error}")
        if recent_full:
            reasons.append("disk full")
        if not reserve_ok:
            reasons.append("write reserve not in place")
        try:
            free: int | None = free_bytes(self.path.parent)
        except OSError:
            free = None
        return {"state": state, "reasons": reasons, "db_open": self.db.is_open,
                "db_uuid": self.db.db_uuid, "reserve_present": self.reserve.present,
                "reserve_bytes": self.reserve.size, "reserve_releases": self.reserve.releases,
                "disk_full_errors": w.full_errors, "queued": w.queue.qsize(),
                "owed_records": len(w.owed), "free_bytes": free,
                "quarantined": [f.payload() for f in self.findings],
                "quota_short": self.evictor.short.since is not None,
                "quota_short_passes": self.evictor.short.passes,
                "log_lines_suppressed": self.rlog.suppressed_total}

    def writer_alive(self) -> bool:
        """True while the writer thread runs (systemd watchdog health check)."""
        return self._writer.alive()

    def close(self) -> None:
        """Commit everything already submitted, stop the writer, close the database."""
        if self._closed:
            return
        self._closed = True
        leftovers: list[Pending] = self._writer.stop()
        if leftovers:
            if self.db.is_open:
                self._writer.commit_batch(leftovers)
            else:
                resolve(leftovers, None, StorageUnavailable(
                    f"outbox closed while the database could not be opened: {self.open_error}"))
        self.db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
