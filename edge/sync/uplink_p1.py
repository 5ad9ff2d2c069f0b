"""The P1 lane of the event uplink (``edge.sync.uplink.EventUplink``): alarms first.

P1 channel: with ``p1_topic`` set, the P1 events of every claim are published FIRST on
``{prefix}/up/{node}/event/p1`` (central's priority lane: its own connection, queue and commits,
so an alarm is not queued behind other posts' backlogs at the broker or at central) and then,
with the rest of the claim, on the normal ``event`` topic. The second copy is what an older
central (which does not consume the P1 channel) acknowledges; a newer one finds it a duplicate by
``event_id`` and acknowledges it again. One window slot either way.

A P1 record that cannot be encoded is skipped and noted (``edge.sync.uplink_rejects``); the lane
moves it to ``rejected_local`` with the rest of its claim's.
"""

from __future__ import annotations

from edge.outbox import StoredEvent
from edge.sync.uplink_envelope import MessageBuilder
from edge.sync.uplink_rejects import LocalRejects
from edge.sync.uplink_types import Publisher, UplinkStats

__all__ = ["P1Lane"]


class P1Lane:
    """Publishes the P1 events of a claim on the P1 channel."""

    def __init__(self, topic: str | None, build: MessageBuilder, rejects: LocalRejects,
                 stats: UplinkStats) -> None:
        self.topic = topic
        self.build = build
        self.rejects = rejects
        self.stats = stats

    def publish(self, pub: Publisher, events: list[StoredEvent]) -> None:
        """Hand the P1 events of ``events`` to the client on the P1 channel (nothing without a
        P1 topic); those that cannot be encoded are noted for rejection."""
        if self.topic is None:
            return
        urgent = [ev for ev in events if ev.priority == 1]
        bad: dict[str, str] = {}
        start = 0
        while start < len(urgent):
            body, count = self.build.next(urgent, start, bad)
            start += count
            if body is not None:
                pub.publish_nowait(self.topic, body)
                self.stats.p1_messages += 1
        self.rejects.note(bad)
