"""Retention (UU PDP): snapshots and personal data are deleted on schedule, each deletion logged.

- Snapshots older than ``web.snapshot_retention_days`` (default 30, by central's receive time,
  since a node's clock may be wrong) are deleted.
- Personal fields of event payloads (reporter, phone, operator... see ``web.policy``) older than
  ``web.personal_data_retention_days`` are erased; the event itself (type, time, post) stays.
  Erasing changes the payload a node signed, so ``sig`` is cleared with it and the erasure is
  logged: the retention log is the proof of why the signature is gone.
- Access-log rows older than ``web.access_log_retention_days`` are deleted.

Every deletion is a ``retention_log`` row and a structured log line ``retention_deleted``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from central_sync.web.db import WebDB
from central_sync.web.policy import is_personal_key
from central_sync.web.settings import WebSettings
from edge.logs import log_event

log = logging.getLogger("central.retention")
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class RetentionReport:
    snapshots: int
    personal: int
    access_log: int


def _strip(payload: Any) -> tuple[Any, bool]:
    if not isinstance(payload, dict):
        return payload, False
    out, changed = {}, False
    for key, value in payload.items():
        if is_personal_key(str(key)):
            changed = True
            continue
        value, inner = _strip(value)
        changed = changed or inner
        out[key] = value
    return out, changed


class Retention:
    """Runs the deletions in central's database (tables ``snapshots``, ``events``, ``access_log``)."""

    def __init__(self, db: WebDB, store: Any, settings: WebSettings) -> None:
        self.db, self.store, self.settings = db, store, settings

    def _deleted(self, conn: Any, now: float, kind: str, object_id: str, reason: str) -> None:
        conn.execute("INSERT INTO retention_log(at, kind, object_id, reason) VALUES (?, ?, ?, ?)",
                     (now, kind, object_id, reason))
        log_event(log, "retention_deleted", kind=kind, object_id=object_id, reason=reason)

    def run_once(self, now: float | None = None) -> RetentionReport:
        now = time.time() if now is None else now
        s = self.settings
        snap_cut = now - s.snapshot_retention_days * DAY
        pers_cut = now - s.personal_data_retention_days * DAY
        log_cut = now - s.access_log_retention_days * DAY
        with self.db.tx() as conn:
            snaps = [r["snapshot_id"] for r in conn.execute(
                "SELECT snapshot_id FROM snapshots WHERE received_at < ?", (snap_cut,))]
            for sid in snaps:
                conn.execute("DELETE FROM snapshots WHERE snapshot_id = ?", (sid,))
                self._deleted(conn, now, "snapshot", sid,
                              f"older than {s.snapshot_retention_days:g} days")
            personal = 0
            for row in conn.execute("SELECT event_id, payload FROM events WHERE received_at < ?",
                                    (pers_cut,)).fetchall():
                try:
                    payload = json.loads(row["payload"])
                except (TypeError, ValueError):
                    continue
                stripped, changed = _strip(payload)
                if not changed:
                    continue
                conn.execute("UPDATE events SET payload = ?, sig = NULL WHERE event_id = ?",
                             (json.dumps(stripped, separators=(",", ":")), row["event_id"]))
                self._deleted(conn, now, "event_personal_data", row["event_id"],
                              f"personal fields older than {s.personal_data_retention_days:g} "
                              "days")
                personal += 1
            old_log = conn.execute("DELETE FROM access_log WHERE at < ?", (log_cut,)).rowcount
            if old_log:
                self._deleted(conn, now, "access_log", f"{old_log} rows",
                              f"older than {s.access_log_retention_days:g} days")
        report = RetentionReport(len(snaps), personal, old_log)
        log_event(log, "retention_run", snapshots=report.snapshots, personal=report.personal,
                  access_log=report.access_log)
        return report

    def log(self, limit: int = 200) -> list[dict[str, Any]]:
        return self.db.query("SELECT * FROM retention_log ORDER BY id DESC LIMIT ?", (limit,))

    async def run_forever(self) -> None:
        """Run now, then every ``retention_interval_s``, until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.run_once)
            except Exception:
                log.exception("retention run failed")
            await asyncio.sleep(self.settings.retention_interval_s)
