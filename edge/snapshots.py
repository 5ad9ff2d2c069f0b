"""Camera snapshot store: files under a directory, rows in the outbox database.

Each snapshot is written atomically (temp file, fsync, rename, fsync of the directory) *before*
its row is committed, so a row always has its file; orphan files and temp files left by a crash
are removed at start. When a ``sealer`` is given (the security helper passes one that encrypts to
central's public key) only sealed bytes ever reach the disk.

No snapshot is stored while the outbox's write reserve is released (the disk ran full): that
room belongs to events. Own upload lane: ``ready`` -> ``in_flight`` (``claim``) -> ``acked``.
Snapshots are evicted before anything else under disk pressure (acked first, then lowest
priority, then oldest), and deleted after ``retention_seconds`` (UU PDP retention); every
deletion records an EVICTION event.
Methods are blocking and thread-safe: they use the outbox's shared database object
(``outbox.db``: its lock and transactions), never the outbox's internals.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uuid6 import uuid7

from edge.errors import StorageError, StorageFullError
from edge.logs import log_event
from edge.outbox import Outbox
from edge.storage import is_full_error, write_atomic

__all__ = ["SnapshotStore", "StoredSnapshot"]

log = logging.getLogger(__name__)

_COLS = "snapshot_id, event_id, path, size, priority, taken_at, status, sealed"
_SUFFIX = ".snap"


@dataclass(frozen=True)
class StoredSnapshot:
    """A snapshot on disk. ``path`` holds the (possibly sealed) bytes that go on the wire."""

    snapshot_id: str
    event_id: str | None
    path: Path
    size: int
    priority: int
    taken_at: float
    status: str
    sealed: bool


def _from_row(row: Sequence[Any]) -> StoredSnapshot:
    return StoredSnapshot(row[0], row[1], Path(row[2]), int(row[3]), int(row[4]), float(row[5]),
                          row[6], bool(row[7]))


class SnapshotStore:
    """Snapshots for the uplink, within ``quota_bytes`` and ``retention_seconds``."""

    def __init__(self, outbox: Outbox, directory: Path, *, quota_bytes: int,
                 retention_seconds: float,
                 sealer: Callable[[bytes], bytes] | None = None) -> None:
        self.outbox = outbox
        self.db = outbox.db
        self.directory = Path(directory)
        self.quota_bytes = quota_bytes
        self.retention_seconds = retention_seconds
        self.sealer = sealer
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._reconcile()
        except (OSError, StorageError) as exc:  # a full disk must not stop the agent
            log_event(log, "snapshot_store_degraded", level=logging.ERROR,
                      directory=str(self.directory), error=str(exc))

    def _reconcile(self) -> None:
        """Drop temp/orphan files and rows whose file vanished (crash or manual deletion)."""
        db = self.db
        if not db.is_open:
            return  # storage unavailable at start: nothing to reconcile against yet
        with db.lock:
            rows = db.query("SELECT snapshot_id, path FROM snapshots")
            known = {Path(p).name for _sid, p in rows}
            for f in self.directory.iterdir():
                if f.name.endswith(".tmp") or (f.name.endswith(_SUFFIX) and f.name not in known):
                    f.unlink(missing_ok=True)
            gone = [sid for sid, p in rows if Path(p).parent == self.directory
                    and not Path(p).exists()]
            if gone:
                with db.tx() as conn:
                    conn.executemany("DELETE FROM snapshots WHERE snapshot_id=?",
                                     [(g,) for g in gone])
                log_event(log, "snapshot_rows_without_file", level=logging.WARNING,
                          count=len(gone))

    def add(self, data: bytes, *, event_id: str | None, priority: int,
            taken_at: float | None = None) -> StoredSnapshot:
        """Seal (if configured), evict to fit the quota, write atomically, record the row."""
        blob = self.sealer(data) if self.sealer is not None else data
        size = len(blob)
        if size > self.quota_bytes:
            raise StorageFullError(f"snapshot of {size} bytes exceeds the snapshot quota")
        reserve = self.outbox.reserve
        if reserve.size and not reserve.present and not reserve.ensure(1 << 20):
            # The disk ran full and the write reserve went to events: snapshots must never
            # take the room events need, so none is stored until the reserve is back.
            raise StorageFullError("disk full: snapshots wait until the write reserve is back")
        sid = str(uuid7())
        path = self.directory / f"{sid}{_SUFFIX}"
        when = time.time() if taken_at is None else taken_at
        ob = self.outbox
        with self.db.lock:
            self._make_room(size)
            try:
                write_atomic(path, blob)
            except OSError as exc:
                if not is_full_error(exc):
                    raise StorageError(f"snapshot write failed: {exc}") from exc
                ob.enforce_quota()
                self._make_room(size, force=True)
                try:
                    write_atomic(path, blob)
                except OSError as exc2:
                    raise StorageFullError(f"snapshot write failed: {exc2}") from exc2
            try:
                with self.db.tx() as conn:
                    conn.execute(
                        "INSERT INTO snapshots (snapshot_id, event_id, path, size, priority,"
                        " taken_at, sealed) VALUES (?,?,?,?,?,?,?)",
                        (sid, event_id, str(path), size, priority, when,
                         int(self.sealer is not None)))
            except sqlite3.Error as exc:
                path.unlink(missing_ok=True)
                err = StorageFullError if is_full_error(exc) else StorageError
                raise err(f"snapshot row not stored: {exc}") from exc
            except Exception:
                path.unlink(missing_ok=True)
                raise
        ob.enforce_quota()
        return StoredSnapshot(sid, event_id, path, size, priority, when, "ready",
                              self.sealer is not None)

    def _make_room(self, size: int, *, force: bool = False) -> None:
        used = int(self.db.query("SELECT COALESCE(SUM(size), 0) FROM snapshots")[0][0])
        need = used + size - self.quota_bytes
        if force:
            need = max(need, size)
        if need <= 0:
            return
        rows = self.db.query(
            "SELECT snapshot_id, path, size FROM snapshots"
            " ORDER BY (status='acked') DESC, priority DESC, taken_at, rowid")
        chosen = []
        freed = 0
        for row in rows:
            if freed >= need:
                break
            chosen.append(row)
            freed += row[2]
        if chosen:
            self.outbox.delete_snapshots(chosen, {"what": "snapshots", "reason": "snapshot_quota"})

    def claim(self, max_bytes: int) -> list[StoredSnapshot]:
        """Ready -> in_flight within ``max_bytes`` (at least one if any is ready), priority then
        age, in one statement."""
        if not self.db.is_open:
            return []
        rows = self.db.query(
                f"""WITH c AS (
                      SELECT snapshot_id,
                             SUM(size) OVER (ORDER BY priority, taken_at, rowid) AS cum,
                             ROW_NUMBER() OVER (ORDER BY priority, taken_at, rowid) AS rn
                      FROM snapshots WHERE status='ready')
                    UPDATE snapshots SET status='in_flight', attempts=attempts+1, claimed_at=?
                    WHERE snapshot_id IN (SELECT snapshot_id FROM c WHERE cum<=? OR rn=1)
                    RETURNING {_COLS}""",
                (time.monotonic(), max_bytes))
        snaps = [_from_row(r) for r in rows]
        snaps.sort(key=lambda s: (s.priority, s.taken_at))
        return snaps

    def read(self, snap: StoredSnapshot) -> bytes:
        """The stored (sealed, if a sealer is configured) bytes."""
        try:
            return snap.path.read_bytes()
        except OSError as exc:
            raise StorageError(f"snapshot {snap.snapshot_id} unreadable: {exc}") from exc

    def get(self, snapshot_id: str) -> StoredSnapshot | None:
        rows = self.db.query(f"SELECT {_COLS} FROM snapshots WHERE snapshot_id=?",
                             (snapshot_id,))
        return _from_row(rows[0]) if rows else None

    def ack(self, snapshot_ids: Iterable[str]) -> int:
        """Mark snapshots acknowledged by central (idempotent; unknown ids ignored)."""
        ids = list(snapshot_ids)
        now = time.time()
        with self.db.tx() as conn:
            return sum(conn.execute(
                "UPDATE snapshots SET status='acked', acked_at=?, claimed_at=NULL"
                " WHERE snapshot_id=? AND status!='acked'", (now, i)).rowcount for i in ids)

    def release(self, snapshot_ids: Iterable[str] | None = None) -> int:
        """In_flight -> ready (all when ``snapshot_ids`` is None)."""
        sql = "UPDATE snapshots SET status='ready', claimed_at=NULL WHERE status='in_flight'"
        with self.db.tx() as conn:
            if snapshot_ids is None:
                return int(conn.execute(sql).rowcount)
            return sum(conn.execute(sql + " AND snapshot_id=?", (i,)).rowcount
                       for i in snapshot_ids)

    def purge_expired(self, now: float | None = None) -> int:
        """Delete snapshots taken more than ``retention_seconds`` ago; records an EVICTION event."""
        cutoff = (time.time() if now is None else now) - self.retention_seconds
        if not self.db.is_open:
            return 0
        with self.db.lock:
            rows = self.db.query(
                "SELECT snapshot_id, path, size FROM snapshots WHERE taken_at<?", (cutoff,))
            if rows:
                self.outbox.delete_snapshots(rows, {"what": "snapshots", "reason": "retention"})
        return len(rows)

    def counts(self) -> dict[str, int]:
        out = {"ready": 0, "in_flight": 0, "acked": 0, "bytes": 0}
        if not self.db.is_open:
            return out
        rows = self.db.query("SELECT status, COUNT(*), COALESCE(SUM(size), 0) FROM snapshots"
                             " GROUP BY status")
        for status, n, b in rows:
            out[status] = n
            out["bytes"] += b
        return out

    def files(self) -> list[Path]:
        """Snapshot files currently in the directory (diagnostics/tests)."""
        return sorted(p for p in self.directory.iterdir() if p.name.endswith(_SUFFIX))

