"""Durable event outbox: every event the node raises, kept in SQLite until central acknowledges it.

Durability policy (see docs/storage.md):

* WAL journal, ``synchronous=FULL``: each commit fsyncs the WAL, so an event whose ``submit()``
  receipt resolved survives ``kill -9`` *and* a power cut. No priority gets a weaker setting.
* Group commit: ``submit()`` only puts a ``Receipt`` (the draft plus its submit-time clock
  readings) on an in-memory queue and returns it; one writer thread drains the queue and commits
  up to ``BATCH_MAX`` drafts in one transaction, then resolves their receipts. Throughput under
  load comes from batching, not from weaker syncing. ``submit()`` never touches the disk.
* Write errors never kill the writer: on "database or disk is full" it evicts (snapshots, then
  acked events, then unacked P4, then P3; never unacked P1/P2) and retries while eviction makes
  progress; otherwise it retries once. Receipts it cannot honour fail with ``StorageFullError``
  / ``StorageError``: nothing is dropped silently.

Status lifecycle: ``ready`` -> (``claim``) ``in_flight`` -> (``ack``) ``acked``; ``release`` /
``requeue_expired`` / reopening put ``in_flight`` back to ``ready``.

Threading: one ``sqlite3`` connection guarded by one ``RLock``; every public method is
thread-safe. The writer thread holds the lock only while it commits a batch. Listeners run on the
thread that committed (the writer thread for submitted events).

Receipts (not ``concurrent.futures.Future``): a ``Future`` costs a ``Condition`` + lock per event
and wakes its waiter per event; a ``Receipt`` is a ``__slots__`` object with the same duck-typed
API (``result``/``exception``/``done``/``add_done_callback``/``cancelled``). Waiters block on one
``threading.Event`` per committed batch, created only when someone actually waits (see ``_Hub``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, Generic, TypeVar

from edge.clock import Clock
from edge.config import StorageConfig
from edge.errors import StorageError, StorageFullError
from edge.incidents import SystemEvent
from edge.logs import log_event
from edge.storage import StorageQuota, database_bytes, free_bytes, is_full_error, open_database
from edge.sync.wire import EventEnvelope

__all__ = ["BATCH_MAX", "EventDraft", "Outbox", "Receipt", "StorageQuota", "StoredEvent",
           "new_event_ids"]

log = logging.getLogger(__name__)

#: Most drafts committed in one transaction by the writer thread.
BATCH_MAX = 1000
_QUOTA_CHECK_INTERVAL_S = 1.0
_ROW_OVERHEAD = 160  # rough bytes per event row besides its payload (eviction estimates)
_EVICT_MIN_ROWS = 64
_EVICT_MAX_ROWS = 5000

_COLS = ("id, event_id, node_id, boot_id, seq, mono_ns, wall_time, time_quality, type, priority,"
         " incident_id, payload, status, attempts")
_INSERT = ("INSERT INTO events (id, event_id, node_id, boot_id, seq, mono_ns, wall_time,"
           " time_quality, type, priority, incident_id, payload)"
           " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")


_ROWS_PER_STATEMENT = 80  # 80 rows x 12 columns = 960 parameters per INSERT
_MULTI_INSERT = _INSERT.replace("VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                                "VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"]
                                                     * _ROWS_PER_STATEMENT))


def _insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert event rows, 80 per statement.

    Multi-row VALUES instead of one executemany step per row: sqlite3 releases the GIL around
    every step, and under load each step then waits to win the GIL back from the producer
    thread; 80 rows per step cuts those hand-offs 80-fold (see bench/outbox.py)."""
    n = len(rows) - len(rows) % _ROWS_PER_STATEMENT
    if n:
        flat = [tuple(chain.from_iterable(rows[i:i + _ROWS_PER_STATEMENT]))
                for i in range(0, n, _ROWS_PER_STATEMENT)]
        conn.executemany(_MULTI_INSERT, flat)
    if n < len(rows):
        conn.executemany(_INSERT, rows[n:])


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event to record: ``type`` is an incident type or a ``SystemEvent`` name."""

    type: str
    priority: int
    payload: dict[str, Any] = field(default_factory=dict)
    incident_id: str | None = None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as committed in the outbox."""

    rowid: int
    event_id: str
    node_id: str
    boot_id: str
    seq: int
    mono_ns: int
    wall_time: float
    time_quality: str
    type: str
    priority: int
    incident_id: str | None
    payload: dict[str, Any]
    status: str
    attempts: int

    def envelope(self, sig: str | None = None) -> EventEnvelope:
        """The wire form of this event (``sig`` optional)."""
        return EventEnvelope(
            event_id=self.event_id, node_id=self.node_id, boot_id=self.boot_id, seq=self.seq,
            mono_ns=self.mono_ns, wall_time=max(self.wall_time, 0.0),
            time_quality=self.time_quality,
            type=self.type, priority=self.priority, incident_id=self.incident_id,
            payload=self.payload, sig=sig,
        )


