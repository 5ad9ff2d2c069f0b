"""The sync lane's view of the outbox: claim, ack, release, requeue, lookups and counts.

Status lifecycle: ``ready`` -> (``claim``) ``in_flight`` -> (``ack``) ``acked``; ``release`` /
``requeue_expired`` / reopening put ``in_flight`` back to ``ready``. ``in_flight`` ->
(``reject_local``) ``rejected_local`` is terminal: a record the uplink cannot encode (over the
wire limit, from before record-time bounding) leaves the pending set instead of blocking every
claim; it is kept (flag ``rejected_local``: the reason) and still counts as unacked, so the SMS
fallback still reports a P1 among them (docs/storage.md, "Oversized events").

Every query here uses an index, and the alarm-path ones (P1 claim, ``oldest_unacked``) touch
O(unacked P1 rows), never O(outbox rows): ``tests/test_outbox_plans.py`` asserts the plans.
``counts()`` is served from ``Tally``, in-memory counts by (type, status) loaded by one scan at
open and kept exact by every statement that changes a status (``RETURNING type``), so status and
heartbeats never scan a million-row outbox under the lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from edge.clock import Clock
from edge.outbox.db import OutboxDB
from edge.outbox.records import COLS, StoredEvent, chunks, from_row

__all__ = ["Claims", "Tally"]

_Events = list[StoredEvent]
STATUSES = ("ready", "in_flight", "acked", "rejected_local")


class Tally:
    """Event counts by (type, status), exact, without scanning (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n: Counter[tuple[str, str]] = Counter()

    def load(self, db: OutboxDB) -> None:
        rows = db.query("SELECT type, status, COUNT(*) FROM events GROUP BY type, status")
        with self._lock:
            self._n = Counter({(t, s): n for t, s, n in rows})

    def add(self, status: str, types: Iterable[str]) -> None:
        c = Counter(types)
        with self._lock:
            for t, n in c.items():
                self._n[(t, status)] += n

    def remove(self, pairs: Iterable[tuple[str, str]]) -> None:
        c = Counter(pairs)
        with self._lock:
            for key, n in c.items():
                self._n[key] -= n
                if self._n[key] <= 0:
                    del self._n[key]

    def move(self, old: str, new: str, types: Iterable[str]) -> None:
        c = Counter(types)
        with self._lock:
            for t, n in c.items():
                self._n[(t, old)] -= n
                if self._n[(t, old)] <= 0:
                    del self._n[(t, old)]
                self._n[(t, new)] += n

    def snapshot(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._n)


class Claims:
    """Claim/ack/release and lookups on the shared database object."""

    def __init__(self, db: OutboxDB, clock: Clock, tally: Tally) -> None:
        self.db = db
        self.clock = clock
        self.tally = tally

    def claim(self, limit: int, max_priority: int | None = None) -> _Events:
        """Move up to ``limit`` ready events (only priority <= ``max_priority`` when given) to
        in_flight, priority then age, in one statement."""
        if limit <= 0 or not self.db.is_open:
            return []
        prio = "" if max_priority is None else " AND priority <= ?"
        args: tuple[Any, ...] = ((time.monotonic(), limit) if max_priority is None
                                 else (time.monotonic(), max_priority, limit))
        rows = self.db.query(
            f"UPDATE events SET status='in_flight', attempts=attempts+1, claimed_at=?"
            f" WHERE id IN (SELECT id FROM events INDEXED BY events_claim"
            f" WHERE status='ready'{prio}"
            f" ORDER BY priority, id LIMIT ?) RETURNING {COLS}", args)
        events = [from_row(r) for r in rows]
        self.tally.move("ready", "in_flight", (e.type for e in events))
        events.sort(key=lambda e: (e.priority, e.rowid))
        return events

    def ack(self, event_ids: Iterable[str]) -> int:
        """Mark events acknowledged by central (idempotent; unknown ids ignored)."""
        now = time.time()
        moved: dict[str, list[str]] = {"ready": [], "in_flight": []}
        with self.db.tx() as conn:
            for chunk in chunks(event_ids):
                marks = ",".join("?" * len(chunk))
                for old in ("in_flight", "ready"):
                    moved[old].extend(t for (t,) in conn.execute(
                        f"UPDATE events SET status='acked', acked_at=?, claimed_at=NULL"
                        f" WHERE event_id IN ({marks}) AND +status=? RETURNING type",
                        (now, *chunk, old)))
        for old, types in moved.items():
            self.tally.move(old, "acked", types)
        return sum(len(t) for t in moved.values())

    def reject_local(self, reasons: dict[str, str]) -> list[str]:
        """Move in_flight events (event id -> reason) to the terminal ``rejected_local`` status
        with the reason as their ``rejected_local`` flag; returns the ids moved (each once:
        an event already moved, acked or released is left alone)."""
        if not reasons or not self.db.is_open:
            return []
        moved: list[str] = []
        types: list[str] = []
        with self.db.tx() as conn:
            for event_id, reason in reasons.items():
                row = conn.execute("UPDATE events SET status='rejected_local', claimed_at=NULL"
                                   " WHERE event_id=? AND +status='in_flight' RETURNING type",
                                   (event_id,)).fetchone()
                if row is None:
                    continue
                conn.execute("INSERT OR REPLACE INTO event_flags (event_id, key, value)"
                             " VALUES (?, 'rejected_local', ?)", (event_id, json.dumps(reason)))
                moved.append(event_id)
                types.append(row[0])
        self.tally.move("in_flight", "rejected_local", types)
        return moved

    def release(self, event_ids: Iterable[str] | None = None) -> int:
        """Put in_flight events (all when ``event_ids`` is None) back to ready."""
        if not self.db.is_open:
            return 0
        # By event id when ids are given (``+status``: never walk all in-flight rows for that),
        # else every in-flight row through events_claim.
        types: list[str] = []
        with self.db.tx() as conn:
            if event_ids is None:
                types = [t for (t,) in conn.execute(
                    "UPDATE events INDEXED BY events_claim SET status='ready', claimed_at=NULL"
                    " WHERE status='in_flight' RETURNING type")]
            else:
                for chunk in chunks(event_ids):
                    marks = ",".join("?" * len(chunk))
                    types.extend(t for (t,) in conn.execute(
                        f"UPDATE events SET status='ready', claimed_at=NULL"
                        f" WHERE event_id IN ({marks}) AND +status='in_flight' RETURNING type",
                        chunk))
        self.tally.move("in_flight", "ready", types)
        return len(types)

    def requeue_expired(self, older_than_seconds: float) -> int:
        """Put events claimed more than ``older_than_seconds`` ago (monotonic) back to ready."""
        if not self.db.is_open:
            return 0
        cutoff = time.monotonic() - older_than_seconds
        types = [t for (t,) in self.db.query(
            "UPDATE events INDEXED BY events_claim SET status='ready', claimed_at=NULL"
            " WHERE status='in_flight' AND claimed_at <= ? RETURNING type", (cutoff,))]
        self.tally.move("in_flight", "ready", types)
        return len(types)

    def reset_in_flight(self) -> int:
        """At open: every in_flight event goes back to ready (and snapshots likewise)."""
        with self.db.tx() as conn:
            n = conn.execute("UPDATE events SET status='ready', claimed_at=NULL"
                             " WHERE status='in_flight'").rowcount
            conn.execute("UPDATE snapshots SET status='ready', claimed_at=NULL"
                         " WHERE status='in_flight'")
        return int(n)

    # ---------------------------------------------------------------- lookups

    def counts(self) -> dict[str, Any]:
        """Counts by status and by type, and the age of the oldest ready event."""
        out: dict[str, Any] = {"ready": 0, "in_flight": 0, "acked": 0, "rejected_local": 0}
        by_type: dict[str, dict[str, int]] = {}
        for (typ, status), n in sorted(self.tally.snapshot().items()):
            out[status] = out.get(status, 0) + n
            per = by_type.setdefault(typ, {"ready": 0, "in_flight": 0, "acked": 0})
            per[status] = per.get(status, 0) + n
        out["by_type"] = by_type
        oldest = self.oldest_ready_wall() if out["ready"] else None
        out["oldest_ready_age_s"] = (None if oldest is None
                                     else max(0.0, self.clock.now()[0] - oldest))
        return out

    def oldest_ready_wall(self) -> float | None:
        """Wall time of the oldest ready event: the first ready row of each priority (one index
        probe per priority present), then the lowest rowid among them."""
        if not self.db.is_open:
            return None
        best: tuple[int, float] | None = None
        for p in self.priorities():
            row = self.db.query("SELECT id, wall_time FROM events INDEXED BY events_claim"
                                " WHERE status='ready' AND priority=? ORDER BY id LIMIT 1",
                                (p,))
            if row and (best is None or row[0][0] < best[0]):
                best = (row[0][0], row[0][1])
        return None if best is None else best[1]

    def priorities(self) -> list[int]:
        """Distinct priorities of unacked events (skip-scan of ``events_unacked``)."""
        out: list[int] = []
        last = -(1 << 62)
        while True:
            row = self.db.query("SELECT MIN(priority) FROM events INDEXED BY events_unacked"
                                " WHERE status != 'acked' AND priority > ?", (last,))
            if not row or row[0][0] is None:
                return out
            last = int(row[0][0])
            out.append(last)

    def get(self, event_id: str) -> StoredEvent | None:
        if not self.db.is_open:
            return None
        rows = self.db.query(f"SELECT {COLS} FROM events WHERE event_id=?", (event_id,))
        return from_row(rows[0]) if rows else None

    def list(self, *, status: str | None = None, limit: int = 100) -> _Events:
        """Events, newest first, optionally of one status."""
        if not self.db.is_open:
            return []
        if status is None:
            rows = self.db.query(f"SELECT {COLS} FROM events ORDER BY id DESC LIMIT ?",
                                 (limit,))
        elif status == "acked":
            rows = self.db.query(f"SELECT {COLS} FROM events WHERE status = 'acked'"
                                 f" ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self.db.query(f"SELECT {COLS} FROM events WHERE status != 'acked'"
                                 f" AND status=? ORDER BY id DESC LIMIT ?", (status, limit))
        return [from_row(r) for r in rows]

    def oldest_unacked(self, priority_max: int, older_than_s: float) -> _Events:
        """Unacked events with priority <= ``priority_max`` recorded more than ``older_than_s``
        ago (by their wall time), most urgent and oldest first (SMS fallback, P1 wake-ups).
        Walks ``events_unacked``: O(unacked rows of those priorities)."""
        if not self.db.is_open:
            return []
        cutoff = self.clock.now()[0] - older_than_s
        rows = self.db.query(
            f"SELECT {COLS} FROM events INDEXED BY events_unacked WHERE status != 'acked'"
            f" AND priority <= ? AND wall_time <= ? ORDER BY priority, id LIMIT 1000", (priority_max, cutoff))
        return [from_row(r) for r in rows]

    def mark(self, event_id: str, key: str, value: Any) -> None:
        """Set a small per-event flag (JSON value), e.g. ``mark(id, "sms_sent_at", t)``."""
        self.db.run("INSERT OR REPLACE INTO event_flags (event_id, key, value) VALUES (?,?,?)",
                    (event_id, key, json.dumps(value)))

    def flags(self, event_id: str) -> dict[str, Any]:
        if not self.db.is_open:
            return {}
        rows = self.db.query("SELECT key, value FROM event_flags WHERE event_id=?", (event_id,))
        return {k: json.loads(v) for k, v in rows}
