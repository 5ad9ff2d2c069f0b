"""Claimed events the post cannot encode: their terminal ``rejected_local`` transition.

The message builder (``edge.sync.uplink_envelope.next_message``) skips a claimed record it cannot
encode (over ``MAX_EVENT_BYTES``, not a valid envelope: a record from before record-time bounding
and sanitising, or a bug) and reports it. The event lane takes it out of its window at once and
hands it here; this module moves it, in one outbox transaction (``Outbox.reject_local``, the
same lock and ``BEGIN IMMEDIATE`` as every other status change of the sync lane), from
``in_flight`` to the terminal ``rejected_local`` status with the reason as its flag, counts it
(``UplinkStats.rejected_local``) and logs it (``event_rejected_local``, ERROR) once: the status
changes once, and only what actually moved is counted and logged.

Two ways in (docs/storage.md, "Oversized events"):

* :meth:`LocalRejects.start`: the P1 lane's (and any unpaced, P1-led message's) records, at once
  and in the background: the lane goes on publishing (the next P1, the backlog) while the write
  waits for the outbox lock, and the siren path never waits on it (``Outbox.submit`` only
  queues);
* :meth:`LocalRejects.note` + :meth:`LocalRejects.flush`: the backlog's, one transaction per claim,
  at the end of the claim (as before).

:meth:`LocalRejects.settle` (before the lane puts everything in flight back to ``ready`` when its
connection is gone) waits for the background writes and rejects what was noted, so no known
unsendable record is released and rebuilt by the next session, and no release races a rejection.
A write that fails (``reject_local_failed``, ERROR) leaves the record ``in_flight`` in the outbox:
that release puts it back to ``ready`` and the next claim finds it again.
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
        self._noted: dict[str, str] = {}  # event id -> reason, rejected by the next flush()
        self._tasks: set[asyncio.Task[None]] = set()

    def note(self, reasons: dict[str, str]) -> None:
        """Reject these with the next :meth:`flush` (the end of the backlog claim)."""
        self._noted.update(reasons)

    def start(self, reasons: dict[str, str]) -> None:
        """Reject these now, in the background: the caller does not wait for the outbox."""
        task = asyncio.ensure_future(self._background(dict(reasons)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Reject what was noted (one transaction)."""
        reasons, self._noted = self._noted, {}
        if reasons:
            await self.reject(reasons)

    async def settle(self) -> None:
        """Every background write has finished and what was noted is rejected."""
        await self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

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

    async def _background(self, reasons: dict[str, str]) -> None:
        try:
            await self.reject(reasons)
        except Exception as exc:  # nobody awaits this task: never lose the error
            log_event(log, "reject_local_failed", logging.ERROR, node_id=self.node_id,
                      count=len(reasons), error=repr(exc))