def _from_row(row: Sequence[Any]) -> StoredEvent:
    return StoredEvent(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8],
                       row[9], row[10], json.loads(row[11]), row[12], row[13])


def _make_stored_fast() -> Callable[[tuple[Any, ...], dict[str, Any]], StoredEvent]:
    """``StoredEvent`` from a freshly inserted row (columns 0-10) and its payload dict, status
    ``ready``, 0 attempts; equal to calling the constructor, at about half the cost (the frozen
    dataclass ``__init__`` goes through ``object.__setattr__`` per field; this sets the slots
    through their descriptors). Hot path of the writer thread."""
    names = ("rowid", "event_id", "node_id", "boot_id", "seq", "mono_ns", "wall_time",
             "time_quality", "type", "priority", "incident_id", "payload", "status", "attempts")
    (s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13) = (
        StoredEvent.__dict__[n].__set__ for n in names)
    new = object.__new__

    def stored(row: tuple[Any, ...], payload: dict[str, Any]) -> StoredEvent:
        ev = new(StoredEvent)
        s0(ev, row[0]); s1(ev, row[1]); s2(ev, row[2]); s3(ev, row[3])  # noqa: E702
        s4(ev, row[4]); s5(ev, row[5]); s6(ev, row[6]); s7(ev, row[7])  # noqa: E702
        s8(ev, row[8]); s9(ev, row[9]); s10(ev, row[10]); s11(ev, payload)  # noqa: E702
        s12(ev, "ready"); s13(ev, 0)  # noqa: E702
        return ev

    return stored


_stored_from_row = _make_stored_fast()

_T = TypeVar("_T")
_PENDING, _OK, _FAILED = 0, 1, 2


class _Hub:
    """Per-outbox completion signal shared by all its receipts.

    ``lock`` orders "writer marks a batch done" against "a waiter decides to sleep" and "a
    callback is registered", so neither a wake-up nor a callback can be lost. ``wake`` is the
    ``threading.Event`` the current waiters sleep on: created by the first waiter, swapped out and
    set by the writer after it resolved a batch. So at most one Event per committed batch, none
    when nobody waits, and no lock or Condition per receipt."""

    __slots__ = ("lock", "wake")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake: threading.Event | None = None


