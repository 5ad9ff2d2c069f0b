"""Grouping events into incidents and the incident lifecycle.

Events of the same post and type within ``group_window_s`` of the incident's last event join it;
an ``AMAN`` (all clear) event resolves the post's open incidents. Lifecycle::

    new -> acknowledged -> resolved | false_alarm

Each step is written to ``incident_log`` with who did it and a note. Events whose type is not an
incident type (system events, PATROLI check-ins) are not grouped.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from central_sync.errors import CentralError
from central_sync.store.desk_tables import DeskTables, IncidentTx
from edge.incidents import INCIDENTS, RT_ONLY, Audience, IncidentInfo, IncidentType, Priority, SystemEvent


class IncidentError(CentralError):
    """An unknown incident or a lifecycle step not allowed from its state."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


class State(StrEnum):
    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    FALSE_ALARM = "false_alarm"


OPEN_STATES = (State.NEW, State.ACKNOWLEDGED)
#: step -> states it may be taken from.
TRANSITIONS: dict[State, tuple[State, ...]] = {
    State.ACKNOWLEDGED: (State.NEW,),
    State.RESOLVED: (State.ACKNOWLEDGED,),
    State.FALSE_ALARM: (State.ACKNOWLEDGED,),
}
#: System incidents: faults a post reports (tamper, siren fault, storage quarantine, dead modem)
#: and central's own POST_OFFLINE (``central_sync.supervision``). For the command centre only.
SYSTEM_INCIDENTS: dict[str, IncidentInfo] = {
    SystemEvent.TAMPER.value: IncidentInfo("silent", Priority.P2, (Audience.COMMAND_CENTRE,), crime=False),
    SystemEvent.SIREN_FAULT.value: IncidentInfo("silent", Priority.P2, (Audience.COMMAND_CENTRE,), crime=False),
    SystemEvent.STORAGE_QUARANTINED.value: IncidentInfo("silent", Priority.P3, (Audience.COMMAND_CENTRE,),
                                                        crime=False),
    SystemEvent.MODEM_FAULT.value: IncidentInfo("silent", Priority.P3, (Audience.COMMAND_CENTRE,), crime=False),
    "POST_OFFLINE": IncidentInfo("silent", Priority.P2, (Audience.COMMAND_CENTRE,), crime=False),
}
#: Event types that open or join incidents (POST_OFFLINE is opened by central, not by an event).
GROUPED_TYPES = (frozenset(t.value for t in IncidentType) - {IncidentType.PATROLI, IncidentType.AMAN}
                 | (frozenset(SYSTEM_INCIDENTS) - {"POST_OFFLINE"}))
_GROUPED_OR_AMAN = GROUPED_TYPES | {IncidentType.AMAN.value}


def incident_info(kind: str) -> IncidentInfo:
    """Defaults of an incident type or a system incident type."""
    found = SYSTEM_INCIDENTS.get(kind)
    return found if found is not None else INCIDENTS[IncidentType(kind)]


