"""The administrative audit log (``audit_log``) behind typed methods, on either backend
(``sql.py``). ``central_sync.audit`` holds the rules (what is recorded, how long the detail may
be); this module only stores rows and never updates one."""

from __future__ import annotations

from central_sync.store.base import Row
from central_sync.store.sql import SqlRunner


class AuditTables:
    def __init__(self, runner: SqlRunner) -> None:
        self.runner = runner

    def append(self, at: float, actor: str, action: str, target: str, detail: str,
               client: str | None) -> None:
        """Add one row; ``detail`` is JSON text."""
        with self.runner.tx() as tx:
            tx.run("INSERT INTO audit_log (at, actor, action, target, detail, client) VALUES (?, ?, ?, ?, ?, ?)",
                   (at, actor, action, target, detail, client))

    def recent(self, limit: int) -> list[Row]:
        """``id``, ``at``, ``actor``, ``action``, ``target``, ``detail`` (JSON text), ``client``;
        newest first."""
        with self.runner.tx() as tx:
            return tx.rows("SELECT id, at, actor, action, target, detail, client FROM audit_log "
                           "ORDER BY id DESC LIMIT ?", (limit,))

    def prune(self, before: float) -> int:
        """Delete rows older than ``before`` (the retention the operator chose); return how many."""
        with self.runner.tx() as tx:
            return tx.run("DELETE FROM audit_log WHERE at < ?", (before,))
