"""SMS fallback for P1 events central has not acknowledged in time, whatever the cause.

Rule: a P1 event unacknowledged for ``cfg.sync.sms_fallback_seconds`` -> one short SMS to every
``cfg.modem.sms_recipients`` number, once per
incident (``incident_id``, else the event id). The cause does not matter: the broker unreachable,
no central online (``edge.sync.presence``) or central connected but its ack overdue; the text
names it (``CAUSE_TEXT``). Every unacked event of that incident is marked
``sms_sent_at`` in the outbox so a restart does not resend, and an ``SMS_SENT`` event (P3) is
recorded. Never for P2-P4; never when central acknowledged in time. A failing modem is logged, a
``MODEM_FAULT`` event is recorded (at most once per ``retry_s``) and the send is retried later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from edge.config import NodeConfig
from edge.logs import log_event
from edge.outbox import EventDraft, Outbox, StoredEvent

__all__ = ["SmsFallback", "sms_text"]

log = logging.getLogger(__name__)

FLAG = "sms_sent_at"
#: Why central may not have the alarm, as the SMS says it (Indonesian, ASCII).
CAUSE_TEXT = {"broker": "server tidak terhubung", "central": "pusat tidak aktif",
              "ack": "belum dikonfirmasi pusat"}


def sms_text(cfg: NodeConfig, ev: StoredEvent, cause: str | None = "broker") -> str:
    """Short ASCII text (< 160 chars): type, post, RT/RW, local time, event id prefix, cause."""
    n = cfg.node
    local = time.strftime("%d/%m %H:%M", time.localtime(ev.wall_time))
    name = n.display_name.encode("ascii", "replace").decode()[:60]
    return (f"KENTONGAN {ev.type} {name} RT{n.rt:02d}/RW{n.rw:02d} {local} "
            f"id {ev.event_id[:8]} ({CAUSE_TEXT.get(cause or 'ack', CAUSE_TEXT['ack'])})")[:160]


class SmsFallback:
    """Periodic check run by the sync service for the life of the node."""

    def __init__(self, cfg: NodeConfig, outbox: Outbox, sender: Callable[[str, str], None] | None,
                 cause: Callable[[], str | None], *, check_s: float | None = None,
                 retry_s: float = 60.0) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.sender = sender
        self.cause = cause
        self.after_s = cfg.sync.sms_fallback_seconds
        self.check_s = check_s if check_s is not None else min(5.0, max(0.2, self.after_s / 4))
        self.retry_s = retry_s
        self.sent_incidents: set[str] = set()
        self._sent_numbers: dict[str, set[str]] = {}
        self._last_fault = -1e18
        self.sent = 0
        self.failures = 0

    @property
    def numbers(self) -> list[str]:
        return [r.number for r in self.cfg.modem.sms_recipients]

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never crash the node over an SMS
                log_event(log, "sms_fallback_error", logging.ERROR, error=repr(exc))

    async def check_once(self) -> int:
        """One pass; returns how many incidents were notified."""
        if self.sender is None or not self.numbers:
            return 0
        due = await asyncio.to_thread(self._due)
        done = 0
        for key, events in due.items():
            if await self._notify(key, events):
                done += 1
        return done

    def _due(self) -> dict[str, list[StoredEvent]]:
        """Unacked P1 events past the deadline, grouped by incident, minus those already sent."""
        groups: dict[str, list[StoredEvent]] = {}
        for ev in self.outbox.oldest_unacked(1, self.after_s):
            if ev.priority != 1:
                continue
            groups.setdefault(ev.incident_id or ev.event_id, []).append(ev)
        out: dict[str, list[StoredEvent]] = {}
        for key, events in groups.items():
            if key in self.sent_incidents:
                continue
            if any(FLAG in self.outbox.flags(e.event_id) for e in events):
                self.sent_incidents.add(key)  # sent before a restart
                continue
            out[key] = events
        return out

    async def _notify(self, key: str, events: list[StoredEvent]) -> bool:
        first = events[0]
        cause = self.cause()
        text = sms_text(self.cfg, first, cause)
        done = self._sent_numbers.setdefault(key, set())
        for number in self.numbers:
            if number in done:
                continue
            try:
                await asyncio.to_thread(self.sender, number, text)  # type: ignore[arg-type]
            except Exception as exc:
                self.failures += 1
                await self._fault(key, number, exc)
                return False
            done.add(number)
        at = time.time()

        def persist() -> None:
            for e in events:
                self.outbox.mark(e.event_id, FLAG, at)
            self.outbox.record(EventDraft("SMS_SENT", 3, {
                "incident": key, "event_id": first.event_id, "event_type": first.type,
                "recipients": len(done)}, incident_id=first.incident_id))

        await asyncio.to_thread(persist)
        self.sent_incidents.add(key)
        self._sent_numbers.pop(key, None)
        self.sent += 1
        log_event(log, "sms_fallback_sent", logging.WARNING, event_id=first.event_id,
                  incident=key, cause=cause, recipients=len(done), event_type=first.type)
        return True

    async def _fault(self, key: str, number: str, exc: BaseException) -> None:
        log_event(log, "sms_send_failed", logging.ERROR, incident=key, error=repr(exc))
        now = time.monotonic()
        if now - self._last_fault < self.retry_s:
            return
        self._last_fault = now
        payload: dict[str, Any] = {"what": "sms_send", "error": repr(exc)[:200],
                                   "incident": key}
        try:
            await asyncio.to_thread(self.outbox.record, EventDraft("MODEM_FAULT", 3, payload))
        except Exception as exc2:
            log_event(log, "modem_fault_record_failed", logging.ERROR, error=repr(exc2))
