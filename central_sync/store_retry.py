"""Store calls from ingest's event loop: the call runs in a worker thread, and what is transient
(SQLite locked or busy, a PostgreSQL connection lost: ``store.is_transient``) is retried with
capped exponential backoff, counted in ``IngestStats.store_retries`` and logged; anything else is
raised to the caller. Shared by the bulk batcher and the P1 lane."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TypeVar

from central_sync.ingest_stats import IngestStats
from central_sync.mqtt_central import Backoff
from central_sync.store import is_transient
from edge.logs import log_event

_A = TypeVar("_A")
_T = TypeVar("_T")


async def call_retrying(fn: Callable[[_A], _T], arg: _A, *, stats: IngestStats, min_s: float, max_s: float,
                        log: logging.Logger, event: str) -> _T:
    """``fn(arg)`` in a thread until it succeeds or fails with a non-transient error."""
    backoff = Backoff(min_s, max_s)
    while True:
        try:
            return await asyncio.to_thread(fn, arg)
        except Exception as exc:
            if not is_transient(exc):
                raise
            stats.store_retries += 1
            delay = backoff.next_delay()
            log_event(log, event, logging.WARNING, error=str(exc)[:200], delay_s=round(delay, 3))
            await asyncio.sleep(delay)
