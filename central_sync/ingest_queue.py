"""What ingest has received and not yet committed (``central_sync.ingest``).

``IngestQueue`` holds the decoded events (whole messages, in arrival order), the coalesced node
updates (the newest presence and heartbeat per node), snapshots and command results, the
deliveries to PUBACK after the next commit and the Ack entries named before it. It also owns
the signals between the receiving side and the batcher: ``wake`` (work is queued),
``batch_full`` (``batch_max`` events wait, or, while the batcher lingers, ``linger_events`` or a
P1 event: commit now) and ``room`` (cleared past ``max_pending_events``: the read gates stop
reading the broker sockets until a commit takes events). No I/O here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from central_sync.acks import AckBook, Delivery
from central_sync.config import IngestConfig
from central_sync.ingest_commit import Batch, EventMsg
from central_sync.ingest_stats import IngestStats
from central_sync.read_gate import ReadGate
from edge.sync.wire import P1_CHANNEL, CommandResult, Heartbeat, Presence, SnapshotEnvelope

#: The end of a P1 channel topic (``{prefix}/up/<node>/event/p1``).
_P1_SUFFIX = "/" + P1_CHANNEL


class IngestQueue:
    """The uncommitted work of one ``IngestService`` and its wake-up/backpressure signals."""

    def __init__(self, settings: IngestConfig) -> None:
        self.settings = settings  # ``batch_max``, ``max_pending_events``
        self.events: deque[EventMsg] = deque()
        self.pending_events = 0
        #: ``time.monotonic()`` when the oldest queued event arrived (meaningful while ``events``).
        self.oldest_at = 0.0
        #: Whether a queued event is a P1 (priority 1 or the P1 channel): never held by a linger.
        self.urgent = False
        #: ``batch_full`` is set once this many events wait: ``batch_max``, or ``linger_events``
        #: while the batcher lingers (``central_sync.ingest_batcher``).
        self.full_at = settings.batch_max
        #: The batcher holds a small batch (``Committer.linger``): a P1 event ends that at once.
        self.lingering = False
        self.presences: dict[str, Presence] = {}
        self.heartbeats: dict[str, Heartbeat] = {}
        self.snapshots: list[SnapshotEnvelope] = []
        self.results: list[CommandResult] = []
        self.settle: list[Delivery] = []  # PUBACK after the next commit
        self.settle_nodes: list[Delivery] = []  # PUBACK once the node updates are written
        self.acks_due = AckBook()  # rejections named before the next commit
        self.wake = asyncio.Event()
        self.batch_full = asyncio.Event()  # set once ``full_at`` events wait: commit now
        self.room = asyncio.Event()
        self.room.set()
        #: The read gates of the live broker connections (poked when room returns).
        self.gates: set[ReadGate] = set()

    def add_events(self, msg: EventMsg) -> None:
        """Queue one message's good envelopes whole for the next commit batch."""
        if not self.events:
            self.oldest_at = time.monotonic()
        self.events.append(msg)
        self.pending_events += len(msg.envs)
        if _urgent(msg):
            self.urgent = True
            if self.lingering:  # (``batch_wait_ms`` itself is waited for P1s as it always was)
                self.batch_full.set()
        if self.pending_events >= self.full_at:
            self.batch_full.set()
        if self.pending_events >= self.settings.max_pending_events:
            self.room.clear()

    def has_work(self, nodes: bool = True) -> bool:
        """Whether anything waits for a commit (``nodes=False``: leaving node updates aside)."""
        return bool(self.events or self.snapshots or self.results or self.settle or self.acks_due
                    or (nodes and self.has_node_updates()))

    def has_node_updates(self) -> bool:
        return bool(self.presences or self.heartbeats or self.settle_nodes)

    def take(self, stats: IngestStats, nodes: bool = True) -> tuple[Batch, list[Delivery], AckBook]:
        """The next commit batch (up to ``batch_max`` events, whole messages), the deliveries it
        settles and the Ack entries due; reopens the read gates once there is room again. With
        ``nodes=False`` the coalesced presence/heartbeat updates (and the PUBACKs of their
        deliveries) stay queued for a later batch; ``wake`` then stays set only for other work."""
        events: list[EventMsg] = []
        n = 0
        while self.events and (not events or n + len(self.events[0].envs) <= self.settings.batch_max):
            msg = self.events.popleft()
            events.append(msg)
            n += len(msg.envs)
        self.pending_events -= n
        if self.urgent:
            self.urgent = any(_urgent(m) for m in self.events)
        if self.pending_events < self.settings.max_pending_events:
            self.room.set()
            for gate in self.gates:
                gate.poke()
        if self.gates:
            stats.read_pauses_live = sum(gate.pauses for gate in self.gates)
        settle = self.settle + [m.delivery for m in events if m.delivery is not None]
        if nodes:
            batch = Batch(events, list(self.presences.values()), list(self.heartbeats.values()), self.snapshots,
                          self.results)
            settle += self.settle_nodes
            self.presences, self.heartbeats, self.settle_nodes = {}, {}, []
        else:
            batch = Batch(events, [], [], self.snapshots, self.results)
        acks = self.acks_due
        self.snapshots, self.results = [], []
        self.settle, self.acks_due = [], AckBook()
        if not self.has_work(nodes):
            self.wake.clear()
        return batch, settle, acks


def _urgent(msg: EventMsg) -> bool:
    """A P1 message (on the P1 channel, or holding a priority 1 envelope): never lingered on."""
    return msg.topic.endswith(_P1_SUFFIX) or any(g.env.priority == 1 for g in msg.envs)