class Receipt(Generic[_T]):
    """Handle for one submitted event, resolved by the writer thread after ``COMMIT``.

    Duck-type compatible with ``concurrent.futures.Future`` for what the node uses:
    ``result(timeout)``, ``exception(timeout)``, ``done()``, ``add_done_callback(fn)`` (``fn(receipt)``
    runs on the writer thread after the commit, or at once if already resolved),
    ``cancelled()``/``cancel()`` (receipts cannot be cancelled: the event may already be on disk).
    Timeouts raise ``TimeoutError`` (== ``concurrent.futures.TimeoutError``). Also the writer's
    work item: it carries the draft and its submit-time clock readings."""

    __slots__ = ("_callbacks", "_draft", "_hub", "_mono", "_quality", "_state", "_value", "_wall")

    def __init__(self, draft: EventDraft, wall: float, quality: str, mono: int,
                 hub: _Hub) -> None:
        self._draft = draft
        self._wall = wall
        self._quality = quality
        self._mono = mono
        self._hub = hub
        self._state = _PENDING
        self._value: Any = None
        self._callbacks: list[Callable[[Receipt[_T]], object]] | None = None

    def __repr__(self) -> str:
        state = ("pending", "done", "failed")[self._state]
        return f"<Receipt {self._draft.type} {state}>"

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def running(self) -> bool:
        return self._state == _PENDING

    def _wait(self, timeout: float | None) -> None:
        if self._state != _PENDING:
            return
        hub = self._hub
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with hub.lock:
                if self._state != _PENDING:
                    return
                ev = hub.wake
                if ev is None:
                    ev = hub.wake = threading.Event()
            if deadline is None:
                ev.wait()
            else:
                left = deadline - time.monotonic()
                if left <= 0 or not ev.wait(left):
                    if self._state != _PENDING:
                        return
                    raise TimeoutError(f"event not committed within {timeout}s")

    def result(self, timeout: float | None = None) -> _T:
        """The committed value; raises the storage error, or ``TimeoutError``."""
        if self._state == _PENDING:
            self._wait(timeout)
        if self._state == _FAILED:
            raise self._value
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The storage error (``None`` when committed); raises ``TimeoutError``."""
        if self._state == _PENDING:
            self._wait(timeout)
        return self._value if self._state == _FAILED else None

    def add_done_callback(self, fn: Callable[[Receipt[_T]], object]) -> None:
        """Call ``fn(self)`` once resolved: from the writer thread after the commit, or right
        here when already resolved. Exceptions from ``fn`` are logged, not raised."""
        if self._state == _PENDING:
            with self._hub.lock:
                if self._state == _PENDING:
                    if self._callbacks is None:
                        self._callbacks = [fn]
                    else:
                        self._callbacks.append(fn)
                    return
        _run_callback(fn, self)


def _run_callback(fn: Callable[[Any], object], receipt: Receipt[Any]) -> None:
    try:
        fn(receipt)
    except Exception:
        log.exception("outbox_receipt_callback_failed")


def _resolve(batch: Sequence[Receipt[StoredEvent]], values: Sequence[Any] | None,
             error: BaseException | None = None) -> None:
    """Resolve ``batch`` (with ``values``, or all with ``error``), wake its waiters once, then
    run its callbacks, on the calling (writer) thread."""
    if not batch:
        return
    hub = batch[0]._hub
    with_callbacks: list[Receipt[StoredEvent]] = []
    with hub.lock:
        if values is None:
            for r in batch:
                r._value = error
                r._state = _FAILED
                if r._callbacks is not None:
                    with_callbacks.append(r)
        else:
            for r, v in zip(batch, values, strict=True):
                r._value = v
                r._state = _OK
                if r._callbacks is not None:
                    with_callbacks.append(r)
        wake, hub.wake = hub.wake, None
    if wake is not None:
        wake.set()
    for r in with_callbacks:
        cbs, r._callbacks = r._callbacks, None
        for fn in cbs or ():
            _run_callback(fn, r)


_Pending = Receipt[StoredEvent]  # submitted receipts double as the writer's work items
_STOP = object()
_Events = list[StoredEvent]  # aliases: Outbox.list shadows the builtin in the class body
_PendingList = list[_Pending]


_last_ms = 0
_VARIANT = "89ab89ab89ab89ab"


def new_event_ids(n: int) -> list[str]:
    """``n`` UUIDv7 strings (RFC 9562: 48-bit ms timestamp, version 7, variant 10, 74 random
    bits), the timestamp never going backwards.

    Same layout as ``uuid6.uuid7()``, but one ``os.urandom`` call per batch instead of one per
    id: each syscall drops the GIL, and winning it back from a busy producer thread is what made
    per-id generation the writer's bottleneck (see bench/outbox.py)."""
    global _last_ms
    ms = max(time.time_ns() // 1_000_000, _last_ms)
    _last_ms = ms
    ts = f"{ms & 0xFFFFFFFFFFFF:012x}"
    head = f"{ts[:8]}-{ts[8:]}-7"
    rnd = os.urandom(10 * n).hex()
    out = []
    for k in range(0, 20 * n, 20):
        h = rnd[k:k + 20]
        out.append(f"{head}{h[:3]}-{_VARIANT[int(h[3], 16)]}{h[4:7]}-{h[7:19]}")
    return out


def _chunks(ids: Iterable[str], size: int = 500) -> Iterator[list[str]]:
    buf: list[str] = []
    for i in ids:
        buf.append(i)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf


class Outbox:
    """The node's durable event store (see the module docstring for the policy)."""

    def __init__(self, path: Path, node_id: str, *, boot_id: str | None = None,
                 clock: Clock | None = None, quota: StorageQuota | None = None) -> None:
        self.path = Path(path)
        self.node_id = node_id
        self.boot_id = boot_id or secrets.token_hex(8)
        self.clock = clock or Clock()
        self.quota = quota or StorageQuota.from_config(StorageConfig.model_validate({}))
        self._lock = threading.RLock()
        self._hub = _Hub()
        self._listeners: list[Callable[[StoredEvent], None]] = []
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._last_quota_check = 0.0
        self._seq = 0
        self._pending_evictions: list[_Pending] = []
        conn, moved, reason = open_database(self.path)
        self._conn: sqlite3.Connection = conn
        self.quarantined: Path | None = moved
        self._next_id = int(conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM events")
                            .fetchone()[0])
        with self._tx() as c:
            n = c.execute("UPDATE events SET status='ready', claimed_at=NULL"
                          " WHERE status='in_flight'").rowcount
            c.execute("UPDATE snapshots SET status='ready', claimed_at=NULL"
                      " WHERE status='in_flight'")
        log_event(log, "outbox_opened", node_id=node_id, boot_id=self.boot_id,
                  path=str(self.path), requeued=n)
        if moved is not None:
            self.record_now([EventDraft(SystemEvent.STORAGE_QUARANTINED.value, 3,
                                        {"moved_to": str(moved), "reason": reason or ""})])
        self._writer = threading.Thread(target=self._run, name="outbox-writer", daemon=True)
        self._writer.start()

    # ---------------------------------------------------------------- writing

    def submit(self, draft: EventDraft) -> Receipt[StoredEvent]:
        """Queue ``draft`` for the writer; the receipt resolves once it is durably committed
        (or fails with ``StorageError``/``StorageFullError``).

        Never blocks and never touches the disk (safe on the alarm path). Clock readings are taken
        here, at submit time. Costs one ``Receipt`` and one lock-free queue put; no lock, no
        per-event Condition, no wake-up unless the writer is idle.
        """
        clock = self.clock
        wall, quality = clock.now()
        r: Receipt[StoredEvent] = Receipt(draft, wall, quality, clock.mono_ns(), self._hub)
        if self._closed:
            _resolve([r], None, StorageError("outbox is closed"))
            return r
        self._queue.put(r)
        return r

    def add_listener(self, fn: Callable[[StoredEvent], None]) -> None:
        """Call ``fn(event)`` after each committed event (on the committing thread)."""
        with self._lock:
            self._listeners.append(fn)

    def record(self, draft: EventDraft, timeout: float | None = 10) -> StoredEvent:
        """Submit and wait until committed."""
        return self.submit(draft).result(timeout)

    def record_many(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
        """Record ``drafts`` atomically (one transaction), in order; blocking."""
        return self.record_now(drafts)

    def record_now(self, drafts: Sequence[EventDraft]) -> list[StoredEvent]:
        """Commit ``drafts`` on the calling thread in one transaction (used for system events)."""
        clock = self.clock
        hub = self._hub
        items: list[_Pending] = []
        for d in drafts:
            wall, quality = clock.now()
            items.append(Receipt(d, wall, quality, clock.mono_ns(), hub))
        if not items:
            return []
        stored = self._commit_with_retry(items)
        self._notify(stored)
        return stored

    def _insert(self, conn: sqlite3.Connection, items: Sequence[_Pending]) -> list[StoredEvent]:
        """Insert inside the caller's transaction (``self._lock`` held)."""
        # Hot path: raw executemany instead of sqlite-utils' insert(), which costs about 2x
        # (it introspects the table and builds SQL per call); the schema itself is sqlite-utils'.
        node, boot = self.node_id, self.boot_id
        rid, seq = self._next_id, self._seq
        rows = []
        stored = []
        dumps = json.dumps
        make = _stored_from_row
        ids = new_event_ids(len(items))
        for r, eid in zip(items, ids, strict=True):
            draft = r._draft
            payload = draft.payload
            row = (rid, eid, node, boot, seq, r._mono, r._wall, r._quality, draft.type,
                   draft.priority, draft.incident_id, dumps(payload))
            rows.append(row)
            stored.append(make(row, payload))
            rid += 1
            seq += 1
        _insert_rows(conn, rows)
        self._next_id, self._seq = rid, seq
        return stored

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT) under the lock; counters restored
        on rollback."""
        with self._lock:
            saved = (self._next_id, self._seq)
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                self._next_id, self._seq = saved
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def _commit_with_retry(self, items: Sequence[_Pending]) -> list[StoredEvent]:
        """Commit ``items`` (plus any eviction records still waiting for room); on disk full
        evict and retry while eviction frees something, on other errors retry once.
        Raises ``StorageFullError``/``StorageError``."""
        retried_other = False
        while True:
            try:
                with self._lock:
                    extra = self._pending_evictions
                    with self._tx() as conn:
                        stored = self._insert(conn, [*extra, *items])
                    self._pending_evictions = []
                if extra:
                    self._notify(stored[:len(extra)])
                return stored[len(extra):]
            except (sqlite3.Error, OSError) as exc:
                if is_full_error(exc):
                    log_event(log, "outbox_disk_full", level=logging.WARNING,
                              node_id=self.node_id, pending=len(items))
                    need = sum(len(str(i._draft.payload)) + _ROW_OVERHEAD for i in items) * 2
                    try:
                        progress = self._evict_step(need + 65536, "disk_full", [])
                    except (sqlite3.Error, OSError) as exc2:
                        raise StorageFullError(f"disk full, eviction failed: {exc2}") from exc
                    if not progress:
                        raise StorageFullError("disk full and nothing left to evict") from exc
                    continue
                if retried_other:
                    raise StorageError(f"{type(exc).__name__}: {exc}") from exc
                retried_other = True
                time.sleep(0.05)

    def _notify(self, stored: Sequence[StoredEvent]) -> None:
        listeners = list(self._listeners)
        if not listeners:
            return
        for ev in stored:
            for fn in listeners:
                try:
                    fn(ev)
                except Exception:
                    log.exception("outbox_listener_failed")

    def _commit_batch(self, batch: Sequence[_Pending]) -> None:
        """Commit one batch from the queue and resolve its receipts; never raises."""
        try:
            stored = self._commit_with_retry(batch)
        except Exception as exc:
            err = exc if isinstance(exc, StorageError) else StorageError(str(exc))
            log_event(log, "outbox_write_failed", level=logging.ERROR, node_id=self.node_id,
                      count=len(batch), error=str(err),
                      types=sorted({b._draft.type for b in batch}))
            _resolve(batch, None, err)
            return
        _resolve(batch, stored)
        self._notify(stored)

    def _run(self) -> None:
        q = self._queue
        stop = False
        while not stop:
            try:
                item = q.get()
                if item is _STOP:
                    break
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
                self._commit_batch(batch)
                now = time.monotonic()
                if now - self._last_quota_check >= _QUOTA_CHECK_INTERVAL_S:
                    self._last_quota_check = now
                    self.enforce_quota()
            except Exception:  # the writer must survive anything
                log.exception("outbox_writer_error")
                time.sleep(0.1)

    # ---------------------------------------------------------------- sync side

    def claim(self, limit: int) -> list[StoredEvent]:
        """Move up to ``limit`` ready events to in_flight (priority, then age) in one statement."""
        if limit <= 0:
            return []
        with self._lock:
            rows = self._conn.execute(
                f"UPDATE events SET status='in_flight', attempts=attempts+1, claimed_at=?"
                f" WHERE id IN (SELECT id FROM events WHERE status='ready'"
                f" ORDER BY priority, id LIMIT ?) RETURNING {_COLS}",
                (time.monotonic(), limit),
            ).fetchall()
        events = [_from_row(r) for r in rows]
        events.sort(key=lambda e: (e.priority, e.rowid))
        return events

    def ack(self, event_ids: Iterable[str]) -> int:
        """Mark events acknowledged by central (idempotent; unknown ids ignored)."""
        now = time.time()
        changed = 0
        with self._tx() as conn:
            for chunk in _chunks(event_ids):
                marks = ",".join("?" * len(chunk))
                changed += conn.execute(
                    f"UPDATE events SET status='acked', acked_at=?, claimed_at=NULL"
                    f" WHERE status!='acked' AND event_id IN ({marks})", (now, *chunk)).rowcount
        return changed

    def release(self, event_ids: Iterable[str] | None = None) -> int:
        """Put in_flight events (all when ``event_ids`` is None) back to ready."""
        sql = "UPDATE events SET status='ready', claimed_at=NULL WHERE status='in_flight'"
        with self._tx() as conn:
            if event_ids is None:
                return int(conn.execute(sql).rowcount)
            changed = 0
            for chunk in _chunks(event_ids):
                marks = ",".join("?" * len(chunk))
                changed += conn.execute(f"{sql} AND event_id IN ({marks})", chunk).rowcount
            return changed

    def requeue_expired(self, older_than_seconds: float) -> int:
        """Put events claimed more than ``older_than_seconds`` ago (monotonic) back to ready."""
        cutoff = time.monotonic() - older_than_seconds
        with self._lock:
            return int(self._conn.execute(
                "UPDATE events SET status='ready', claimed_at=NULL"
                " WHERE status='in_flight' AND claimed_at <= ?", (cutoff,)).rowcount)

    # ---------------------------------------------------------------- queries

    def counts(self) -> dict[str, Any]:
        """Counts by status and by type, and the age of the oldest ready event."""
        out: dict[str, Any] = {"ready": 0, "in_flight": 0, "acked": 0}
        by_type: dict[str, dict[str, int]] = {}
        with self._lock:
            rows = self._conn.execute(
                "SELECT type, status, COUNT(*) FROM events GROUP BY type, status").fetchall()
            oldest = self._conn.execute(
                "SELECT MIN(wall_time) FROM events WHERE status='ready'").fetchone()[0]
        for typ, status, n in rows:
            out[status] = out.get(status, 0) + n
            per = by_type.setdefault(typ, {"ready": 0, "in_flight": 0, "acked": 0})
            per[status] = per.get(status, 0) + n
        out["by_type"] = by_type
        out["oldest_ready_age_s"] = (None if oldest is None
                                     else max(0.0, self.clock.now()[0] - oldest))
        return out

    def get(self, event_id: str) -> StoredEvent | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLS} FROM events WHERE event_id=?",
                                     (event_id,)).fetchone()
        return _from_row(row) if row else None

    def list(self, *, status: str | None = None, limit: int = 100) -> list[StoredEvent]:
        """Events, newest first, optionally of one status."""
        where, args = ("WHERE status=?", (status, limit)) if status else ("", (limit,))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLS} FROM events {where} ORDER BY id DESC LIMIT ?", args).fetchall()
        return [_from_row(r) for r in rows]

    def oldest_unacked(self, priority_max: int, older_than_s: float) -> _Events:
        """Unacked events with priority <= ``priority_max`` recorded more than ``older_than_s``
        ago (by their wall time), most urgent and oldest first (SMS fallback)."""
        cutoff = self.clock.now()[0] - older_than_s
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLS} FROM events WHERE status!='acked' AND priority<=?"
                f" AND wall_time<=? ORDER BY priority, id LIMIT 1000",
                (priority_max, cutoff)).fetchall()
        return [_from_row(r) for r in rows]

    def mark(self, event_id: str, key: str, value: Any) -> None:
        """Set a small per-event flag (JSON value), e.g. ``mark(id, "sms_sent_at", t)``."""
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO event_flags (event_id, key, value)"
                               " VALUES (?,?,?)", (event_id, key, json.dumps(value)))

    def flags(self, event_id: str) -> dict[str, Any]:
        with self._lock:
            rows = self._conn.execute("SELECT key, value FROM event_flags WHERE event_id=?",
                                      (event_id,)).fetchall()
        return {k: json.loads(v) for k, v in rows}

    # ---------------------------------------------------------------- retention and quota

    def prune_acked(self, older_than_seconds: float) -> int:
        """Delete events acknowledged more than ``older_than_seconds`` ago (and their flags)."""
        cutoff = time.time() - older_than_seconds
        with self._tx() as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT event_id FROM events WHERE status='acked' AND acked_at<=?", (cutoff,))]
            self._delete_events(conn, ids)
        if ids:
            self._reclaim()
        return len(ids)

    @staticmethod
    def _delete_events(conn: sqlite3.Connection, event_ids: Sequence[str]) -> None:
        for chunk in _chunks(event_ids):
            marks = ",".join("?" * len(chunk))
            conn.execute(f"DELETE FROM events WHERE event_id IN ({marks})", chunk)
            conn.execute(f"DELETE FROM event_flags WHERE event_id IN ({marks})", chunk)

    def _reclaim(self) -> None:
        """Give freed pages back to the filesystem and truncate the WAL (best effort)."""
        with self._lock:
            try:
                # executescript steps the pragma to completion (execute() frees one page only)
                self._conn.executescript("PRAGMA incremental_vacuum;")
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                log_event(log, "outbox_reclaim_failed", level=logging.WARNING, error=str(exc))

    def snapshot_bytes(self) -> int:
        with self._lock:
            return int(self._conn.execute(
                "SELECT COALESCE(SUM(size), 0) FROM snapshots").fetchone()[0])

    def usage_bytes(self) -> int:
        """DB + WAL + snapshot files, as counted against ``quota.disk_quota_bytes``."""
        return database_bytes(self.path) + self.snapshot_bytes()

    def _need_bytes(self) -> int:
        over = self.usage_bytes() - self.quota.disk_quota_bytes
        try:
            short = self.quota.min_free_bytes - free_bytes(self.path.parent)
        except OSError:
            short = 0
        return max(over, short)

    def enforce_quota(self) -> _Events:
        """Evict until within quota and free-space limits; return the EVICTION events recorded."""
        recorded: _Events = []
        with self._lock:
            if self._need_bytes() <= 0:
                return recorded
            self._reclaim()
            for _ in range(1000):
                need = self._need_bytes()
                if need <= 0:
                    break
                if not self._evict_step(need, "quota", recorded):
                    log_event(log, "storage_quota_exceeded", level=logging.ERROR,
                              node_id=self.node_id, short_bytes=need)
                    break
        return recorded

    def _evict_step(self, need: int, reason: str, recorded: _Events) -> bool:
        """Evict about ``need`` bytes from the first non-empty class: snapshots, acked events,
        unacked P4, unacked P3 (never unacked P1/P2). False when nothing may be evicted."""
        with self._lock:
            snaps = self._conn.execute(
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
                ev = self.delete_snapshots(chosen, {"what": "snapshots", "reason": reason})
                if ev is not None:
                    recorded.append(ev)
                return True
            # Unacked EVICTION records are never evicted: they are the audit trail of eviction
            # (and evicting them would record new ones forever).
            for label, where in (("acked_events", "status='acked'"),
                                 ("events_p4", "status!='acked' AND priority>=4"),
                                 ("events_p3", "status!='acked' AND priority=3"
                                               " AND type!='EVICTION'")):
                rows = self._conn.execute(
                    f"SELECT event_id, length(payload) FROM events WHERE {where}"
                    f" ORDER BY id LIMIT {_EVICT_MAX_ROWS}").fetchall()
                if not rows:
                    continue
                ids: list[str] = []
                freed = 0
                for eid, plen in rows:
                    if freed >= need and len(ids) >= _EVICT_MIN_ROWS:
                        break
                    ids.append(eid)
                    freed += plen + _ROW_OVERHEAD
                payload = {"what": label, "count": len(ids), "bytes": freed, "reason": reason}
                ev = self._delete_and_record(partial(self._delete_events, event_ids=ids),
                                             payload)
                if ev is not None:
                    recorded.append(ev)
                return True
            return False

    def _delete_and_record(self, delete: Callable[[sqlite3.Connection], None],
                           payload: dict[str, Any]) -> StoredEvent | None:
        """Run ``delete`` and record its EVICTION event in one transaction. When even that
        record does not fit (disk full), commit the deletion alone and keep the record in memory
        until the next commit that has room. Returns the event when it was committed."""
        item = self._system_item(payload)
        log_event(log, "storage_eviction", level=logging.WARNING, node_id=self.node_id,
                  **payload)
        with self._lock:
            try:
                with self._tx() as conn:
                    delete(conn)
                    ev: StoredEvent | None = self._insert(conn, [item])[0]
            except sqlite3.Error as exc:
                if not is_full_error(exc):
                    raise
                with self._tx() as conn:
                    delete(conn)
                self._pending_evictions.append(item)
                ev = None
            self._reclaim()
        if ev is not None:
            self._notify([ev])
        return ev

    def delete_snapshots(self, snaps: Sequence[tuple[str, str, int]],
                         event_payload: dict[str, Any]) -> StoredEvent | None:
        """Delete snapshot rows and files, recording one EVICTION event (used by the store).
        Returns the event (None when it is still waiting for room, see ``_delete_and_record``)."""
        ids = [s[0] for s in snaps]
        payload = {**event_payload, "count": len(snaps), "bytes": sum(s[2] for s in snaps),
                   "snapshot_ids": ids[:20]}

        def delete(conn: sqlite3.Connection) -> None:
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM snapshots WHERE snapshot_id IN ({marks})", chunk)

        ev = self._delete_and_record(delete, payload)
        for _sid, p, _size in snaps:
            with suppress(OSError):
                Path(p).unlink(missing_ok=True)
        return ev

    def _system_item(self, payload: dict[str, Any]) -> _Pending:
        wall, quality = self.clock.now()
        return Receipt(EventDraft(SystemEvent.EVICTION.value, 3, payload), wall, quality,
                       self.clock.mono_ns(), self._hub)

    # ---------------------------------------------------------------- lifecycle

    def writer_alive(self) -> bool:
        """True while the writer thread runs (systemd watchdog health check)."""
        return not self._closed and self._writer.is_alive()

    def close(self) -> None:
        """Commit everything already submitted, stop the writer, close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join()
        leftovers: _PendingList = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftovers.append(item)
        if leftovers:
            self._commit_batch(leftovers)
        with self._lock:
            with suppress(sqlite3.Error):
                self._conn.execute("PRAGMA optimize")
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
