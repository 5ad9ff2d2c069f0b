"""A disk quota or free-space limit that eviction cannot meet, reported as a condition: once
when it starts, reminded rarely, once when it ends, and counted (``Outbox.storage_health``), never
a line per pass (``eviction.Evictor.enforce_quota`` runs about once a second).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edge.logs import log_event

__all__ = ["QuotaShort"]

log = logging.getLogger("edge.outbox")

#: A limit that cannot be met is logged when it starts, then reminded at most this often.
_SHORT_REMIND_S = 600.0


class QuotaShort:
    """A quota or free-space limit eviction cannot meet (nothing left that may be evicted, or a
    disk too full to commit even the smallest eviction). Logged once when it starts
    (``storage_quota_exceeded``), reminded at most every ``_SHORT_REMIND_S`` with the passes
    since, and once when it ends (``storage_quota_recovered``); ``passes`` counts every pass
    that ended short (``storage_health``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # passes may run on the writer and the agent's thread
        self.since: float | None = None
        self.passes = 0
        self._in_episode = 0
        self._logged = 0.0

    def short(self, need: int, *, evicted: int, full: bool) -> None:
        now = self._clock()
        with self._lock:
            self.passes += 1
            self._in_episode += 1
            if self.since is None:
                self.since = now
            elif now - self._logged < _SHORT_REMIND_S:
                return
            self._logged = now
            passes, since = self._in_episode, self.since
        log_event(log, "storage_quota_exceeded", logging.ERROR, short_bytes=need,
                  evicted_steps=evicted, disk_full=full, passes=passes,
                  since_s=round(now - since, 1))

    def ok(self) -> None:
        if self.since is None:
            return
        with self._lock:
            if self.since is None:
                return
            passes, since = self._in_episode, self.since
            self.since = None
            self._in_episode = 0
        log_event(log, "storage_quota_recovered", logging.INFO, passes=passes,
                  duration_s=round(self._clock() - since, 1))
