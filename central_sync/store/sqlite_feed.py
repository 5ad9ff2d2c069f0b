"""The desk's change feed on SQLite (see ``SqliteChangeFeed``)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from central_sync.store.base import ChangeMark, Changes
from central_sync.store.rows import EVENT_SELECT, NODE_SELECT, event_row, node_row
from central_sync.store.sqlite import is_sqlite_transient


class SqliteChangeFeed:
    """The desk's view of commits by any process on one SQLite file.

    SQLite has no notifications between processes, so this polls two cheap indexed values on its
    own read connection: ``MAX(rowid)`` of events and the ``change_counter``. Writers are
    serialised, so both grow in commit order and nothing is skipped.
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0, poll_s: float = 0.1) -> None:
        self.poll_s = poll_s
        self._conn = sqlite3.connect(str(path), timeout=busy_timeout_s, isolation_level=None,
                                     check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def _head(self) -> ChangeMark:
        row = self._conn.execute("SELECT (SELECT COALESCE(MAX(rowid), 0) FROM events), "
                                 "(SELECT seq FROM change_counter WHERE id = 1)").fetchone()
        return ChangeMark(int(row[0]), int(row[1] or 0))

    def head(self) -> ChangeMark:
        """The newest mark now (start reading from here to skip history)."""
        with self._lock:
            return self._head()

    def wait(self, mark: ChangeMark, timeout: float) -> Changes:
        deadline = time.monotonic() + timeout
        while not self._closed.is_set():
            try:
                with self._lock:
                    head = self._head()
                    if head.event_rowid > mark.event_rowid or head.node_seq > mark.node_seq:
                        return self._read(mark, head)
            except sqlite3.OperationalError as exc:
                if not is_sqlite_transient(exc):
                    raise
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._closed.wait(min(self.poll_s, left))
        return Changes(mark=mark)

    def _read(self, mark: ChangeMark, head: ChangeMark) -> Changes:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            events = [event_row(dict(r)) for r in conn.execute(
                f"{EVENT_SELECT} WHERE rowid > ? ORDER BY rowid LIMIT 5000", (mark.event_rowid,)).fetchall()]
            t = time.time()
            nodes = [node_row(dict(r), t) for r in conn.execute(
                f"{NODE_SELECT} WHERE nodes.change_seq > ? ORDER BY nodes.change_seq", (mark.node_seq,)).fetchall()]
        finally:
            conn.execute("COMMIT")
        last = int(events[-1]["rowid"]) if events else mark.event_rowid
        seq = max([mark.node_seq, *(int(n["change_seq"]) for n in nodes)])
        return Changes(events=events, nodes=nodes, mark=ChangeMark(last, seq))

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._conn.close()
