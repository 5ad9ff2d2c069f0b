"""Group commit: one writer thread turns queued receipts into committed rows.

``submit()`` only puts a ``Receipt`` (the draft plus its submit-time clock readings) on an
in-memory queue; the writer drains up to ``BATCH_MAX`` of them into one transaction
(WAL, ``synchronous=FULL``) and resolves them after ``COMMIT``. Throughput under load comes from
batching, not from weaker syncing.

The writer never dies and never drops a receipt silently:

* database not open (disk full at start, I/O error): receipts stay queued (pending, not failed)
  while the writer retries opening with backoff (0.5 s doubling to 30 s);
* disk full: first checkpoint, so the WAL file's existing blocks can be written again; from
  then on (and whenever the periodic check finds the disk under pressure: ``tight``) every
  transaction's growth of the database file is checked before ``COMMIT`` (``room.py``), and a
  transaction the disk cannot take whole is rolled back and room made for it: evict
  (``eviction.py``, the freed pages stay in the file for the retried insert) while something
  is evictable; when nothing is, or eviction itself cannot commit, and the batch holds a P1/P2
  event, release the reserve (``reserve.py``), checkpoint, and go on; otherwise fail the batch
  with ``StorageFullError`` (the alarm engine keeps and retries it), in slices of 32 so that
  whatever fits is stored;
* other errors: retry once, then fail the batch with ``StorageError``.

Storage records the writer owes (``STORAGE_DEGRADED``, an EVICTION record that did not fit)
are kept in memory and committed first in the next transaction that has room.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from edge.clock import Clock
from edge.errors import StorageError, StorageFullError
from edge.logs import RateLimitedLog
from edge.outbox.bounds import PAYLOAD_BUDGET
from edge.outbox.claims import Tally
from edge.outbox.db import OutboxDB
from edge.outbox.intake import PayloadChecks
from edge.outbox.receipts import Hub, Pending, Receipt, resolve
from edge.outbox.records import (
    EventDraft,
    StoredEvent,
    insert_rows,
    new_event_ids,
    stored_from_row,
)
from edge.outbox.reserve import Reserve
from edge.outbox.room import NoRoom, check, freelist_pages
from edge.outbox.sanitise import STRICT_DUMPS, suspect
from edge.storage import is_full_error

__all__ = ["BATCH_MAX", "Writer"]

log = logging.getLogger("edge.outbox")

#: Most drafts committed in one transaction by the writer thread.
BATCH_MAX = 1000
_SLICE = 32  # batch slice when the disk cannot take a whole batch
_STOP = object()
_OPEN_BACKOFF = (0.5, 30.0)


class Writer:
    """Owns the insert counters (rowid, per-boot seq) and the writer thread."""

    def __init__(self, db: OutboxDB, *, node_id: str, boot_id: str, clock: Clock, hub: Hub,
                 tally: Tally, reserve: Reserve, rlog: RateLimitedLog,
                 notify: Callable[[Sequence[StoredEvent]], None]) -> None:
        self.db = db
        self.node_id = node_id
        self.boot_id = boot_id
        self.clock = clock
        self.hub = hub
        self.tally = tally
        self.reserve = reserve
        self.rlog = rlog
        self.notify = notify
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.next_id = 1
        self.seq = 0
        self.owed: list[Pending] = []  # storage records waiting for room
        self.full_errors = 0
        self.last_full_mono: float | None = None
        self.last_error: str | None = None
        #: Record-time payload checks and their counters (``intake.py``).
        self.checks = PayloadChecks(node_id, rlog)
        #: Disk full or nearly (set on a disk-full error or a reserve release, recomputed by the
        #: periodic check): each commit's growth of the database file is checked (``room.py``).
        self.tight = False
        self.closed = False
        self._stopping = threading.Event()
        # Hooks set by the Outbox (kept as plain callables: no import cycle with eviction).
        self.evict_for_room: Callable[[int], int] = lambda need: 0
        self.make_wal_reusable: Callable[[], bool] = lambda: False
        self.try_open: Callable[[], bool] = lambda: True
        self.periodic: Callable[[], None] = lambda: None
        self.thread = threading.Thread(target=self._run, name="outbox-writer", daemon=True)

    # ---------------------------------------------------------------- items

    def item(self, draft: EventDraft) -> Pending:
        clock = self.clock
        wall, quality = clock.now()
        return Receipt(draft, wall, quality, clock.mono_ns(), self.hub)

    def owe(self, draft: EventDraft) -> None:
        """Commit ``draft`` (a storage record) with the next transaction that has room."""
        self.owed.append(self.item(draft))

    def load_counters(self) -> None:
        self.next_id = int(self.db.query("SELECT COALESCE(MAX(id), 0) + 1 FROM events")[0][0])

    def saved(self) -> tuple[int, int, int, int, int]:
        """The counters a transaction advances (rowid, seq, the record-time tallies)."""
        c = self.checks
        return (self.next_id, self.seq, c.truncated, c.text_replaced, c.values_replaced)

    def restore(self, saved: tuple[int, int, int, int, int]) -> None:
        """Put the counters back after a rolled-back transaction."""
        c = self.checks
        (self.next_id, self.seq, c.truncated, c.text_replaced, c.values_replaced) = saved

    def insert(self, conn: sqlite3.Connection, items: Sequence[Pending]) -> list[StoredEvent]:
        """Insert inside the caller's transaction (``db.lock`` held); the caller restores the
        counters (``saved()``/``restore()``) when the transaction rolls back."""
        # Hot path: raw multi-row INSERT instead of sqlite-utils' insert(), which costs about
        # 2x (it introspects the table and builds SQL per call); the schema is sqlite-utils'.
        node, boot = self.node_id, self.boot_id
        # The next rowid is read inside the transaction (BEGIN IMMEDIATE: no other writer in
        # between), not only counted here: another process may have inserted since this one
        # last did (``kentongan-edge selftest`` recording its result while the agent starts). A
        # counter alone then collides on ``events.id`` and, restored to the same value after
        # every rollback, would fail every later event, alarms included. One rowid probe per
        # transaction; ``max`` keeps the ids this process hands out increasing.
        top = conn.execute("SELECT MAX(id) FROM events").fetchone()[0]
        rid, seq = max(self.next_id, (top or 0) + 1), self.seq
        rows = []
        stored = []
        dumps = STRICT_DUMPS  # json.dumps's text; raises on NaN/Infinity
        check = suspect
        make = stored_from_row
        checks = self.checks
        ids = new_event_ids(len(items))
        for r, eid in zip(items, ids, strict=True):
            draft = r._draft
            payload = draft.payload
            try:
                text: str | None = dumps(payload)
            except (ValueError, TypeError, RecursionError):  # NaN, not JSON, a cycle, too deep
                text = None
            if text is None or check(text):  # rare (sanitise.py); then bounded too
                payload, text = checks.acceptable(draft, eid, payload, text)
            elif len(text) > PAYLOAD_BUDGET:  # rare: bounded work, O(payload)
                payload, text = checks.bound(draft, eid, payload, text)
            row = (rid, eid, node, boot, seq, r._mono, r._wall, r._quality, draft.type,
                   draft.priority, draft.incident_id, text)
            rows.append(row)
            stored.append(make(row, payload))
            rid += 1
            seq += 1
        insert_rows(conn, rows)
        self.next_id, self.seq = rid, seq
        return stored

    def record_in(self, conn: sqlite3.Connection, draft: EventDraft) -> StoredEvent:
        """Insert one system record inside the caller's transaction."""
        ev = self.insert(conn, [self.item(draft)])[0]
        self.tally.add("ready", [ev.type])
        return ev

    # ---------------------------------------------------------------- committing

    def commit(self, items: Sequence[Pending]) -> list[StoredEvent]:
        """Commit ``items`` (after any owed storage records) with the disk-full policy of the
        module doc. Raises ``StorageFullError``/``StorageError``/``StorageUnavailable``."""
        retried_other = False
        checkpointed = False
        blind = 0  # bytes evicted for errors no room check explains (bounded, see _on_full)
        while True:
            saved = self.saved()
            tight = self.tight
            checked = False  # the room check passed: only COMMIT can have failed
            try:
                with self.db.lock:
                    owed = self.owed
                    with self.db.tx() as conn:
                        free_before = freelist_pages(conn) if tight else 0
                        stored = self.insert(conn, [*owed, *items])
                        if tight:
                            check(conn, self.db.path, free_before)
                            checked = True
                    self.owed = []
                self.tally.add("ready", (e.type for e in stored))
                if owed:
                    self.notify(stored[:len(owed)])
                return stored[len(owed):]
            except NoRoom as exc:
                self.restore(saved)
                self.last_error = str(exc)
                if not checkpointed:  # pages only the WAL has may fit the file once copied
                    checkpointed = True
                    self._disk_full()
                    if self.make_wal_reusable():
                        continue
                self._make_room(items, exc)
            except (sqlite3.Error, OSError) as exc:
                self.restore(saved)
                self.last_error = f"{type(exc).__name__}: {exc}"
                if is_full_error(exc):
                    self.tight = True
                    if not checkpointed:
                        checkpointed = True
                        self._disk_full()
                        if self.make_wal_reusable() or not tight:
                            continue  # retry, now with the room check
                    blind += self._on_full(items, exc, checked=checked, blind=blind)
                    continue
                if retried_other:
                    raise StorageError(self.last_error) from exc
                retried_other = True
                time.sleep(0.05)

    def _disk_full(self) -> None:
        self.full_errors += 1
        self.last_full_mono = time.monotonic()
        self.tight = True

    def _make_room(self, items: Sequence[Pending], exc: NoRoom) -> None:
        """The database file cannot grow by what the transaction needs: evict (the freed pages
        stay in the file and the retried insert reuses them) while something is evictable,
        else release the reserve for P1/P2, else raise ``StorageFullError``."""
        self.rlog.log("outbox_disk_full", logging.WARNING, node_id=self.node_id,
                      pending=len(items), grow_pages=exc.grow_pages, short_bytes=exc.short)
        freed, why = self._evict(exc.short, exc, str(exc))
        if freed:
            return
        if not self._release_reserve(items):
            raise StorageFullError(why) from exc

    def _on_full(self, items: Sequence[Pending], exc: BaseException, *, checked: bool,
                 blind: int) -> int:
        """SQLite said the disk is full although the room check passed (``checked``: the WAL
        could not take the frames, eviction cannot help) or before it could run (the insert
        itself failed: evict, at most about what the items need). Release the reserve for
        P1/P2 or raise ``StorageFullError``. Returns the bytes evicted."""
        self.rlog.log("outbox_disk_full", logging.WARNING, node_id=self.node_id,
                      pending=len(items))
        need = sum(len(str(i._draft.payload)) + 160 for i in items) * 2 + 65536
        why = "disk full: no room for the write-ahead log of the transaction"
        if not checked and blind < need:
            freed, why = self._evict(need - blind, exc, "disk full")
            if freed:
                return freed
        if not self._release_reserve(items):
            raise StorageFullError(why) from exc
        return 0

    def _evict(self, need: int, cause: BaseException, what: str) -> tuple[int, str]:
        """Evict about ``need`` bytes for the pending transaction: (bytes freed, why nothing
        was when 0). An eviction that fails other than with a full disk raises
        ``StorageFullError``."""
        try:
            freed = self.evict_for_room(need)
        except (sqlite3.Error, OSError) as exc:
            if not is_full_error(exc):
                raise StorageFullError(f"disk full, eviction failed: {exc}") from cause
            return 0, f"{what}; eviction could not be committed: {exc}"
        return freed, f"{what}; nothing left to evict"

    def _release_reserve(self, items: Sequence[Pending]) -> bool:
        """Release the write reserve when ``items`` hold a P1/P2 event (P3/P4 never consume
        it); True when that gave room back."""
        if not (any(i._draft.priority <= 2 for i in items) and self.reserve.present):
            return False
        freed = self.reserve.release()
        if not freed:
            return False
        self.tight = True
        self.make_wal_reusable()  # the checkpoint may now grow the database file
        self.owe(EventDraft("STORAGE_DEGRADED", 3, {
            "reason": "disk_full", "reserve_released_bytes": freed,
            "detail": "the write reserve was released so that P1/P2 events and "
                      "eviction records still fit"}))
        return True

    def commit_batch(self, batch: Sequence[Pending]) -> None:
        """Commit one batch from the queue and resolve its receipts; never raises. A batch the
        full disk cannot take whole is committed in small slices, in order, so that what fits
        is stored (most urgent first is the claim's job, not the writer's)."""
        try:
            stored = self.commit(batch)
        except StorageFullError as exc:
            if len(batch) <= _SLICE:
                self._fail(batch, exc)
                return
            for i in range(0, len(batch), _SLICE):
                self.commit_batch(batch[i:i + _SLICE])
            return
        except Exception as exc:
            self._fail(batch, exc)
            return
        resolve(batch, stored)
        self.notify(stored)

    def _fail(self, batch: Sequence[Pending], exc: BaseException) -> None:
        err = exc if isinstance(exc, StorageError) else StorageError(str(exc))
        self.rlog.log("outbox_write_failed", logging.ERROR, node_id=self.node_id,
                      count=len(batch), error=str(err),
                      types=sorted({b._draft.type for b in batch}))
        resolve(batch, None, err)

    # ---------------------------------------------------------------- thread

    def submit(self, r: Pending) -> None:
        self.queue.put(r)

    def start(self) -> None:
        self.thread.start()

    def alive(self) -> bool:
        return not self.closed and self.thread.is_alive()

    def stop(self) -> list[Pending]:
        """Stop the thread; return what was still queued (the caller commits or fails it)."""
        self.closed = True
        self._stopping.set()
        self.queue.put(_STOP)
        self.thread.join()
        left: list[Pending] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return left
            if item is not _STOP:
                left.append(item)

    def _wait_open(self) -> bool:
        """Retry opening with backoff until it works; False when stopping."""
        delay = _OPEN_BACKOFF[0]
        while not self.closed:
            if self.try_open():
                return True
            if self._stopping.wait(delay):
                return False
            delay = min(_OPEN_BACKOFF[1], delay * 2)
        return False

    def _run(self) -> None:
        q = self.queue
        stop = False
        last_periodic = 0.0
        while not stop:
            try:
                if not self.db.is_open and not self._wait_open():
                    break
                try:
                    item = q.get(timeout=1.0)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                if item is not None:
                    batch = [item]
                    while len(batch) < BATCH_MAX:
                        try:
                            nxt = q.get_nowait()
                        except queue.Empty:
                            break
                        if nxt is _STOP:
                            stop = True
                            break
                        batch.append(nxt)
                    self.commit_batch(batch)
                now = time.monotonic()
                if now - last_periodic >= 1.0:
                    last_periodic = now
                    self.periodic()
            except Exception:  # the writer must survive anything
                log.exception("outbox_writer_error")
                time.sleep(0.1)
