"""The desk's change feed on PostgreSQL: ``LISTEN kentongan_changes``.

Writers send ``NOTIFY`` in the committing transaction (so only committed work is announced):
``e:<first_rowid>:<last_rowid>`` for an event commit and ``n:<node>,<node>,...`` for node state.
The feed reads exactly those rows. Event ``rowid``s come from a sequence, so with several ingest
processes they are not in commit order; reading the announced range of each commit (instead of
"everything above the highest rowid seen") is what makes the feed skip nothing. After a lost
connection the feed reconnects and reports a resync (all nodes, and events above the mark).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import psycopg

from central_sync.store.base import ChangeMark, Changes, Row
from central_sync.store.postgres import PostgresStore
from central_sync.store.postgres_support import CHANNEL, is_pg_transient


class PostgresChangeFeed:
    def __init__(self, url: str, store: PostgresStore) -> None:
        self.url = url
        self.store = store
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False

    def _connect(self) -> None:
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        conn.execute(f"LISTEN {CHANNEL}")
        self._conn = conn

    def head(self) -> ChangeMark:
        rows = self.store._query("SELECT COALESCE(MAX(rowid), 0) AS r FROM event_keys")
        return ChangeMark(int(rows[0]["r"]), 0)

    def wait(self, mark: ChangeMark, timeout: float) -> Changes:
        if self._closed:
            return Changes(mark=mark)
        if self._conn is None or self._conn.closed:
            try:
                self._connect()
            except psycopg.Error as exc:
                if not is_pg_transient(exc):
                    raise
                time.sleep(min(timeout, 1.0))
                return Changes(mark=mark)
            missed = self.store.list_events(since_rowid=mark.event_rowid, limit=5000)
            return self._changes(mark, missed, self.store.list_nodes(), resync=True)
        assert self._conn is not None
        ranges: list[tuple[int, int]] = []
        node_ids: set[str] = set()
        try:
            for note in self._conn.notifies(timeout=timeout, stop_after=1):
                self._parse(note.payload, ranges, node_ids)
            if ranges or node_ids:  # drain what is already there, bounded
                for note in self._conn.notifies(timeout=0.02, stop_after=500):
                    self._parse(note.payload, ranges, node_ids)
        except psycopg.Error as exc:
            if not is_pg_transient(exc):
                raise
            self._drop()
            return Changes(mark=mark)
        events: list[Row] = []
        for lo, hi in ranges:
            events.extend(self.store.events_between(lo, hi))
        nodes = self.store.nodes_by_id(sorted(node_ids)) if node_ids else []
        return self._changes(mark, events, nodes, resync=False)

    @staticmethod
    def _parse(payload: str, ranges: list[tuple[int, int]], node_ids: set[str]) -> None:
        kind, _, rest = payload.partition(":")
        if kind == "e":
            lo, _, hi = rest.partition(":")
            if lo.isdigit() and hi.isdigit():
                ranges.append((int(lo), int(hi)))
        elif kind == "n":
            node_ids.update(n for n in rest.split(",") if n)

    @staticmethod
    def _changes(mark: ChangeMark, events: list[Row], nodes: list[Row], *, resync: bool) -> Changes:
        seen: set[int] = set()
        unique = []
        for e in sorted(events, key=lambda r: int(r["rowid"])):
            if int(e["rowid"]) not in seen:
                seen.add(int(e["rowid"]))
                unique.append(e)
        top = max([mark.event_rowid, *seen])
        return Changes(events=unique, nodes=nodes, mark=ChangeMark(top, mark.node_seq), resync=resync)

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        self._closed = True
        self._drop()
