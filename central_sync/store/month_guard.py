"""Ingest's own creation of a missing ``events`` month partition (PostgreSQL), bounded.

Maintenance creates months ahead (``partitions.ensure_months``), so ingest normally finds its
month in place and this costs one set lookup per commit. When the month is missing (maintenance
not run, the first commit after a month's rollover), ingest creates it itself before inserting,
in its own short transaction, and must never queue behind a long lock holder (a reader holding
the parent ``events`` table, a maintenance detach): creating a partition takes the parent's
exclusive lock, and every insert after it would queue behind the waiting creation.

So the creation waits at most ``lock_timeout_ms`` for its locks (``SET LOCAL lock_timeout``,
which bounds the partition advisory lock and the table locks alike). When it cannot (lock
timeout, or any store error), ingest does not fail: the month is *deferred* for ``retry_s`` and
the rows are inserted anyway, landing in the DEFAULT partition (nothing is lost, no Ack waits).
The next attempt after ``retry_s`` (or maintenance's ``ensure_months``) creates the month and,
in the same transaction, moves the rows of that month out of the DEFAULT partition
(``partitions.ensure_month``), because PostgreSQL refuses a partition whose rows sit there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from central_sync.errors import StoreError
from central_sync.store import partitions
from central_sync.store.postgres_schema import month_start
from central_sync.store.sql import SqlRunner
from edge.logs import log_event

log = logging.getLogger("central.store")

#: How long ingest's partition creation may wait for its locks.
PARTITION_LOCK_TIMEOUT_MS = 2000
#: After a failed creation, the month is not tried again for this long (its rows go to DEFAULT).
PARTITION_RETRY_S = 30.0


class MonthGuard:
    """Months known to exist (created or found) and months deferred after a failed creation."""

    def __init__(self, runner: SqlRunner, *, lock_timeout_ms: int = PARTITION_LOCK_TIMEOUT_MS,
                 retry_s: float = PARTITION_RETRY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._runner = runner
        self.lock_timeout_ms = lock_timeout_ms
        self.retry_s = retry_s
        self._clock = clock
        self._known: set[float] = set()
        self._deferred: dict[float, float] = {}  # month start -> clock time of the next attempt
        self._lock = threading.Lock()
        self.deferrals = 0

    def ensure(self, ts: float) -> bool:
        """Make sure the month holding ``ts`` has its partition; False when that was deferred
        (the caller inserts anyway: the rows land in the DEFAULT partition). Never raises."""
        start = month_start(ts)
        key = start.timestamp()
        now = self._clock()
        with self._lock:
            if key in self._known:
                return True
            if now < self._deferred.get(key, 0.0):
                return False
        try:
            with self._runner.tx() as tx:
                # Before the advisory lock too: a maintenance run holding it must not stall ingest.
                tx.run(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}")
                partitions.ensure_month(tx, start, self.lock_timeout_ms)
        except StoreError as exc:
            with self._lock:
                self._deferred[key] = now + self.retry_s
                self.deferrals += 1
            log_event(log, "partition_deferred", logging.WARNING, month=f"{start:%Y-%m}",
                      retry_s=self.retry_s, error=str(exc)[:200])
            return False
        with self._lock:
            self._known.add(key)
            self._deferred.pop(key, None)
        return True
