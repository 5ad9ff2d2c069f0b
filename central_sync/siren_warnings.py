"""The queue of RW warnings waiting to be published (``SirenControl``, docs/desk.md "Siren
control"): paced signed batches, one warning per post, none for an incident already closed.

* **One per post.** While a post's warning waits in the queue, a warning to the same post from
  another incident of its RW is not queued again: it is recorded under its own incident's
  activation with status ``merged`` and ``merged_into`` naming the queued command, which now
  serves both incidents. A burst of incidents in one RW is one warning per post.
* **None for a closed incident.** Closing an incident (resolved, false alarm) first takes it
  off its queued warnings: one that serves no other open incident leaves the queue and is
  recorded with status ``cancelled`` (never sent); one that still serves another stays queued.
* A shared warning is stopped when the last incident it serves is closed
  (``SirenControl.stop``: ``merged_into`` names the command the post knows).
* Commands are linked to their activation when queued, so a close that races with a batch
  being published still finds and stops them; ``lag_s`` is how long the last batch waited.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from central_sync.incidents import Incident
from central_sync.store.siren_tables import SirenTables
from edge.sync.wire import Command

ISSUER = "central:routing"


def incident_activation_id(incident_id: str) -> str:
    return f"incident-{incident_id}"


@dataclass
class Pending:
    """A post's queued warning: the command to publish and the open incidents it serves."""

    cmd: Command
    incidents: set[str]
    queued_at: float


class WarningQueue:
    """Thread-safe: incidents are queued from the change-feed thread, published on the loop."""

    def __init__(self, tables: SirenTables, clock: Callable[[], float] = time.monotonic) -> None:
        self.tables = tables
        self._clock = clock
        self._lock = threading.Lock()
        self._queue: OrderedDict[str, Pending] = OrderedDict()  # by post, in queued order
        self.merged = 0
        self.cancelled = 0
        #: Seconds the oldest warning of the last published batch waited in the queue.
        self.lag_s = 0.0
        self.max_lag_s = 0.0

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def add(self, incident: Incident, cmds: list[Command]) -> int:
        """Record ``incident``'s warnings and queue those whose post has none queued yet (the
        others are merged into the queued one); returns how many were queued."""
        act_id = incident_activation_id(incident.incident_id)
        self.tables.add_activation(act_id, kind="incident", scope=f"incident:{incident.incident_id}",
                                   label=f"{incident.type} {incident.node_id}", incident_id=incident.incident_id,
                                   created_by=ISSUER, created_at=time.time())
        now = self._clock()
        with self._lock:  # decided and recorded together: the publisher cannot take one in between
            fresh = [c for c in cmds if c.node_id not in self._queue]
            merged = [c.model_copy(update={"params": {**c.params,
                                                      "merged_into": self._queue[c.node_id].cmd.command_id}})
                      for c in cmds if c.node_id in self._queue]
            self.tables.add_commands(act_id, "start", fresh, issued_by=ISSUER, link_only=True)
            self.tables.record_unsent(act_id, merged, issued_by=ISSUER, status="merged")
            for c in fresh:
                self._queue[c.node_id] = Pending(c, {incident.incident_id}, now)
            for c in merged:
                self._queue[c.node_id].incidents.add(incident.incident_id)
            self.merged += len(merged)
        return len(fresh)

    def take(self, limit: int) -> list[Command]:
        """The next batch to publish, oldest first (out of the queue from now on)."""
        now = self._clock()
        with self._lock:
            batch: list[Command] = []
            while self._queue and len(batch) < limit:
                _node, pending = self._queue.popitem(last=False)
                if not batch:
                    self.lag_s = now - pending.queued_at
                    self.max_lag_s = max(self.max_lag_s, self.lag_s)
                batch.append(pending.cmd)
            return batch

    def cancel(self, incident_id: str) -> int:
        """``incident_id`` was closed: its queued warnings that serve no other open incident
        leave the queue, recorded ``cancelled``; returns how many."""
        with self._lock:
            gone = []
            for node_id, pending in list(self._queue.items()):
                pending.incidents.discard(incident_id)
                if not pending.incidents:
                    gone.append(pending.cmd)
                    del self._queue[node_id]
            self.tables.record_unsent(None, gone, issued_by=ISSUER, status="cancelled")
            self.cancelled += len(gone)
        return len(gone)

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()
