"""Per-message handling of ingest (``central_sync.ingest``): decode, authenticate, queue, reject.

``UplinkDispatcher.handle(topic, payload, delivery)`` does no I/O and never raises: events (one
envelope or an ``event_batch``) are queued whole for the next commit batch; every NON-event kind
(presence, heartbeat, snapshot, command result) is first authenticated and then queued
(presence and heartbeat coalesced per node, the newest wins). Anything malformed, unverifiable
or raising is rejected: counted by reason, aggregated per node, charged to the node's rejection
budget and, when permanent and nameable, listed in the node's next Ack.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from central_sync.acks import Delivery
from central_sync.ingest_commit import EventMsg
from central_sync.ingest_decode import decode_events, payload_suspect, unstorable
from central_sync.ingest_queue import IngestQueue
from central_sync.ingest_stats import IngestStats
from central_sync.reject_budget import RejectBudget
from central_sync.rejections import RejectionAggregator
from central_sync.snapshot_policy import check_snapshot_envelope
from edge.errors import SecurityError, WireError
from edge.sync.wire import (
    EVENT_CHANNELS,
    CommandResult,
    Heartbeat,
    Presence,
    SnapshotEnvelope,
    Topics,
)
from edge.sync.wire_decode import decode_on_topic_data

#: Wire reasons after which resending the same bytes can never succeed.
_PERMANENT_WIRE_REASONS = frozenset({"bad_field"})

#: ``authenticate(node_id, data, payload)``: raises ``SecurityError`` to drop a non-event message
#: (``data``: the received JSON object, parsed from ``payload``).
Authenticate = Callable[[str, dict[str, Any], bytes], None]


class UplinkDispatcher:
    """Handles each uplink message into ``queue``; counts and names what it rejects."""

    def __init__(self, topics: Topics, queue: IngestQueue, stats: IngestStats, rejections: RejectionAggregator,
                 budget: RejectBudget, authenticate: Authenticate | None) -> None:
        self.topics = topics
        self.queue = queue
        self.stats = stats
        self.rejections = rejections
        self.budget = budget
        self.authenticate = authenticate
        #: When any uplink message last arrived (the link beat reports it; None: none yet).
        self.last_message_at: float | None = None

    def handle(self, topic: str, payload: bytes, delivery: Delivery | None) -> None:
        """Handle one uplink message without I/O; never raises (bad input is rejected)."""
        self.stats.received += 1
        self.last_message_at = time.time()
        if self.budget.active and self.budget.exhausted(self.topic_node(topic)):
            # This node's rejection budget is spent: counted, settled, never decoded or verified.
            self.reject(topic, "shed", "rejection budget of the node exhausted")
            self.settle_now(delivery)
            return
        try:
            self._dispatch(topic, payload, delivery)
        except WireError as exc:
            self.reject(topic, exc.reason, exc.detail, permanent=exc.reason in _PERMANENT_WIRE_REASONS,
                        payload=payload)
            self.settle_now(delivery)
        except SecurityError as exc:
            self.reject(topic, exc.reason, exc.detail, permanent=True, payload=payload)
            self.settle_now(delivery)
        except Exception as exc:  # one message never stops ingest
            self.reject(topic, "internal", f"{type(exc).__name__}: {exc}", payload=payload)
            self.settle_now(delivery)

    def _dispatch(self, topic: str, payload: bytes, delivery: Delivery | None) -> None:
        direction, node, channel = self.topics.parse(topic)
        if direction != "up":
            raise WireError("wrong_topic", f"not an uplink topic: {topic[:120]}")
        if channel in EVENT_CHANNELS:
            self._handle_events(topic, node, payload, delivery)
            return
        node_id, msg, data = decode_on_topic_data(self.topics, topic, payload)
        problem = unstorable(msg.model_dump(mode="python")) if payload_suspect(payload) else None
        if problem is not None:
            raise WireError(*problem)
        queue = self.queue
        try:
            if self.authenticate is not None:  # unknown_node, revoked, unsigned, bad_signature
                self.authenticate(node_id, data, payload)
            if isinstance(msg, SnapshotEnvelope):
                check_snapshot_envelope(msg)  # images or nothing
        except SecurityError:
            if isinstance(msg, SnapshotEnvelope):
                # Settled for good: acknowledged so the post stops resending it, never stored;
                # the rejection itself is counted and recorded by ``handle``.
                queue.acks_due.snapshot(node_id, msg.snapshot_id)
                queue.wake.set()
            raise
        settle = queue.settle
        if isinstance(msg, SnapshotEnvelope):
            queue.snapshots.append(msg)
        elif isinstance(msg, Presence):
            queue.presences[node_id] = msg
            settle = queue.settle_nodes
        elif isinstance(msg, Heartbeat):
            queue.heartbeats[node_id] = msg
            settle = queue.settle_nodes
        elif isinstance(msg, CommandResult):
            queue.results.append(msg)
        else:  # pragma: no cover - decode_on_topic only yields uplink kinds on uplink topics
            raise WireError("wrong_kind", type(msg).__name__)
        if delivery is not None:
            settle.append(delivery)
        queue.wake.set()

    def _handle_events(self, topic: str, node: str, payload: bytes, delivery: Delivery | None) -> None:
        decoded = decode_events(self.topics, topic, payload, node=node)
        if decoded.is_batch:
            self.stats.event_batches += 1
            self.stats.batched_events += len(decoded.good) + len(decoded.bad)
        for b in decoded.bad:
            self.reject(topic, b.reason, b.detail, permanent=b.permanent, node_id=decoded.node_id,
                        event_id=b.event_id)
        if decoded.good:
            self.queue.add_events(EventMsg(topic, decoded.node_id, decoded.good, delivery, decoded.batch))
        elif delivery is not None:
            self.queue.settle.append(delivery)
        self.queue.wake.set()

    def settle_now(self, delivery: Delivery | None) -> None:
        """PUBACK ``delivery`` now (it needs no commit), counted."""
        if delivery is not None and delivery.puback():
            self.stats.pubacks += 1

    def reject(self, topic: str, reason: str, detail: str, *, permanent: bool = False,
               node_id: str | None = None, event_id: str | None = None, payload: bytes | None = None) -> None:
        """Count and aggregate one rejection; name it in the node's next Ack when permanent."""
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        node_id = node_id or self.topic_node(topic)
        if event_id is None and payload is not None and permanent and node_id:
            event_id = _event_id_of(payload)
        self.rejections.add(node_id, reason, topic, detail)
        if reason not in ("shed", "internal"):  # "internal": not the sender's doing
            self.budget.charge(node_id)
        if permanent and event_id and node_id:
            self.queue.acks_due.reject(node_id, event_id, reason)
            self.queue.wake.set()

    def topic_node(self, topic: str) -> str | None:
        """The node a topic names, when it is a storable node id; else None."""
        try:
            node = self.topics.parse(topic)[1]
        except WireError:
            return None
        return node if unstorable(node) is None and len(node) <= 64 else None


def _event_id_of(payload: bytes) -> str | None:
    """The event id of a rejected single event envelope, when it can be named in an Ack."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("kind") != "event":
        return None
    event_id = data.get("event_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 64 or unstorable(event_id) is not None:
        return None
    return event_id
