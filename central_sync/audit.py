"""Append-only audit log of administrative actions (who changed what, when, from where).

Recorded: accounts added, removed or given another role (CLI), commands sent from the desk,
enrolments and revocations (CLI). Admins read it at ``GET /api/audit-log``. The rows live in the
store's ``audit_log`` table (``central_sync.store.audit_tables``, either backend; SQLite
migration ``m003_audit_log`` of ``kentongan_web``, PostgreSQL ``0004_audit_log``); this module
never writes SQL. Nothing updates or deletes a row except the retention the operator chooses:
``[maintenance] audit_log_retention_days``, applied by ``kentongan-central store maintain``
(``central_sync.store.maintenance``; the rows name people and addresses, personal data under
UU PDP), or ``prune``.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import time
from typing import Any

from central_sync.store.audit_tables import AuditTables
from edge.logs import log_event

log = logging.getLogger("central.audit")
MAX_DETAIL_CHARS = 2000


def cli_actor() -> str:
    """The operating-system user running a ``kentongan-central`` command (``cli:<user>``)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return f"cli:{name}"


class AuditLog:
    """The audit log of one store (``AuditLog(store.audit_tables())``)."""

    def __init__(self, tables: AuditTables) -> None:
        self.tables = tables

    def record(self, actor: str, action: str, target: str,
               detail: dict[str, Any] | None = None, client: str | None = None) -> None:
        text = json.dumps(detail or {}, sort_keys=True, default=str)[:MAX_DETAIL_CHARS]
        self.tables.append(time.time(), actor[:120], action[:64], target[:200], text,
                           None if client is None else client[:200])
        log_event(log, "audit", actor=actor, action=action, target=target, client=client)

    def recent(self, limit: int = 200) -> list[dict[str, Any]]:
        """Newest first; ``detail`` decoded (a detail cut at ``MAX_DETAIL_CHARS`` comes back as
        ``{"truncated": <text>}``)."""
        rows = self.tables.recent(limit)
        for row in rows:
            try:
                row["detail"] = json.loads(row["detail"])
            except ValueError:
                row["detail"] = {"truncated": row["detail"]}
        return rows

    def prune(self, older_than_seconds: float) -> int:
        return self.tables.prune(time.time() - older_than_seconds)
