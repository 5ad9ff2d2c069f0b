"""Event records: the draft a caller submits, the row as stored, the insert SQL and ids.

Hot-path helpers of the writer thread live here (multi-row ``INSERT``, the slot-descriptor
``StoredEvent`` builder, batched UUIDv7 ids): see docs/storage.md and bench/outbox.py.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from edge.sync.wire import EventEnvelope

__all__ = ["COLS", "INSERT", "EventDraft", "StoredEvent", "chunks", "from_row", "insert_rows",
           "new_event_ids", "stored_from_row"]

COLS = ("id, event_id, node_id, boot_id, seq, mono_ns, wall_time, time_quality, type, priority,"
         " incident_id, payload, status, attempts")
INSERT = ("INSERT INTO events (id, event_id, node_id, boot_id, seq, mono_ns, wall_time,"
           " time_quality, type, priority, incident_id, payload)"
           " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")


_ROWS_PER_STATEMENT = 80  # 80 rows x 12 columns = 960 parameters per INSERT
_MULTI_INSERT = INSERT.replace("VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                                "VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"]
                                                     * _ROWS_PER_STATEMENT))


def insert_rows(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
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
        conn.executemany(INSERT, rows[n:])


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


def from_row(row: Sequence[Any]) -> StoredEvent:
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


stored_from_row = _make_stored_fast()


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


def chunks(ids: Iterable[str], size: int = 500) -> Iterator[list[str]]:
    buf: list[str] = []
    for i in ids:
        buf.append(i)
        if len(buf) >= size:
            yield buf
            buf = []
    if buf:
        yield buf

