"""Claimed events the post cannot encode: their terminal ``rejected_local`` transition.

The message builder (``edge.sync.uplink_envelope.next_message``) skips a claimed record it cannot
encode (over ``MAX_EVENT_BYTES``, not a valid envelope: a record from before record-time bounding,
or a bug) and reports it; the event lane notes it here. At the end of the claim the lane takes
what was noted out of its window and this module moves it, in one outbox transaction
(``Outbox.reject_local``), from ``in_flight`` to the terminal ``rejected_local`` status with the
reason as its flag, counts it (``UplinkStats.rejected_local``) and logs it
(``event_rejected_local``, ERROR) once: the status changes once, and only what actually moved is
counted and logged. A write that fails (``reject_local_failed``, ERROR) leaves the record
``in_flight``: the next release puts it back to ``ready`` and the next claim finds it again.
"""

from __future__ import annotations

import asyncio
import logging

from edge.errors import KentonganError
from edge.logs import log_event
from edge.outbox import Outbox
from edge.sync.uplink_types import UplinkStats

__all__ = ["LocalRejects"]

log = logging.getLogger("edge.sync.uplink")


class LocalRejects:
    """The ``rejected_local`` writes of one event lane (loop thread; the writes run in a worker)."""

    def __init__(self, outbox: Outbox, stats: UplinkStats, node_id: str) -> None:
        self.outbox = outbox
        self.stats = stats
        self.node_id = node_id
        self._noted: dict[str, str] = {}  # event id -> reason, not yet rejected

    def note(self, reasons: dict[str, str]) -> None:
        """Records the builder could not encode (rejected after :meth:`take`)."""
        self._noted.update(reasons)

    def take(self) -> dict[str, str]:
        """What was noted since the last call."""
        reasons, self._noted = self._noted, {}
        return reasons

    async def reject(self, reasons: dict[str, str]) -> None:
        """Move these in_flight events to ``rejected_local``; count and log those moved."""
        try:
            moved = await asyncio.to_thread(self.outbox.reject_local, reasons)
        except KentonganError as exc:  # still in_flight: found again after the next release
            log_event(log, "reject_local_failed", logging.ERROR, node_id=self.node_id,
                      count=len(reasons), error=str(exc))
            return
        self.stats.rejected_local += len(moved)
        for event_id in moved:
            log_event(log, "event_rejected_local", logging.ERROR, node_id=self.node_id,
                      event_id=event_id, reason=reasons[event_id],
                      rejected_local_total=self.stats.rejected_local)
