"""Row shapes shared by both backends: the column lists and the dicts the ``Store`` methods return."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from central_sync.store.base import Row, node_status

EVENT_COLS = ("rowid", "event_id", "node_id", "boot_id", "seq", "mono_ns", "wall_time", "time_quality",
              "type", "priority", "incident_id", "payload", "sig", "received_at")
EVENT_SELECT = f"SELECT {', '.join(EVENT_COLS)} FROM events"
SNAPSHOT_META = ("snapshot_id", "event_id", "node_id", "taken_at", "content_type", "sealed", "size", "sig",
                 "received_at")
#: A post's state (``nodes``, from its presence and heartbeats) with its identity and place from
#: the enrolment registry ONLY (``node_registry``: kelurahan, RW, RT, name, coordinates, status).
#: The ``nodes`` table's own place columns are no longer written (issue 10); a post that is not
#: enrolled has no place. Filter on ``nodes.``-qualified columns (``NODE_ID``).
NODE_SELECT = ("SELECT nodes.node_id AS node_id, nodes.online, nodes.last_seen, nodes.backlog, nodes.outbox, "
               "nodes.siren, nodes.time_quality, nodes.clock_offset, node_registry.kelurahan_code, "
               "node_registry.rw, node_registry.rt, node_registry.display_name, node_registry.lat, "
               "node_registry.lon, node_registry.status AS registry_status, nodes.version, nodes.boot_id, "
               "nodes.change_seq, nodes.presence_at "
               "FROM nodes LEFT JOIN node_registry ON node_registry.node_id = nodes.node_id")
NODE_ID = "nodes.node_id"


def loads(text: Any) -> Any:
    """JSON text decoded (other values, and text that is not JSON, as they are)."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def event_row(row: Mapping[str, Any]) -> Row:
    """An ``events`` row with its payload decoded (SQLite keeps JSON text, PostgreSQL jsonb)."""
    out = dict(row)
    out["payload"] = loads(out["payload"])
    return out


def node_row(row: Mapping[str, Any], now: float) -> Row:
    """A ``nodes`` row as ``list_nodes`` returns it (JSON decoded, ``status`` computed)."""
    d = dict(row)
    d["online"] = bool(d["online"])
    d["siren"] = loads(d["siren"])
    d["outbox"] = loads(d["outbox"])
    d["status"] = node_status(d["online"], d["last_seen"], now)
    return d


#: The event types ``last_event_times`` answers for (the posts page: a post's last self-test, siren
#: test passed, siren fault). The type index holds only these rows (a partial index on both
#: backends), so storing the common STATUS/PANIC events writes one b-tree less.
TIMED_EVENT_TYPES = ("SELFTEST", "SIREN_TEST", "SIREN_FAULT")
#: The partial index's condition, repeated verbatim in the query so that both planners use it.
TIMED_TYPES_SQL = "type IN ('SELFTEST', 'SIREN_TEST', 'SIREN_FAULT')"


def check_timed_type(event_type: str) -> None:
    """``ValueError`` unless ``last_event_times`` can answer for ``event_type`` from its index."""
    if event_type not in TIMED_EVENT_TYPES:
        raise ValueError(f"last_event_times answers for {', '.join(TIMED_EVENT_TYPES)} only, not {event_type!r}")
