"""The dashboard's in-memory table of posts, kept current from the store's change feed.

Loaded once from ``store.list_nodes()``, then updated with the node rows each commit announces
(presence, heartbeat, first event of a new post), so a dashboard request or a new incident never
reads or decodes the whole ``nodes`` table. An index by (kelurahan, RW) finds the posts of one
RW without scanning all posts (RW warnings), and ``status`` (the desk passes supervision's rule) is
recomputed at read time because it depends on the clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from central_sync.store import Row
from central_sync.store.base import node_status

RwKey = tuple[str, int]
#: ``status`` of a node row at a time (default: the store's ``node_status``; the desk passes
#: supervision's, which knows the offline threshold and whether central is blind).
StatusOf = Callable[[Mapping[str, Any], float], str]


def _store_status(row: Mapping[str, Any], now: float) -> str:
    return node_status(bool(row.get("online")), row.get("last_seen"), now)
#: Post fields the incident queue shows (``Desk.summary``).
LABELS = ("display_name", "kelurahan_code", "rw", "rt", "time_quality")


def _rw_key(row: Mapping[str, Any]) -> RwKey | None:
    kel, rw = row.get("kelurahan_code"), row.get("rw")
    if kel is None or rw is None:
        return None
    return str(kel), int(rw)


class PostTable:
    """Thread-safe: the change feed writes from a worker thread, requests read on the loop."""

    def __init__(self, status_of: StatusOf | None = None) -> None:
        self._status_of: StatusOf = status_of or _store_status
        self._lock = threading.Lock()
        self._rows: dict[str, Row] = {}
        self._by_rw: dict[RwKey, set[str]] = {}
        self._revs: dict[str, int] = {}  # node id -> ``version`` when its row last changed
        #: Bumped by every change (cache versions of bodies that show post state).
        self.version = 0
        #: Bumped only when a post is added or one of ``LABELS`` changes (bodies that show
        #: posts' names and places, not their heartbeat state: the incident queue).
        self.labels_version = 0

    def load(self, rows: Iterable[Row]) -> None:
        """Replace the whole table (start-up, or a resync after a lost connection)."""
        with self._lock:
            self._rows.clear()
            self._by_rw.clear()
            self._revs.clear()
            for row in rows:
                self._put(row)
            self.version += 1
            self.labels_version += 1

    def update(self, rows: Iterable[Row]) -> None:
        with self._lock:
            for row in rows:
                self._put(row)

    def _put(self, row: Row) -> None:
        node_id = str(row["node_id"])
        old = self._rows.get(node_id)
        self.version += 1
        if old is None or any(old.get(k) != row.get(k) for k in LABELS):
            self.labels_version += 1
        if old is not None:
            key = _rw_key(old)
            if key is not None:
                members = self._by_rw.get(key)
                if members is not None:
                    members.discard(node_id)
                    if not members:
                        del self._by_rw[key]
        self._rows[node_id] = dict(row)
        self._revs[node_id] = self.version
        key = _rw_key(row)
        if key is not None:
            self._by_rw.setdefault(key, set()).add(node_id)

    def _view(self, row: Row, now: float) -> Row:
        out = dict(row)
        out["status"] = self._status_of(out, now)
        return out

    def get(self, node_id: str) -> Row | None:
        with self._lock:
            row = self._rows.get(node_id)
        return None if row is None else self._view(row, time.time())

    def all(self) -> dict[str, Row]:
        """Every post by node id (copies, ``status`` current)."""
        now = time.time()
        with self._lock:
            rows = list(self._rows.values())
        return {str(r["node_id"]): self._view(r, now) for r in rows}

    def in_rw(self, kelurahan_code: str, rw: int) -> list[Row]:
        """The posts of one RW, by index."""
        now = time.time()
        with self._lock:
            ids = sorted(self._by_rw.get((kelurahan_code, int(rw)), ()))
            rows = [self._rows[i] for i in ids]
        return [self._view(r, now) for r in rows]

    def status_of(self, row: Mapping[str, Any], now: float) -> str:
        return self._status_of(row, now)

    def snapshot(self) -> tuple[dict[str, Row], dict[str, int], int]:
        """(rows by node id, each row's revision, ``labels_version``) at one instant, without
        copying the rows: two dict copies, not 10,000 row copies. The rows are shared with the
        table: read them, never change them (the table replaces a row, it never edits one)."""
        with self._lock:
            return dict(self._rows), dict(self._revs), self.labels_version

    def view(self) -> PostsView:
        """A read-only mapping over the table: ``.get(node_id)`` is one dict lookup; only
        iterating it (the post overview) touches every post."""
        return PostsView(self)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._rows)

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)


class PostsView(Mapping[str, Row]):
    """``Mapping`` of node id to post row (``status`` computed when read)."""

    def __init__(self, table: PostTable) -> None:
        self._table = table

    def __getitem__(self, node_id: str) -> Row:
        row = self._table.get(node_id)
        if row is None:
            raise KeyError(node_id)
        return row

    def __iter__(self) -> Iterator[str]:
        return iter(self._table.ids())

    def __len__(self) -> int:
        return len(self._table)
