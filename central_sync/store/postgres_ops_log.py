"""Central's operations log on PostgreSQL: rejected messages (aggregated per node, reason and
interval) and the commands sent to posts with their results.

Apart from ``postgres.py`` (events, snapshots, nodes: what ingest commits) because these tables
are written by other paths (the rejection flusher, the command sender, command results) and
read by the CLI and the desk; the SQL mirrors ``sqlite_ops_log.py``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import psycopg

from central_sync.store.base import Row
from central_sync.store.checks import safe_text
from central_sync.store.rows import loads
from central_sync.store_types import RejectionSummary
from edge.sync.wire import Command, CommandResult


class PostgresOpsLog:
    """Rejections and commands of ``PostgresStore`` (mixed in: it provides ``_tx`` and ``_query``)."""

    if TYPE_CHECKING:
        def _tx(self) -> AbstractContextManager[psycopg.Connection[Any]]: ...

        def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    # -- rejections ------------------------------------------------------------------------------
    def record_rejections(self, rows: Sequence[RejectionSummary]) -> None:
        if not rows:
            return
        with self._tx() as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO rejections (node_id, topic, reason, detail, at, count, last_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [(None if r.node_id is None else safe_text(r.node_id, 64), safe_text(r.sample_topic, 300),
                  safe_text(r.reason, 100), safe_text(r.sample_detail, 500), r.first_at, max(1, int(r.count)),
                  r.last_at) for r in rows])

    def record_rejection(self, *, node_id: str | None, topic: str, reason: str, detail: str, at: float) -> None:
        self.record_rejections([RejectionSummary(node_id, reason, 1, at, at, topic, detail)])

    def rejection_counts(self) -> dict[str, int]:
        rows = self._query("SELECT reason, SUM(count) AS n FROM rejections GROUP BY reason ORDER BY reason")
        return {str(r["reason"]): int(r["n"]) for r in rows}

    def list_rejections(self, limit: int = 100) -> list[Row]:
        return self._query("SELECT id, node_id, topic, reason, detail, at, count, last_at FROM rejections "
                           "ORDER BY id DESC LIMIT %s", (limit,))

    # -- commands --------------------------------------------------------------------------------
    def record_command(self, cmd: Command, *, issued_by: str) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO commands (command_id, node_id, action, params, issued_at, expires_at, issuer, issued_by, "
                "signed, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'sent') ON CONFLICT DO NOTHING",
                (cmd.command_id, cmd.node_id, cmd.action, json.dumps(cmd.params, default=str), cmd.issued_at,
                 cmd.expires_at, cmd.issuer, issued_by, cmd.sig is not None))

    def record_command_result(self, r: CommandResult, received_at: float) -> None:
        self.record_command_results([r], received_at)

    def record_command_results(self, results: Sequence[CommandResult], received_at: float) -> None:
        """Many answers in ONE transaction (a group's 10,000)."""
        if not results:
            return
        with self._tx() as conn:
            for r in results:
                status = "ok" if r.ok else "failed"
                data = json.dumps(r.data, default=str)
                cur = conn.execute(
                    "UPDATE commands SET status = %s, result_ok = %s, result_detail = %s, result_data = %s, "
                    "result_at = %s, result_received_at = %s WHERE command_id = %s AND node_id = %s",
                    (status, r.ok, r.detail, data, r.at, received_at, r.command_id, r.node_id))
                if cur.rowcount == 0:
                    conn.execute(
                        "INSERT INTO commands (command_id, node_id, action, params, issued_at, expires_at, issuer, "
                        "issued_by, signed, status, result_ok, result_detail, result_data, result_at, "
                        "result_received_at) "
                        "VALUES (%s, %s, 'unknown', '{}', 0, 0, 'unknown', 'unknown', false, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING",
                        (r.command_id, r.node_id, status, r.ok, r.detail, data, r.at, received_at))

    def list_commands(self, node_id: str | None = None) -> list[Row]:
        sql = "SELECT * FROM commands"
        params: tuple[Any, ...] = ()
        if node_id is not None:
            sql += " WHERE node_id = %s"
            params = (node_id,)
        out = []
        for d in self._query(sql + " ORDER BY issued_at, command_id", params):
            d["params"] = loads(d["params"])
            d["result_data"] = loads(d["result_data"])
            out.append(d)
        return out
