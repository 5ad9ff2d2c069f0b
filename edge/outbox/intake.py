"""Record-time payload checks of the writer thread: a payload central would refuse is made
acceptable (``sanitise.py``) and an oversized one bounded to the wire limit (``bounds.py``);
each is counted (``Outbox.counts()``, the heartbeat) and logged, rate-limited.

Only the rare payloads reach this module: the writer's hot path (``Writer.insert``) encodes once
and calls in here when ``sanitise.suspect`` flags the JSON text or it exceeds
``PAYLOAD_BUDGET``. The counters are advanced inside the writer's transaction, so the writer
saves and restores them with its own (``Writer.saved()``/``restore()``).
"""

from __future__ import annotations

import logging
from typing import Any

from edge.logs import RateLimitedLog
from edge.outbox.bounds import bound_payload
from edge.outbox.records import EventDraft
from edge.outbox.sanitise import make_acceptable

__all__ = ["PayloadChecks"]


class PayloadChecks:
    """The counters and log lines of the record-time payload checks."""

    def __init__(self, node_id: str, rlog: RateLimitedLog) -> None:
        self.node_id = node_id
        self.rlog = rlog
        #: Events whose payload was cut to fit the wire limit at record time (``bounds.py``).
        self.truncated = 0
        #: Events whose lone UTF-16 surrogates or NULs were replaced with U+FFFD, and events
        #: whose values central refuses were replaced (``sanitise.py``).
        self.text_replaced = 0
        self.values_replaced = 0

    def acceptable(self, draft: EventDraft, event_id: str, payload: dict[str, Any],
                   text: str | None) -> tuple[dict[str, Any], str]:
        """``payload`` with what central refuses replaced (``sanitise.make_acceptable``), then
        bounded to the wire limit; counted and logged (rate-limited)."""
        done = make_acceptable(payload, text)
        if done.text_replaced:
            self.text_replaced += 1
        if done.values_replaced:
            self.values_replaced += 1
        if done.text_replaced or done.values_replaced or done.cut:
            self.rlog.log("event_payload_sanitised", logging.WARNING, node_id=self.node_id,
                          event_id=event_id, type=draft.type, priority=draft.priority,
                          text_replaced=done.text_replaced, values_replaced=done.values_replaced,
                          cut=done.cut, text_replaced_total=self.text_replaced,
                          values_replaced_total=self.values_replaced)
        return self.bound(draft, event_id, done.payload, done.text, cut=bool(done.cut))

    def bound(self, draft: EventDraft, event_id: str, payload: dict[str, Any],
              text: str, cut: bool = False) -> tuple[dict[str, Any], str]:
        """``payload`` bounded to the wire limit (``bounds.bound_payload``), counted (once with a
        nesting ``cut`` already made) and logged (rate-limited: a flood of oversized input must
        not flood the log)."""
        bounded, text2, how = bound_payload(payload, text)
        if cut or how is not None:
            self.truncated += 1
        if how is not None:
            self.rlog.log("event_payload_truncated", logging.WARNING, node_id=self.node_id,
                          event_id=event_id, type=draft.type, priority=draft.priority, how=how,
                          original_bytes=bounded.get("original_bytes"), stored_bytes=len(text2),
                          truncated_total=self.truncated)
        return bounded, text2
