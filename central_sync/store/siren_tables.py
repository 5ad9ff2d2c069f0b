"""Siren activations central started (``central_sync.siren_control``), on either backend
(``sql.py``): which ``sound`` commands went to which post for which incident or group, and the
``stop`` commands that ended them.

``siren_activations`` has one row per activation: a group activation from the desk
(``kind = 'group'``) or the RW warnings of one incident (``kind = 'incident'``, id
``incident-<incident id>``). ``siren_commands`` links each command id to its activation, post and
role (``start`` / ``stop``). The command rows themselves (status, the post's answer) are the
``commands`` table's, written by ``add_commands`` here for a whole group in one transaction and
updated by ingest when the posts' command results arrive.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from central_sync.store.base import Row
from central_sync.store.sql import SqlRunner, SqlTx, one
from edge.sync.wire import Command

_STATUS_SELECT = (
    "SELECT s.node_id, s.command_id, c.status, c.result_ok, c.result_detail, c.result_received_at, "
    "c.expires_at FROM siren_commands s JOIN commands c ON c.command_id = s.command_id "
    "WHERE s.activation_id = ? AND s.role = ?")


def _insert_sent(tx: SqlTx, cmds: Sequence[Command], issued_by: str, status: str = "sent") -> None:
    tx.many(
        "INSERT INTO commands (command_id, node_id, action, params, issued_at, expires_at, issuer, "
        "issued_by, signed, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        [(c.command_id, c.node_id, c.action, json.dumps(c.params, default=str), c.issued_at,
          c.expires_at, c.issuer, issued_by, c.sig is not None, status) for c in cmds])


#: Statuses of start commands that were never published (``central_sync.siren_warnings``).
UNSENT = ("merged", "cancelled")


class SirenTables:
    def __init__(self, runner: SqlRunner) -> None:
        self.runner = runner

    def add_activation(self, activation_id: str, *, kind: str, scope: str, label: str,
                       incident_id: str | None, created_by: str, created_at: float) -> bool:
        """Create an activation row; False when it exists already (kept as it was)."""
        with self.runner.tx() as tx:
            return tx.run(
                "INSERT INTO siren_activations (activation_id, kind, scope, label, incident_id, created_by, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (activation_id, kind, scope, label, incident_id, created_by, created_at)) > 0

    def add_commands(self, activation_id: str, role: str, cmds: Sequence[Command], *,
                     issued_by: str, link_only: bool = False) -> None:
        """Record commands about to be published (status 'sent') and link them to the
        activation, all in one transaction (a city-wide group is one commit, not 10,000).
        ``link_only``: the commands are recorded by whoever publishes them."""
        if not cmds:
            return
        with self.runner.tx() as tx:
            if not link_only:
                _insert_sent(tx, cmds, issued_by)
            tx.many(
                "INSERT INTO siren_commands (command_id, activation_id, node_id, role) VALUES (?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                [(c.command_id, activation_id, c.node_id, role) for c in cmds])

    def record_sent(self, cmds: Sequence[Command], *, issued_by: str) -> None:
        """Record commands about to be published (status 'sent') in one transaction, for
        commands already linked to their activations (``add_commands(..., link_only=True)``)."""
        if cmds:
            with self.runner.tx() as tx:
                _insert_sent(tx, cmds, issued_by)

    def record_unsent(self, activation_id: str | None, cmds: Sequence[Command], *, issued_by: str,
                      status: str) -> None:
        """Record RW warnings that will never be published (``UNSENT``: merged into another
        incident's warning to the same post, or cancelled), linked to ``activation_id`` when
        given (else they are linked already), in one transaction."""
        assert status in UNSENT
        if not cmds:
            return
        with self.runner.tx() as tx:
            _insert_sent(tx, cmds, issued_by, status)
            if activation_id is not None:
                tx.many("INSERT INTO siren_commands (command_id, activation_id, node_id, role) "
                        "VALUES (?, ?, ?, 'start') ON CONFLICT DO NOTHING",
                        [(c.command_id, activation_id, c.node_id) for c in cmds])

    def warning_nodes(self, activation_id: str) -> list[str]:
        """The posts an activation's start commands went (or were to go) to."""
        with self.runner.read() as tx:
            rows = tx.rows("SELECT DISTINCT node_id FROM siren_commands WHERE activation_id = ? "
                           "AND role = 'start' ORDER BY node_id", (activation_id,))
        return [str(r["node_id"]) for r in rows]

    def warning_rows(self, node_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The incident warnings (start commands of incident activations) to these posts:
        activation, whether it is stopped, command id, status (None: not recorded yet, still
        queued or being published) and, for a merged one, the command it was merged into."""
        out: list[dict[str, Any]] = []
        with self.runner.read() as tx:
            for i in range(0, len(node_ids), 500):
                chunk = list(node_ids[i:i + 500])
                rows = tx.rows(
                    "SELECT s.activation_id, a.stopped_at, s.node_id, s.command_id, c.status, c.params "
                    "FROM siren_commands s JOIN siren_activations a ON a.activation_id = s.activation_id "
                    "LEFT JOIN commands c ON c.command_id = s.command_id WHERE a.kind = 'incident' "
                    f"AND s.role = 'start' AND s.node_id IN ({', '.join('?' * len(chunk))})", tuple(chunk))
                for r in rows:
                    merged_into = None
                    if r["status"] == "merged":
                        merged_into = json.loads(r["params"] or "{}").get("merged_into")
                    out.append({"activation_id": r["activation_id"], "stopped": r["stopped_at"] is not None,
                                "node_id": r["node_id"], "command_id": r["command_id"], "status": r["status"],
                                "merged_into": merged_into})
        return out

    def get(self, activation_id: str) -> Row | None:
        with self.runner.read() as tx:
            return one(tx, "SELECT * FROM siren_activations WHERE activation_id = ?", (activation_id,))

    def recent(self, limit: int) -> list[Row]:
        """Newest first."""
        with self.runner.read() as tx:
            return tx.rows("SELECT * FROM siren_activations ORDER BY created_at DESC LIMIT ?", (limit,))

    def of_incident(self, incident_id: str) -> list[Row]:
        with self.runner.read() as tx:
            return tx.rows("SELECT * FROM siren_activations WHERE incident_id = ? ORDER BY created_at",
                           (incident_id,))

    def mark_stopped(self, activation_id: str, by: str, at: float) -> bool:
        """Note that the activation is being stopped; False if it was already."""
        with self.runner.tx() as tx:
            return tx.run("UPDATE siren_activations SET stopped_at = ?, stopped_by = ? "
                          "WHERE activation_id = ? AND stopped_at IS NULL", (at, by, activation_id)) > 0

    def started(self, activation_id: str) -> dict[str, list[str]]:
        """The ``sound`` command ids of the activation, by post (not those never published)."""
        with self.runner.read() as tx:
            rows = tx.rows("SELECT s.node_id, s.command_id FROM siren_commands s LEFT JOIN commands c "
                           "ON c.command_id = s.command_id WHERE s.activation_id = ? AND s.role = 'start' "
                           "AND (c.status IS NULL OR c.status NOT IN ('merged', 'cancelled')) "
                           "ORDER BY s.command_id", (activation_id,))
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(str(r["node_id"]), []).append(str(r["command_id"]))
        return out

    def counts(self, activation_id: str, role: str = "start") -> dict[str, int]:
        """How many of the activation's commands are in each ``commands.status``."""
        with self.runner.read() as tx:
            rows = tx.rows("SELECT c.status AS status, COUNT(*) AS n FROM siren_commands s JOIN commands c "
                           "ON c.command_id = s.command_id WHERE s.activation_id = ? AND s.role = ? "
                           "GROUP BY c.status", (activation_id, role))
        return {str(r["status"]): int(r["n"]) for r in rows}

    def posts(self, activation_id: str, role: str = "start", *, answered_after: float | None = None,
              limit: int = 20000) -> list[dict[str, Any]]:
        """Per command: post, status, the post's answer and when it arrived. With
        ``answered_after``: only answers received after that time (incremental polling)."""
        sql = _STATUS_SELECT
        params: list[Any] = [activation_id, role]
        if answered_after is not None:
            sql += " AND c.result_received_at > ?"
            params.append(answered_after)
        with self.runner.read() as tx:
            rows = tx.rows(sql + " ORDER BY s.node_id LIMIT ?", (*params, limit))
        return [{"node_id": r["node_id"], "command_id": r["command_id"], "status": r["status"],
                 "ok": None if r["result_ok"] is None else bool(r["result_ok"]),
                 "detail": r["result_detail"], "answered_at": r["result_received_at"],
                 "expires_at": r["expires_at"]} for r in rows]
