"""The outbox as a process that is not the agent may see it: read-only, never created.

``kentongan-edge status`` shows the outbox on disk when the agent does not answer. Opening it
with ``Outbox`` would create the schema, build the write reserve and record events under a boot
id of its own, racing an agent that is starting at that moment (seen: a status poll during the
agent's start made the agent's writer collide on a rowid and lose every event after it, a PANIC
among them). ``read_counts`` opens the file with SQLite's ``mode=ro`` and only reads.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["read_counts"]

_STATUSES = ("ready", "in_flight", "acked", "rejected_local")


def read_counts(path: Path) -> dict[str, Any]:
    """Counts by status and by type and the age of the oldest ready event, the shape of
    ``Outbox.counts()``; all zero when the file has no schema yet. Raises ``sqlite3.Error`` for
    a file SQLite cannot read (the caller reports it)."""
    out: dict[str, Any] = dict.fromkeys(_STATUSES, 0)
    by_type: dict[str, dict[str, int]] = {}
    out["by_type"] = by_type
    out["oldest_ready_age_s"] = None
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='events'").fetchone() is None:
            return out
        for typ, status, n in conn.execute("SELECT type, status, COUNT(*) FROM events GROUP BY type, status"):
            out[status] = out.get(status, 0) + n
            per = by_type.setdefault(typ, {"ready": 0, "in_flight": 0, "acked": 0})
            per[status] = per.get(status, 0) + n
        if out["ready"]:
            row = conn.execute("SELECT MIN(wall_time) FROM events WHERE status='ready'").fetchone()
            if row and row[0] is not None:
                out["oldest_ready_age_s"] = max(0.0, time.time() - float(row[0]))
    finally:
        conn.close()
    return out
