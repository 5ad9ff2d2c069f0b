"""Alarm engine: button -> incident type -> siren pattern immediately -> event recorded ->
snapshot requested -> event queued for sync.

``on_button`` runs on a gpiozero / timer thread. It starts the siren FIRST, synchronously, with no
disk, camera or network in between (``SirenPlayer.play`` turns the relay on before returning), then
hands the event to the outbox writer with a non-blocking ``submit`` and hops into the asyncio loop
with ``call_soon_threadsafe`` for everything slow (snapshots, sync wake-up).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from uuid6 import uuid7

from edge.config import NodeConfig
from edge.drivers.buttons import ButtonAction, ButtonSignal
from edge.drivers.siren import Activation, SirenPlayer, Trigger
from edge.errors import KentonganError
from edge.incidents import INCIDENTS, IncidentType, Priority, SystemEvent
from edge.logs import log_event
from edge.outbox import EventDraft, Outbox, Receipt, StoredEvent

log = logging.getLogger("kentongan.alarm")


@dataclass
class OpenIncident:
    """An incident raised at this post and not yet closed by AMAN."""

    incident_id: str
    type: IncidentType
    opened_mono: float
    event_ids: list[str] = field(default_factory=list)
    acknowledged_by: str | None = None


class AlarmEngine:
    """Turns button signals and commands into siren activations and durable events."""

    def __init__(
        self,
        cfg: NodeConfig,
        siren: SirenPlayer,
        outbox: Outbox,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        on_recorded: Callable[[StoredEvent], None] | None = None,
        request_snapshot: Callable[[StoredEvent], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.siren = siren
        self.outbox = outbox
        self.loop = loop
        self.on_recorded = on_recorded
        self.request_snapshot = request_snapshot
        self._lock = threading.Lock()
        self.open_incidents: dict[IncidentType, OpenIncident] = {}
        self._retry: list[EventDraft] = []

    # -- entry points (any thread) -------------------------------------------------------------

    def on_button(self, sig: ButtonSignal) -> None:
        """Handle a button signal; called on gpiozero/timer threads. Siren first, then the rest."""
        if sig.action is ButtonAction.TRIGGER:
            kind = IncidentType(sig.incident_type)
            trigger = Trigger("button", sig.button, kind.value)
            activation = self._sound(kind, trigger)
            payload: dict[str, Any] = {
                "button": sig.button,
                "held_seconds": round(sig.held_seconds, 3),
                "presses": sig.presses,
            }
            self.raise_incident(kind, trigger, activation, payload)
        elif sig.action is ButtonAction.CHECKIN:
            self.record(EventDraft(IncidentType.PATROLI.value, Priority.P4,
                                   {"button": sig.button, "checkin": True}), snapshot=False)
        elif sig.action in (ButtonAction.TAMPER, ButtonAction.TAMPER_CLEARED):
            cleared = sig.action is ButtonAction.TAMPER_CLEARED
            log_event(log, "button_tamper_cleared" if cleared else "button_tamper",
                      logging.INFO if cleared else logging.WARNING, button=sig.button,
                      held_seconds=round(sig.held_seconds, 3))
            self.record(EventDraft(SystemEvent.TAMPER.value, Priority.P2,
                                   {"button": sig.button, "cleared": cleared,
                                    "open_seconds": round(sig.held_seconds, 3)}), snapshot=not cleared)

    def raise_incident(
        self,
        kind: IncidentType,
        trigger: Trigger,
        activation: Activation | None,
        payload: dict[str, Any] | None = None,
    ) -> str | None:
        """Record an incident event (the siren has already been started by the caller)."""
        body = dict(payload or {})
        body["trigger"] = {"source": trigger.source, "detail": trigger.detail}
        if activation is not None:
            body["siren"] = {"activation_id": activation.activation_id,
                             "pattern": activation.pattern, "suppressed": activation.suppressed}
        if kind is IncidentType.AMAN:
            closed = self._close_all()
            body["closes"] = closed
            incident_id: str | None = closed[0] if closed else None
        elif kind in (IncidentType.PATROLI, IncidentType.TEST):
            incident_id = None
        else:
            incident_id = self._incident_for(kind)
        priority = INCIDENTS[kind].priority
        self.record(EventDraft(kind.value, int(priority), body, incident_id),
                    snapshot=priority <= Priority.P2)
        return incident_id

    def sound(self, kind: IncidentType, trigger: Trigger, priority: int | None = None) -> Activation:
        """Start (or stop, for AMAN) the siren for an incident type. Thread-safe, no I/O."""
        return self._sound(kind, trigger, priority)

    def record(self, draft: EventDraft, *, snapshot: bool = False) -> Receipt[StoredEvent]:
        """Hand an event to the outbox writer (non-blocking); follow-ups run on the loop."""
        fut = self.outbox.submit(draft)
        fut.add_done_callback(lambda f: self._hop(self._after_commit, f, draft, snapshot))
        return fut

    def acknowledge(self, incident_id: str | None, operator: str) -> bool:
        """Central acknowledged an incident: mark it (the caller plays the ack pattern)."""
        with self._lock:
            for inc in self.open_incidents.values():
                if incident_id is None or inc.incident_id == incident_id:
                    inc.acknowledged_by = operator
                    return True
        return False

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                kind.value: {"incident_id": inc.incident_id, "acknowledged_by": inc.acknowledged_by,
                             "events": len(inc.event_ids)}
                for kind, inc in self.open_incidents.items()
            }

    # -- internals ------------------------------------------------------------------------------

    def _sound(self, kind: IncidentType, trigger: Trigger, priority: int | None = None) -> Activation:
        prio = int(priority if priority is not None else INCIDENTS[kind].priority)
        if kind is IncidentType.AMAN:
            self.siren.stop("all_clear", trigger)
        activation = self.siren.play(self.cfg.siren.pattern_for(kind), trigger, priority=prio)
        log_event(log, "siren_activation", trigger_source=trigger.source,
                  trigger_detail=trigger.detail, incident_type=kind.value,
                  activation_id=activation.activation_id, pattern=activation.pattern,
                  suppressed=activation.suppressed, priority=prio)
        return activation

    def _incident_for(self, kind: IncidentType) -> str:
        with self._lock:
            inc = self.open_incidents.get(kind)
            if inc is None:
                inc = OpenIncident(str(uuid7()), kind, time.monotonic())
                self.open_incidents[kind] = inc
            return inc.incident_id

    def _close_all(self) -> list[str]:
        with self._lock:
            closed = [inc.incident_id for inc in self.open_incidents.values()]
            self.open_incidents.clear()
        return closed

    def _hop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
                return
            except RuntimeError:  # loop closed between the check and the call
                pass
        fn(*args)

    def _after_commit(self, fut: Receipt[StoredEvent], draft: EventDraft, snapshot: bool) -> None:
        exc = fut.exception()
        if exc is not None:
            # Never lose an event: keep it in memory and retry until the store takes it.
            log_event(log, "event_record_failed", logging.ERROR, type=draft.type,
                      priority=draft.priority, error=str(exc))
            self._retry.append(draft)
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_later(1.0, self._retry_failed)
            return
        ev = fut.result()
        if ev.incident_id:
            with self._lock:
                for inc in self.open_incidents.values():
                    if inc.incident_id == ev.incident_id:
                        inc.event_ids.append(ev.event_id)
        log_event(log, "event_recorded", event_id=ev.event_id, type=ev.type,
                  priority=ev.priority, incident_id=ev.incident_id, seq=ev.seq)
        if self.on_recorded is not None:
            self.on_recorded(ev)
        if snapshot and self.request_snapshot is not None:
            try:
                self.request_snapshot(ev)
            except KentonganError as err:
                log_event(log, "snapshot_request_failed", logging.WARNING, event_id=ev.event_id,
                          error=str(err))

    def _retry_failed(self) -> None:
        pending, self._retry = self._retry, []
        for draft in pending:
            self.record(draft, snapshot=False)
