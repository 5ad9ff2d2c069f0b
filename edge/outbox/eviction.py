"""Disk pressure: quota checks, eviction in a fixed order, pruning, giving pages back.

Order (never reordered): snapshots (acked first, then lowest priority, oldest) -> acked events
(oldest acknowledgement first) -> unacked P4+ -> unacked P3 (storage audit records excepted) ->
never unacked P1/P2. Every step deletes and records its ``EVICTION`` event (P3) in ONE
transaction, with exact figures: ``count``, ``unacked`` / ``acked`` removed, and the removed
events as ``ranges`` of consecutive rowids (each: first and last event id, count), so central
knows exactly which events it will never see. When even that record does not fit (disk full)
the deletion is committed alone and the record is kept for the next commit that has room.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

from edge.outbox.claims import Tally
from edge.outbox.db import OutboxDB
from edge.outbox.records import StoredEvent, chunks
from edge.outbox.room import freelist_pages
from edge.outbox.shortfall import QuotaShort
from edge.storage import StorageQuota, database_bytes, free_bytes, is_full_error

__all__ = ["AUDIT_TYPES", "Evictor"]

log = logging.getLogger("edge.outbox")

ROW_OVERHEAD = 160  # rough bytes per event row besides its payload (eviction estimates)
_EVICT_MIN_ROWS = 64
_EVICT_MAX_ROWS = 5000
#: On a full disk every deleted page is first written to the WAL, and the WAL can only grow
#: into what the reserve gave back: evict in small transactions, checkpointing in between so
#: the WAL is reused, and leave freed pages in the database file for the pending inserts (no
#: vacuum: pages given back to the filesystem would have to be grown again by the checkpoint of
#: those inserts, and the WAL may take the blocks first; see ``room.py``).
_FULL_DISK_MAX_ROWS = 256
#: Quota eviction on a full disk halves its step while even that cannot commit, down to this.
_FULL_DISK_MIN_ROWS = 16
#: Pages one ``incremental_vacuum`` step moves on a full disk (``give_back``).
_VACUUM_STEP = 64
_MAX_RANGES = 50
#: Unacked records of these types are never evicted: they are the audit trail of storage.
AUDIT_TYPES = ("EVICTION", "STORAGE_QUARANTINED", "STORAGE_DEGRADED")
_AUDIT_SQL = ",".join(f"'{t}'" for t in AUDIT_TYPES)

#: (label, WHERE, ORDER BY) of each event class, in eviction order. Each uses an index:
#: events_acked for acked rows, events_unacked for the others (see schema.py).
EVENT_CLASSES: tuple[tuple[str, str, str, str], ...] = (
    ("acked_events", "events_acked", "status = 'acked'", "acked_at"),
    ("events_p4", "events_unacked", "status != 'acked' AND priority >= 4", "priority, id"),
    ("events_p3", "events_unacked",
     f"status != 'acked' AND priority = 3 AND type NOT IN ({_AUDIT_SQL})", "id"),
)

RecordFn = Callable[[sqlite3.Connection, dict[str, Any]], StoredEvent]


def describe(rows: Sequence[tuple[int, str, str, str, int]]) -> dict[str, Any]:
    """Exact figures of removed event rows ``(id, event_id, status, type, payload bytes)``."""
    ordered = sorted(rows)
    ranges: list[dict[str, Any]] = []
    for rid, eid, _st, _t, _n in ordered:
        if ranges and ranges[-1]["_last"] == rid - 1:
            r = ranges[-1]
            r["last"], r["_last"], r["count"] = eid, rid, r["count"] + 1
        else:
            ranges.append({"first": eid, "last": eid, "count": 1, "_last": rid})
    unacked = sum(1 for r in rows if r[2] != "acked")
    out: dict[str, Any] = {
        "count": len(rows), "unacked": unacked, "acked": len(rows) - unacked,
        "ranges": [{k: v for k, v in r.items() if k != "_last"} for r in ranges[:_MAX_RANGES]],
        "ranges_total": len(ranges),
    }
    if ordered:
        out["rowids"] = [ordered[0][0], ordered[-1][0]]
    return out


class Evictor:
    """Quota enforcement and eviction on the shared database object."""

    def __init__(self, db: OutboxDB, tally: Tally, quota: StorageQuota, *,
                 record: RecordFn, defer: Callable[[dict[str, Any]], None],
                 notify: Callable[[Sequence[StoredEvent]], None], warn: Any) -> None:
        self.db = db
        self.tally = tally
        self.quota = quota
        self._record = record
        self._defer = defer
        self._notify = notify
        self._warn = warn  # RateLimitedLog.log
        self.short = QuotaShort()
        #: How far below ``min_free`` the disk was when not even the smallest step could commit
        #: (None: not stuck); passes skip eviction until the disk has more room than that.
        self._stuck_short: int | None = None

    # ---------------------------------------------------------------- sizes

    def snapshot_bytes(self) -> int:
        return int(self.db.query("SELECT COALESCE(SUM(size), 0) FROM snapshots")[0][0])

    def usage_bytes(self) -> int:
        """DB + WAL + snapshot files, as counted against ``quota.disk_quota_bytes``."""
        return database_bytes(self.db.path) + self.snapshot_bytes()

    def need_bytes(self) -> int:
        return max(self.usage_bytes() - self.quota.disk_quota_bytes, self.short_free_bytes())

    def short_free_bytes(self) -> int:
        """How far the filesystem is below ``min_free_bytes`` (<= 0: not short)."""
        try:
            return self.quota.min_free_bytes - free_bytes(self.db.path.parent)
        except OSError:
            return 0

    # ---------------------------------------------------------------- policy

    def enforce_quota(self) -> list[StoredEvent]:
        """Evict until within quota and free-space limits; return the EVICTION events recorded.

        First ``reclaim`` (free pages and WAL blocks back to the filesystem: that alone may be
        enough). With the filesystem still below ``min_free_bytes`` (a full disk) each step is a
        transaction the WAL's blocks can take: at most ``_FULL_DISK_MAX_ROWS`` rows, halved down
        to ``_FULL_DISK_MIN_ROWS`` while SQLite says the disk is full, checkpointed in between;
        the freed pages are then given back to the filesystem in small vacuum steps
        (``give_back``). When not even the smallest step can commit, eviction is left for the
        next pass; the write reserve is never touched here (it is for P1/P2, and the writer's
        own eviction for them may use it). A pass that ends short is logged when the condition
        starts, counted, and reminded of at most every 10 minutes (``shortfall.QuotaShort``)."""
        recorded: list[StoredEvent] = []
        if not self.db.is_open:
            return recorded
        with self.db.lock:
            need = self.need_bytes()
        if need <= 0:
            self.short.ok()
            return recorded
        self.reclaim()  # pages already free and WAL blocks first: that evicts nothing
        short_free = self.short_free_bytes()
        full = short_free > 0
        if full and self._stuck_short is not None and short_free >= self._stuck_short:
            # not even the smallest step could commit and the disk has no more room since
            self.short.short(self.need_bytes(), evicted=0, full=True)
            return recorded
        self._stuck_short = None
        rows = _FULL_DISK_MAX_ROWS if full else _EVICT_MAX_ROWS
        for _ in range(1000):
            with self.db.lock:  # per step: the writer commits alarms in between
                # on a full disk freed pages stay in the file until give_back(): count them
                need = self.need_bytes() - (self._freelist_bytes() if full else 0)
                if need <= 0:
                    break
                try:
                    progress = self.evict_step(need, "quota", recorded, full=full,
                                               max_rows=rows)
                except sqlite3.Error as exc:
                    if not is_full_error(exc):
                        raise
                    if rows <= _FULL_DISK_MIN_ROWS:  # skipped until the disk has more room
                        self._stuck_short = self.short_free_bytes()
                        break
                    full = True
                    rows = min(rows // 2, _FULL_DISK_MAX_ROWS)
                    self.checkpoint()
                    continue
            if not progress:
                break
        if full:
            self.give_back()
        with self.db.lock:
            need = self.need_bytes()
        if need > 0:
            self.short.short(need, evicted=len(recorded), full=full)
        else:
            self.short.ok()
        return recorded

    def evict_step(self, need: int, reason: str, recorded: list[StoredEvent], *,
                   full: bool = False, max_rows: int | None = None) -> int:
        """Evict about ``need`` bytes from the first non-empty class; returns the bytes removed
        (an estimate for events; 0 when nothing may be evicted). ``full``: the disk is full
        (small transactions, freed pages kept in the file: see ``_FULL_DISK_MAX_ROWS``).
        Raises the SQLite error when even the deletion cannot be committed."""
        with self.db.lock:
            conn = self.db.conn
            snaps = conn.execute(
                "SELECT snapshot_id, path, size FROM snapshots"
                " ORDER BY (status='acked') DESC, priority DESC, taken_at, rowid LIMIT 1000"
            ).fetchall()
            if snaps:
                chosen: list[tuple[str, str, int]] = []
                total = 0
                for snap in snaps:
                    if total >= need and chosen:
                        break
                    chosen.append(snap)
                    total += snap[2]
                ev = self.delete_snapshots(chosen, {"what": "snapshots", "reason": reason},
                                           full=full)
                if ev is not None:
                    recorded.append(ev)
                return max(1, total)
            limit = max_rows or (_FULL_DISK_MAX_ROWS if full else _EVICT_MAX_ROWS)
            for label, index, where, order in EVENT_CLASSES:
                rows = conn.execute(
                    f"SELECT id, event_id, status, type, length(payload) FROM events"
                    f" INDEXED BY {index} WHERE {where} ORDER BY {order}"
                    f" LIMIT {limit}").fetchall()
                if not rows:
                    continue
                chosen_rows: list[tuple[int, str, str, str, int]] = []
                freed = 0
                for row in rows:
                    if freed >= need and len(chosen_rows) >= _EVICT_MIN_ROWS:
                        break
                    chosen_rows.append(row)
                    freed += row[4] + ROW_OVERHEAD
                ids = [r[1] for r in chosen_rows]
                payload = {"what": label, "reason": reason, "bytes": freed,
                           **describe(chosen_rows)}

                def delete(c: sqlite3.Connection, ids: list[str] = ids) -> None:
                    delete_events(c, ids)

                ev = self._delete_and_record(delete, payload, full=full)
                self.tally.remove((r[3], r[2]) for r in chosen_rows)
                if ev is not None:
                    recorded.append(ev)
                return freed
            return 0

    def prune_acked(self, older_than_s: float, now: float) -> int:
        """Delete events acknowledged more than ``older_than_s`` ago (and their flags)."""
        if not self.db.is_open:
            return 0
        cutoff = now - older_than_s
        with self.db.tx() as conn:
            rows = conn.execute("SELECT event_id, type FROM events INDEXED BY events_acked"
                                " WHERE status = 'acked' AND acked_at <= ?", (cutoff,)).fetchall()
            delete_events(conn, [r[0] for r in rows])
        self.tally.remove((t, "acked") for _e, t in rows)
        if rows:
            self.reclaim()
        return len(rows)

    def _delete_and_record(self, delete: Callable[[sqlite3.Connection], None],
                           payload: dict[str, Any], *, full: bool = False) -> StoredEvent | None:
        """Delete and record the EVICTION event in one transaction (see the module doc); logged
        once the deletion is committed."""
        with self.db.lock:
            try:
                with self.db.tx() as conn:
                    delete(conn)
                    ev: StoredEvent | None = self._record(conn, payload)
            except sqlite3.Error as exc:
                if not is_full_error(exc):
                    raise
                with self.db.tx() as conn:
                    delete(conn)
                self._defer(payload)
                ev = None
            if full:  # WAL reused, freed pages kept in the file (_FULL_DISK_MAX_ROWS)
                self.checkpoint()
            else:
                self.reclaim()
        self._warn("storage_eviction", logging.WARNING, key=f"evict:{payload['what']}",
                   **{k: v for k, v in payload.items() if k != "ranges"})
        if ev is not None:
            self._notify([ev])
        return ev

    def delete_snapshots(self, snaps: Sequence[tuple[str, str, int]],
                         event_payload: dict[str, Any], *, full: bool = False
                         ) -> StoredEvent | None:
        """Delete snapshot rows and files, recording one EVICTION event (used by the store).
        Returns the event (None when it is still waiting for room)."""
        ids = [s[0] for s in snaps]
        payload = {**event_payload, "count": len(snaps), "bytes": sum(s[2] for s in snaps),
                   "snapshot_ids": ids[:20]}

        def delete(conn: sqlite3.Connection) -> None:
            for chunk in chunks(ids):
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM snapshots WHERE snapshot_id IN ({marks})", chunk)

        ev = self._delete_and_record(delete, payload, full=full)
        for _sid, p, _size in snaps:
            with suppress(OSError):
                Path(p).unlink(missing_ok=True)
        return ev

    def checkpoint(self) -> bool:
        """Copy the WAL into the database (PASSIVE) so its blocks can be written again; True
        when that backfilled every frame and there were frames to backfill."""
        with self.db.lock:
            try:
                _busy, log_frames, done = self.db.conn.execute(
                    "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                self._warn("outbox_checkpoint_failed", logging.WARNING, error=str(exc))
                return False
        return bool(log_frames > 0 and done == log_frames)

    def _freelist_bytes(self) -> int:
        conn = self.db.conn
        return freelist_pages(conn) * int(conn.execute("PRAGMA page_size").fetchone()[0])

    def give_back(self) -> None:
        """Return freed pages to the filesystem on a full disk: ``incremental_vacuum`` in steps
        of ``_VACUUM_STEP`` pages, each checkpointed before the next, so the WAL never needs
        more blocks than one step's frames (one vacuum of everything would write every moved
        page to the WAL first). Best effort; then ``reclaim``."""
        with self.db.lock:
            conn = self.db.conn
            if freelist_pages(conn) == 0:
                return
            for _ in range(100_000):
                if freelist_pages(conn) == 0:
                    break
                try:
                    conn.executescript(f"PRAGMA incremental_vacuum({_VACUUM_STEP});")
                except sqlite3.Error as exc:
                    self._warn("outbox_reclaim_failed", logging.WARNING, step="vacuum_step",
                               error=str(exc))
                    return
                if not self.checkpoint():
                    break
            self.reclaim()

    def reclaim(self) -> None:
        """Give freed pages back to the filesystem and truncate the WAL; each step best effort.
        The first checkpoint empties the WAL so the vacuum's own WAL frames fit. Not on a full
        disk (``_delete_and_record``): there the freed pages stay for the pending inserts."""
        with self.db.lock:
            conn = self.db.conn
            for step in ("checkpoint", "vacuum", "checkpoint"):
                try:
                    if step == "vacuum":
                        # executescript steps the pragma to completion (execute(): one page)
                        conn.executescript("PRAGMA incremental_vacuum;")
                    else:
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                except sqlite3.Error as exc:
                    self._warn("outbox_reclaim_failed", logging.WARNING, step=step,
                               error=str(exc))


def delete_events(conn: sqlite3.Connection, event_ids: Sequence[str]) -> None:
    for chunk in chunks(event_ids):
        marks = ",".join("?" * len(chunk))
        conn.execute(f"DELETE FROM events WHERE event_id IN ({marks})", chunk)
        conn.execute(f"DELETE FROM event_flags WHERE event_id IN ({marks})", chunk)
