"""What the uplink lanes share (``edge.sync.uplink``, ``edge.sync.uplink_snapshot``): the
publisher they write to and their counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


class Sent(Protocol):
    """A QoS 1 publish handed to the client (paho's ``MQTTMessageInfo``)."""

    mid: int  # the MQTT packet id its PUBACK names

    def is_published(self) -> bool:
        """The broker has confirmed it (PUBACK): it has left this post's connection."""
        ...


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      retain: bool = False) -> None: ...

    def publish_nowait(self, topic: str, payload: bytes) -> Sent:
        """QoS 1 publish handed to the client's ordered send queue (no PUBACK wait)."""
        ...

    def on_confirm(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(mid)`` on every PUBACK of this connection (from any thread)."""
        ...


@dataclass
class UplinkStats:
    published: int = 0  # events
    messages: int = 0  # event messages (a batch counts once)
    acked: int = 0
    rejected: int = 0
    rejected_local: int = 0  # events the post could not encode, moved to ``rejected_local``
    requeued: int = 0
    snapshots_published: int = 0
    snapshots_acked: int = 0
    reconnects: int = 0
    ack_timeouts: int = 0  # rounds of ack timeouts (each releases every overdue event)
    central_resends: int = 0  # events resent at once because central came online
    p1_messages: int = 0  # messages published on the P1 channel (their events also go on ``event``)
    last_connect_mono: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