@dataclass(frozen=True, slots=True)
class Incident:
    incident_id: str
    node_id: str
    type: str
    priority: int
    state: State
    opened_at: float
    last_event_at: float
    updated_at: float
    closed_at: float | None
    time_quality: str | None
    event_count: int

    @property
    def info(self) -> IncidentInfo:
        return incident_info(self.type)

    @property
    def crime(self) -> bool:
        return self.info.crime

    @property
    def rt_only(self) -> bool:
        return self.type in RT_ONLY

    @property
    def open(self) -> bool:
        return self.state in OPEN_STATES

    def as_dict(self) -> dict[str, Any]:
        return {
            "incident_id": self.incident_id, "node_id": self.node_id, "type": self.type,
            "priority": self.priority, "state": self.state.value, "opened_at": self.opened_at,
            "last_event_at": self.last_event_at, "updated_at": self.updated_at,
            "closed_at": self.closed_at, "time_quality": self.time_quality,
            "event_count": self.event_count, "crime": self.crime, "rt_only": self.rt_only,
            "show_number": self.info.show_number,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """What one batch of events did to one incident."""

    incident_id: str
    opened: bool
    closed: bool


def event_payload(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event's payload as a dict whether the row holds JSON text or a dict."""
    payload = event.get("payload")
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return {}
    return dict(payload) if isinstance(payload, dict) else {}


def event_time(event: Mapping[str, Any]) -> float:
    """The node's wall time, or central's receive time when the node's clock was unsynced."""
    wall = float(event.get("wall_time") or 0.0)
    received = event.get("received_at")
    if (event.get("time_quality") == "unsynced" or wall <= 0) and received:
        return float(received)
    return wall or time.time()


def _row(r: Mapping[str, Any]) -> Incident:
    return Incident(r["incident_id"], r["node_id"], r["type"], int(r["priority"]),
                    State(r["state"]), r["opened_at"], r["last_event_at"], r["updated_at"],
                    r["closed_at"], r["time_quality"], int(r["event_count"]))


class IncidentBook:
    """Incidents, their events and their log in the desk's tables (``store.desk()``)."""

    def __init__(self, tables: DeskTables, group_window_s: float = 600.0) -> None:
        self.tables = tables
        self.group_window_s = group_window_s

    # -- grouping ---------------------------------------------------------------------------
    def add_events(self, events: Iterable[Mapping[str, Any]]) -> list[Change]:
        """Group events (store rows or envelopes as dicts); duplicates are ignored."""
        changes: dict[str, Change] = {}
        # Only incident types and all-clears are grouped: a batch of status events (most of a
        # live fleet's) takes no incident transaction, i.e. no write lock.
        ordered = sorted((ev for ev in events if ev.get("type") in _GROUPED_OR_AMAN), key=event_time)
        if not ordered:
            return []
        with self.tables.incident_tx() as tx:
            for ev in ordered:
                event_id, node_id, kind = ev.get("event_id"), ev.get("node_id"), ev.get("type")
                if not event_id or not node_id or not kind:
                    continue
                if tx.is_grouped(str(node_id), str(event_id)):
                    continue
                at = event_time(ev)
                if kind == IncidentType.AMAN:
                    for inc_id in self._close_open(tx, str(node_id), at, str(event_id)):
                        changes[inc_id] = Change(inc_id, changes.get(inc_id, Change(
                            inc_id, False, False)).opened, True)
                    continue
                if kind not in GROUPED_TYPES:
                    continue
                change = self._attach(tx, ev, str(event_id), str(node_id), str(kind), at)
                prev = changes.get(change.incident_id)
                changes[change.incident_id] = Change(
                    change.incident_id, change.opened or bool(prev and prev.opened), False)
        return list(changes.values())

    def _attach(self, tx: IncidentTx, ev: Mapping[str, Any], event_id: str, node_id: str,
                kind: str, at: float) -> Change:
        now = time.time()
        priority = int(ev.get("priority") or incident_info(kind).priority)
        quality = ev.get("time_quality")
        inc_id = tx.open_incident_near(node_id, kind, at - self.group_window_s)
        if inc_id is not None:
            tx.extend_incident(inc_id, at, priority, now, quality)
            opened = False
        else:
            wanted = ev.get("incident_id")
            inc_id = str(wanted) if wanted else f"inc-{uuid.uuid4().hex}"
            if tx.exists(inc_id):
                inc_id = f"inc-{uuid.uuid4().hex}"
            tx.insert_incident(inc_id, node_id, kind, priority, at, now, quality)
            tx.log_step(inc_id, now, "new", f"post:{node_id}", kind)
            opened = True
        tx.link_event(node_id, event_id, inc_id)
        return Change(inc_id, opened, False)

    def _close_open(self, tx: IncidentTx, node_id: str, at: float, event_id: str) -> list[str]:
        now = time.time()
        ids = tx.open_incidents_of(node_id)
        for inc_id in ids:
            tx.set_state(inc_id, State.RESOLVED.value, now, at)
            tx.log_step(inc_id, now, "resolved", f"post:{node_id}", "AMAN (all clear) from the post")
        if ids:
            tx.link_event(node_id, event_id, ids[0])
        return ids

    # -- lifecycle --------------------------------------------------------------------------
    def step(self, incident_id: str, to: State | str, actor: str, note: str = "") -> Incident:
        """Move an incident to ``to``; ``IncidentError`` if the step is not allowed."""
        target = State(to)
        allowed_from = TRANSITIONS.get(target)
        if allowed_from is None:
            raise IncidentError(f"cannot move an incident to {target.value}")
        now = time.time()
        with self.tables.incident_tx() as tx:
            state = tx.state_of(incident_id)
            if state is None:
                raise IncidentError(f"no incident {incident_id}", not_found=True)
            if State(state) not in allowed_from:
                raise IncidentError(f"incident is {state}; cannot become {target.value}")
            closed = now if target not in OPEN_STATES else None
            tx.set_state(incident_id, target.value, now, closed)
            tx.log_step(incident_id, now, target.value, actor, note[:1000])
        return self.require(incident_id)

    # -- queries ----------------------------------------------------------------------------
    def get(self, incident_id: str) -> Incident | None:
        row = self.tables.incident(incident_id)
        return _row(row) if row else None

    def require(self, incident_id: str) -> Incident:
        found = self.get(incident_id)
        if found is None:
            raise IncidentError(f"no incident {incident_id}", not_found=True)
        return found

    def incidents(self, *, open_only: bool = False, limit: int = 500) -> list[Incident]:
        """Open incidents first, then most urgent, then newest."""
        return [_row(r) for r in self.tables.incidents(open_only=open_only, limit=limit)]

    def event_ids(self, incident_id: str) -> list[str]:
        return self.tables.incident_event_ids(incident_id)

    def incident_of_event(self, event_id: str, node_id: str | None = None) -> str | None:
        return self.tables.incident_of_event(event_id, node_id)

    def history(self, incident_id: str) -> list[dict[str, Any]]:
        return self.tables.incident_history(incident_id)

    def false_alarms(self, node_id: str, since: float) -> int:
        return self.tables.false_alarm_count(node_id, since)
