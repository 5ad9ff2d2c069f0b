"""Counters of one ingest process (``IngestService.stats``; shown by the bench and the status)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class IngestStats:
    """Counters of one ``IngestService`` (read from any thread; written on its loop)."""

    received: int = 0  # messages
    event_batches: int = 0  # well-formed event_batch messages among them
    batched_events: int = 0  # envelopes inside those (each is inserted, a duplicate or rejected)
    inserted: int = 0
    duplicates: int = 0
    acked: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    lingers: int = 0  # times the batcher held a small batch for more events (ingest.linger_ms)
    linger_expired: int = 0  # of those, the ones committed because the oldest event had waited linger_ms
    snapshots: int = 0
    updates: int = 0
    acks_published: int = 0
    acks_unsent: int = 0
    acks_qos0: int = 0  # Acks sent at QoS 0 because too many QoS 1 Acks were unconfirmed
    store_retries: int = 0
    dropped_qos0: int = 0  # QoS 0 messages (heartbeats) dropped while the buffer was full
    pubacks: int = 0
    read_pauses: int = 0  # times a closed connection's socket was not read because ingest was full
    read_pauses_live: int = 0  # the same for the current connection
    buffer_peak: int = 0  # most received messages ever waiting to be decoded
    floods: int = 0  # intervals in which one node sent flood_threshold or more rejected messages
    flooding: dict[str, float] = field(default_factory=dict)  # node -> last flagged (epoch s)
    place_mismatches: int = 0  # presences whose place disagreed with the registry (never applied)
    p1_received: int = 0  # messages on the P1 lane (central_sync.ingest_p1); also in ``received``
    p1_batches: int = 0  # commits of the P1 lane (also in ``batches``)
    p1_committed: int = 0  # envelopes the P1 lane stored or found duplicate (also in inserted/duplicates)
    stale_deliveries: int = 0  # deliveries caused by a stale subscription of a resumed session (mqtt_session)
    session_resets: int = 0  # connections reset (clean start) for such a stale session

    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def outcomes_expected(self) -> int:
        """How many outcomes (inserted + duplicates + rejected + snapshots + updates) the received
        messages account for once flushed: one per message, one per envelope of a batch."""
        return self.received - self.event_batches + self.batched_events

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()}
