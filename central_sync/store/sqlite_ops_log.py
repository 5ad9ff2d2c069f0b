"""Central's operations log on SQLite: rejected messages (aggregated per node, reason and
interval) and the commands sent to posts with their results.

Apart from ``sqlite.py`` (events, snapshots, nodes: what ingest commits) because these tables
are written by other paths (the rejection flusher, the command sender, command results) and
read by the CLI and the desk; the SQL mirrors ``postgres_ops_log.py``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from central_sync.store.checks import safe_text
from central_sync.store.rows import loads
from central_sync.store_types import RejectionSummary
from edge.sync.wire import Command, CommandResult


class SqliteOpsLog:
    """Rejections and commands of ``CentralStore`` (mixed in: it provides ``_tx`` and ``_query``)."""

    if TYPE_CHECKING:
        def _tx(self) -> AbstractContextManager[sqlite3.Connection]: ...

        def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]: ...

    # -- rejections ------------------------------------------------------------------------------
    def record_rejections(self, rows: Sequence[RejectionSummary]) -> None:
        """Aggregated rejections (one row per node and reason and interval) in ONE transaction."""
        if not rows:
            return
        with self._tx() as conn:
            conn.executemany(
                "INSERT INTO rejections (node_id, topic, reason, detail, at, count, last_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(None if r.node_id is None else safe_text(r.node_id, 64), safe_text(r.sample_topic, 300),
                  safe_text(r.reason, 100), safe_text(r.sample_detail, 500), r.first_at, max(1, int(r.count)),
                  r.last_at) for r in rows])

    def record_rejection(self, *, node_id: str | None, topic: str, reason: str, detail: str, at: float) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO rejections (node_id, topic, reason, detail, at, count, last_at) "
                         "VALUES (?, ?, ?, ?, ?, 1, ?)",
                         (None if node_id is None else safe_text(node_id, 64), safe_text(topic, 300),
                          safe_text(reason, 100), safe_text(detail, 500), at, at))

    def rejection_counts(self) -> dict[str, int]:
        rows = self._query("SELECT reason, SUM(count) FROM rejections GROUP BY reason ORDER BY reason")
        return {str(r[0]): int(r[1]) for r in rows}

    def list_rejections(self, limit: int = 100) -> list[dict[str, Any]]:
        return [dict(r) for r in self._query(
            "SELECT id, node_id, topic, reason, detail, at, count, last_at FROM rejections ORDER BY id DESC LIMIT ?",
            (limit,))]

    # -- commands --------------------------------------------------------------------------------
    def record_command(self, cmd: Command, *, issued_by: str) -> None:
        """Record a command about to be published (status 'sent'); re-recording is a no-op."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO commands (command_id, node_id, action, params, issued_at, expires_at, issuer, "
                "issued_by, signed, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'sent')",
                (cmd.command_id, cmd.node_id, cmd.action, json.dumps(cmd.params, default=str), cmd.issued_at,
                 cmd.expires_at, cmd.issuer, issued_by, int(cmd.sig is not None)),
            )

    def record_command_result(self, r: CommandResult, received_at: float) -> None:
        """Attach a node's answer to its command (status 'ok' or 'failed'); unknown ids are kept too."""
        self.record_command_results([r], received_at)

    def record_command_results(self, results: Sequence[CommandResult], received_at: float) -> None:
        """``record_command_result`` for many answers in ONE transaction (a group's 10,000)."""
        if not results:
            return
        with self._tx() as conn:
            for r in results:
                cur = conn.execute(
                    "UPDATE commands SET status = ?, result_ok = ?, result_detail = ?, result_data = ?, result_at = ?, "
                    "result_received_at = ? WHERE command_id = ? AND node_id = ?",
                    ("ok" if r.ok else "failed", int(r.ok), r.detail, json.dumps(r.data, default=str), r.at,
                     received_at, r.command_id, r.node_id),
                )
                if cur.rowcount == 0:
                    conn.execute(
                        "INSERT OR IGNORE INTO commands (command_id, node_id, action, params, issued_at, expires_at, "
                        "issuer, issued_by, signed, status, result_ok, result_detail, result_data, result_at, "
                        "result_received_at) VALUES (?, ?, 'unknown', '{}', 0, 0, 'unknown', 'unknown', 0, ?, ?, ?, ?, "
                        "?, ?)",
                        (r.command_id, r.node_id, "ok" if r.ok else "failed", int(r.ok), r.detail,
                         json.dumps(r.data, default=str), r.at, received_at),
                    )

    def list_commands(self, node_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM commands"
        params: tuple[Any, ...] = ()
        if node_id is not None:
            sql += " WHERE node_id = ?"
            params = (node_id,)
        out = []
        for r in self._query(sql + " ORDER BY issued_at, command_id", params):
            d = dict(r)
            d["params"] = loads(d["params"])
            d["result_data"] = loads(d["result_data"])
            d["signed"] = bool(d["signed"])
            d["result_ok"] = None if d["result_ok"] is None else bool(d["result_ok"])
            out.append(d)
        return out
