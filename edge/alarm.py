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
from functools import partial
from typing import Any

from uuid6 import uuid7

from edge.config import NodeConfig
from edge.drivers.buttons import ButtonAction, ButtonSignal
from edge.drivers.siren import Activation, SirenPlayer, Trigger
from edge.errors import KentonganError
from edge.incidents import INCIDENTS, IncidentType, Priority, SystemEvent
from edge.logs import RateLimitedLog, log_event
from edge.outbox import EventDraft, Outbox, Receipt, StoredEvent

log = logging.getLogger("kentongan.alarm")

#: Backoff of the ONE retry timer for events the store could not take (disk full).
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
#: Most failed events kept in memory; past it the least urgent (then newest) is given up,
#: loudly. P1/P2 are given up only when everything kept is P1/P2.
RETRY_KEEP = 10_000

#: Called once with the stored event, or with None when the engine gave the event up.
Outcome = Callable[[StoredEvent | None], None]


@dataclass
class _Kept:
    receipt: Receipt[StoredEvent]
    draft: EventDraft
    on_outcome: Outcome | None


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
        self._retry: list[_Kept] = []
        self._retry_timer: asyncio.TimerHandle | threading.Timer | None = None
        self._retry_delay = RETRY_FIRST_S
        self.given_up = 0
        self.rlog = RateLimitedLog(log, interval_s=10.0)

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

    def record(self, draft: EventDraft, *, snapshot: bool = False,
               on_outcome: Outcome | None = None) -> Receipt[StoredEvent]:
        """Hand an event to the outbox writer (non-blocking); follow-ups run on the loop.

        An event the store cannot take (disk full beyond the reserve) is kept in memory and
        retried by one timer with backoff until it is stored; ``on_outcome(event)`` runs once
        it is (``on_outcome(None)`` if it had to be given up, see ``RETRY_KEEP``). The
        returned receipt is the first attempt's."""
        return self._submit(self.outbox.submit(draft), draft, snapshot, on_outcome)

    def _submit(self, fut: Receipt[StoredEvent], draft: EventDraft, snapshot: bool,
                on_outcome: Outcome | None) -> Receipt[StoredEvent]:
        fut.add_done_callback(
            lambda f: self._hop(self._after_commit, f, draft, snapshot, on_outcome))
        return fut

    def pending_retries(self) -> int:
        """Events kept in memory because the store could not take them yet."""
        with self._lock:
            return len(self._retry)

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

    def _after_commit(self, fut: Receipt[StoredEvent], draft: EventDraft, snapshot: bool,
                      on_outcome: Outcome | None = None) -> None:
        exc = fut.exception()
        if exc is not None:
            self._keep(_Kept(fut, draft, on_outcome), exc)
            return
        ev = fut.result()
        if on_outcome is not None:
            on_outcome(ev)
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

    def _keep(self, kept: _Kept, exc: BaseException) -> None:
        """Never lose an event: keep it and make sure the one retry timer is armed."""
        dropped: _Kept | None = None
        with self._lock:
            self._retry.append(kept)
            if len(self._retry) > RETRY_KEEP:
                # least urgent first (highest priority number), newest among those
                worst = max(range(len(self._retry)),
                            key=lambda i: (self._retry[i].draft.priority, i))
                dropped = self._retry.pop(worst)
                self.given_up += 1
            n = len(self._retry)
        self.rlog.log("event_record_failed", logging.ERROR, type=kept.draft.type,
                      priority=kept.draft.priority, error=str(exc), kept=n)
        if dropped is not None:
            self.rlog.log("event_given_up", logging.CRITICAL, type=dropped.draft.type,
                          priority=dropped.draft.priority, kept=n, given_up=self.given_up)
            if dropped.on_outcome is not None:
                dropped.on_outcome(None)
        self._arm_retry()

    def _arm_retry(self) -> None:
        with self._lock:
            if self._retry_timer is not None or not self._retry:
                return
            delay = self._retry_delay
            self._retry_delay = min(RETRY_MAX_S, delay * 2)
            loop = self.loop
            if loop is not None and not loop.is_closed():  # we run on the loop (see _hop)
                self._retry_timer = loop.call_later(delay, self._retry_failed)
                return
            timer = threading.Timer(delay, self._retry_failed)
            timer.daemon = True
            self._retry_timer = timer
        timer.start()

    def _retry_failed(self) -> None:
        """The retry timer fired: resubmit everything kept, with its original clock readings,
        in one go. The backoff resets once an event is stored again."""
        with self._lock:
            self._retry_timer = None
            pending, self._retry = self._retry, []
        for k in pending:
            self.outbox.resubmit(k.receipt).add_done_callback(partial(self._hop_retry, k))

    def flush_retries(self) -> int:
        """Resubmit every kept event now (at shutdown, before the outbox closes and commits
        what is queued); returns how many."""
        with self._lock:
            timer, self._retry_timer = self._retry_timer, None
            pending, self._retry = self._retry, []
        if timer is not None:
            timer.cancel()
        for k in pending:
            self.outbox.resubmit(k.receipt)
        return len(pending)

    def _hop_retry(self, kept: _Kept, fut: Receipt[StoredEvent]) -> None:
        self._hop(self._after_retry, fut, kept)

    def _after_retry(self, fut: Receipt[StoredEvent], kept: _Kept) -> None:
        if fut.exception() is not None:
            self._keep(_Kept(fut, kept.draft, kept.on_outcome), fut.exception() or Exception())
            return
        with self._lock:
            self._retry_delay = RETRY_FIRST_S
        self._after_commit(fut, kept.draft, False, kept.on_outcome)
