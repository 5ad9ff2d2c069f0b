"""Escalation of an unacknowledged P1 to a supervisor (docs/desk.md "Escalation").

An incident of priority 1 still ``new`` ``after_s`` seconds after it opened is **claimed** in one
incident transaction: the transaction re-reads its state and its log and writes the
``escalated`` step; incident transactions are serialised across processes, so with any number of
web processes exactly one claims it. The claimer then delivers the message through each
configured notifier (an HTTP webhook POST with JSON, an SMS gateway command) with capped,
jittered exponential retries, and records the outcome in the incident's timeline
(``escalation_delivered`` or ``escalation_failed``).

The claim is a **lease**: a process that dies between the claim and the outcome (a crash, a
restart mid-delivery) leaves a claim without an outcome on the timeline; once it is older than
``lease_s`` (longer than a live claimer can take) a live process claims it again (a new
``escalated`` step) and sends, at most ``max_claims`` times per incident. So the supervisor is told
at least once; a second message only when the first claimer died after sending and before
recording it.

Retries use the project's ``Backoff`` (the same one ingest reconnects with) rather than a retry
library: a loop of a few lines, and no new runtime dependency on central.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from central_sync.errors import CentralError
from central_sync.incidents import Incident, IncidentBook
from central_sync.mqtt_central import Backoff
from central_sync.store.desk_tables import DeskTables
from central_sync.store.supervision_tables import ESCALATED_STEP, SupervisionTables
from central_sync.supervision_settings import SMS_TIMEOUT_S, EscalationSettings
from edge.logs import log_event

log = logging.getLogger("central.escalation")
ACTOR = "central:escalation"


class NotifyError(CentralError):
    """One delivery attempt failed (retried until the attempts run out)."""


@dataclass(frozen=True)
class Escalation:
    """What the supervisor is told."""

    incident_id: str
    node_id: str
    type: str
    priority: int
    opened_at: float
    unacknowledged_s: float
    post_name: str

    def text(self) -> str:
        return (f"KENTONGAN: P{self.priority} {self.type} at post {self.post_name} ({self.node_id}) "
                f"not acknowledged for {self.unacknowledged_s / 60:.0f} min. Incident {self.incident_id}")

    def as_json(self) -> dict[str, Any]:
        return {"kind": "escalation", "incident_id": self.incident_id, "node_id": self.node_id,
                "post_name": self.post_name, "type": self.type, "priority": self.priority,
                "opened_at": self.opened_at, "unacknowledged_s": round(self.unacknowledged_s, 1),
                "text": self.text()}


class Notifier(Protocol):
    name: str

    async def notify(self, message: Escalation) -> None:
        """Deliver once; raise ``NotifyError`` on failure."""
        ...


class WebhookNotifier:
    """POST the escalation as JSON; any 2xx is delivered."""

    name = "webhook"

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url, self.timeout_s = url, timeout_s

    def _post(self, body: bytes) -> int:
        req = urllib.request.Request(self.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise NotifyError(f"webhook unreachable: {exc}") from None

    async def notify(self, message: Escalation) -> None:
        body = json.dumps(message.as_json()).encode()
        status = await asyncio.to_thread(self._post, body)
        if not 200 <= status < 300:
            raise NotifyError(f"webhook answered HTTP {status}")


class CommandNotifier:
    """Run an SMS gateway command (argv) with the message on stdin; exit status 0 is delivered."""

    name = "sms_command"

    def __init__(self, argv: Sequence[str], timeout_s: float = SMS_TIMEOUT_S) -> None:
        self.argv, self.timeout_s = list(argv), timeout_s

    async def notify(self, message: Escalation) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise NotifyError(f"cannot run {self.argv[0]}: {exc}") from None
        try:
            _, err = await asyncio.wait_for(proc.communicate(message.text().encode()), self.timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise NotifyError(f"{self.argv[0]} timed out") from None
        if proc.returncode != 0:
            raise NotifyError(f"{self.argv[0]} exited {proc.returncode}: {err.decode(errors='replace')[:200]}")


def notifiers_from(settings: EscalationSettings) -> list[Notifier]:
    out: list[Notifier] = []
    if settings.webhook_url:
        out.append(WebhookNotifier(settings.webhook_url, settings.webhook_timeout_s))
    if settings.sms_command:
        out.append(CommandNotifier(settings.sms_command))
    return out


async def deliver(notifier: Notifier, message: Escalation, settings: EscalationSettings) -> tuple[bool, int, str]:
    """Try up to ``attempts`` times with backoff: (delivered, attempts used, last error)."""
    backoff = Backoff(settings.retry_min_s, settings.retry_max_s)
    error = ""
    for attempt in range(1, settings.attempts + 1):
        try:
            await notifier.notify(message)
            return True, attempt, ""
        except NotifyError as exc:
            error = str(exc)[:300]
            log_event(log, "escalation_attempt_failed", logging.WARNING, incident_id=message.incident_id,
                      notifier=notifier.name, attempt=attempt, error=error)
        if attempt < settings.attempts:
            await asyncio.sleep(backoff.next_delay())
    return False, settings.attempts, error


class Escalator:
    """Claims due P1s (exactly once across processes) and delivers them."""

    def __init__(self, tables: DeskTables, book: IncidentBook, settings: EscalationSettings,
                 notifiers: Sequence[Notifier] | None = None) -> None:
        self.tables = tables
        self.book = book
        self.settings = settings
        self.notifiers = list(notifiers) if notifiers is not None else notifiers_from(settings)
        self.sup = SupervisionTables(tables)

    @property
    def enabled(self) -> bool:
        return bool(self.notifiers)

    def claim_due(self, now: float | None = None) -> list[Incident]:
        """Write the ``escalated`` step on every due P1 no process has claimed; return those."""
        if not self.enabled:
            return []
        t = time.time() if now is None else now
        claimed: list[Incident] = []
        names = ", ".join(n.name for n in self.notifiers)
        lease_cut, max_claims = t - self.settings.lease_s, self.settings.max_claims
        for incident_id in self.sup.escalation_due(t - self.settings.after_s, t - self.settings.max_age_s,
                                                   lease_cut, max_claims):
            with self.tables.incident_tx() as tx:
                if tx.state_of(incident_id) != "new" or self.sup.escalation_held(tx, incident_id, lease_cut,
                                                                                 max_claims):
                    continue
                again = self.sup.escalation_claims(tx, incident_id)
                note = (f"not acknowledged after {self.settings.after_s:.0f} s; notifying the supervisor ({names})"
                        if not again else f"claim {again + 1}: the previous claim recorded no outcome within "
                        f"{self.settings.lease_s:.0f} s; notifying the supervisor ({names})")
                tx.log_step(incident_id, t, ESCALATED_STEP, ACTOR, note)
                tx.mark_changed(incident_id)
            incident = self.book.get(incident_id)
            if incident is not None:
                claimed.append(incident)
                log_event(log, "incident_escalated", logging.WARNING, incident_id=incident_id,
                          node_id=incident.node_id, type=incident.type, claim=again + 1)
        return claimed

    async def deliver_all(self, incident: Incident, post_name: str) -> bool:
        """Deliver one claimed escalation through every notifier; record each outcome."""
        message = Escalation(incident.incident_id, incident.node_id, incident.type, incident.priority,
                             incident.opened_at, time.time() - incident.opened_at, post_name)
        delivered_any = False
        for notifier in self.notifiers:
            ok, attempts, error = await deliver(notifier, message, self.settings)
            delivered_any = delivered_any or ok
            step = "escalation_delivered" if ok else "escalation_failed"
            note = (f"{notifier.name}: delivered (attempt {attempts})" if ok
                    else f"{notifier.name}: failed after {attempts} attempts: {error}")
            await asyncio.to_thread(self._log, incident.incident_id, step, note)
            log_event(log, step, logging.INFO if ok else logging.ERROR, incident_id=incident.incident_id,
                      notifier=notifier.name, attempts=attempts)
        return delivered_any

    def _log(self, incident_id: str, step: str, note: str) -> None:
        with self.tables.incident_tx() as tx:
            tx.log_step(incident_id, time.time(), step, ACTOR, note[:1000])
            tx.mark_changed(incident_id)
