"""The event uplink's outbox bookkeeping of central's Acks (``edge.sync.uplink.EventUplink``).

The lane frees an acknowledged event's window slot at once (in memory); marking it ``acked`` in
the outbox is a disk write, done here in the background and in batches (one transaction for all
the Acks that arrived meanwhile), retried while the outbox fails. A rejected event is flagged
``rejected`` (diagnostics only) by a task of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from edge.errors import KentonganError
from edge.logs import log_event
from edge.outbox import Outbox
from edge.sync.uplink_types import UplinkStats

__all__ = ["OutboxAcks"]

log = logging.getLogger("edge.sync.uplink")

#: Wait before retrying an outbox ack write that failed.
RETRY_S = 1.0


class OutboxAcks:
    """Acks to commit to the outbox: :meth:`add` from the loop, :meth:`run` commits them."""

    def __init__(self, outbox: Outbox, stats: UplinkStats) -> None:
        self.outbox = outbox
        self.stats = stats
        self._pending: list[str] = []
        self._flush = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, event_ids: list[str]) -> None:
        """Acknowledged (or rejected) events: mark them ``acked`` in the next batch."""
        self._pending.extend(event_ids)
        self._flush.set()

    def reject(self, event_id: str, reason: str) -> None:
        """Flag a rejected event with its reason (in the background)."""
        self._spawn(self._mark_rejected(event_id, reason))

    async def _mark_rejected(self, event_id: str, reason: str) -> None:
        try:
            await asyncio.to_thread(self.outbox.mark, event_id, "rejected", reason)
        except Exception as exc:  # flag is diagnostics only
            log_event(log, "mark_rejected_failed", logging.WARNING, event_id=event_id,
                      error=repr(exc))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel(self) -> None:
        """Cancel the background flag writes (the acks themselves stay pending)."""
        for t in list(self._tasks):
            t.cancel()

    async def run(self) -> None:
        """Commit acks to the outbox in batches (runs for the life of the service)."""
        while True:
            await self._flush.wait()
            self._flush.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                n = await asyncio.to_thread(self.outbox.ack, batch)
                self.stats.acked += n
            except KentonganError as exc:
                log_event(log, "outbox_ack_failed", logging.ERROR, count=len(batch),
                          error=str(exc))
                self._pending.extend(batch)
                await asyncio.sleep(RETRY_S)
                self._flush.set()

    async def flush(self) -> None:
        """Commit any acks still pending (on stop)."""
        batch, self._pending = self._pending, []
        if batch:
            self.stats.acked += await asyncio.to_thread(self.outbox.ack, batch)
