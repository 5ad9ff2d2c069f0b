"""Retention (UU PDP): snapshots and personal data are deleted on schedule, each deletion logged.

- Snapshots older than ``web.snapshot_retention_days`` (default 30, by central's receive time,
  since a node's clock may be wrong) are deleted.
- Personal fields of event payloads (reporter, phone, operator... see ``personal_data``) older than
  ``web.personal_data_retention_days`` are erased; the event itself (type, time, post) stays.
  Erasing changes the payload a node signed, so ``sig`` is cleared with it and the erasure is
  logged: the retention log is the proof of why the signature is gone.
- Access-log rows older than ``web.access_log_retention_days`` are deleted.

Every deletion is a ``retention_log`` row and a structured log line ``retention_deleted``.
Whole events (after ``[maintenance] event_retention_days``, never those of open or recently
closed incidents) and admin audit-log rows are deleted by ``kentongan-central store maintain``
(``central_sync.store.maintenance``), which logs the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from central_sync.personal_data import is_personal_key
from central_sync.store.desk_tables import DeskTables, RetentionTx
from central_sync.web_settings import WebSettings
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
    """Runs the deletions in central's store (tables ``snapshots``, ``events``, ``access_log``)."""

    def __init__(self, tables: DeskTables, settings: WebSettings) -> None:
        self.tables, self.settings = tables, settings

    def _deleted(self, tx: RetentionTx, now: float, kind: str, object_id: str, reason: str) -> None:
        tx.log_deletion(now, kind, object_id, reason)
        log_event(log, "retention_deleted", kind=kind, object_id=object_id, reason=reason)

    def run_once(self, now: float | None = None) -> RetentionReport:
        now = time.time() if now is None else now
        s = self.settings
        snap_cut = now - s.snapshot_retention_days * DAY
        pers_cut = now - s.personal_data_retention_days * DAY
        log_cut = now - s.access_log_retention_days * DAY
        with self.tables.retention_tx() as tx:
            snaps = tx.snapshots_received_before(snap_cut)
            for sid in snaps:
                tx.delete_snapshot(sid)
                self._deleted(tx, now, "snapshot", sid, f"older than {s.snapshot_retention_days:g} days")
            personal = 0
            for row in tx.event_payloads_received_before(pers_cut):
                payload = row["payload"]
                if isinstance(payload, str):
                    try:
                        payload = json.loads(payload)
                    except ValueError:
                        continue
                stripped, changed = _strip(payload)
                if not changed:
                    continue
                tx.replace_payload(int(row["rowid"]), stripped)
                self._deleted(tx, now, "event_personal_data", str(row["event_id"]),
                              f"personal fields older than {s.personal_data_retention_days:g} days")
                personal += 1
            old_log = tx.delete_access_log_before(log_cut)
            if old_log:
                self._deleted(tx, now, "access_log", f"{old_log} rows",
                              f"older than {s.access_log_retention_days:g} days")
        report = RetentionReport(len(snaps), personal, old_log)
        log_event(log, "retention_run", snapshots=report.snapshots, personal=report.personal,
                  access_log=report.access_log)
        return report

    def log(self, limit: int = 200) -> list[dict[str, Any]]:
        return self.tables.retention_log(limit)

    async def run_forever(self) -> None:
        """Run now, then every ``retention_interval_s``, until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.run_once)
            except Exception:
                log.exception("retention run failed")
            await asyncio.sleep(self.settings.retention_interval_s)
