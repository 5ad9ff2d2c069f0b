"""The P1 lane of the event uplink (``edge.sync.uplink.EventUplink``): alarms first.

P1 channel: with ``p1_topic`` set, the P1 events of every claim are published FIRST on
``{prefix}/up/{node}/event/p1`` (central's priority lane: its own connection, queue and commits,
so an alarm is not queued behind other posts' backlogs at the broker or at central) and then,
with the rest of the claim, on the normal ``event`` topic. The second copy is what an older
central (which does not consume the P1 channel) acknowledges; a newer one finds it a duplicate by
``event_id`` and acknowledges it again. One window slot either way.

A P1 record that cannot be encoded (an old database's oversized or invalid record) is rejected
here at once: it leaves the window and its terminal ``rejected_local`` write starts in the
background (``edge.sync.uplink_rejects``), so it neither waits for the rest of the claim (a
backlog paced by the broker's PUBACKs may take minutes) nor holds up the next P1. It still counts
as unacknowledged for the SMS fallback (``edge.sync.sms_fallback``).
"""

from __future__ import annotations

from edge.outbox import StoredEvent
from edge.sync.uplink_envelope import MessageBuilder
from edge.sync.uplink_rejects import LocalRejects
from edge.sync.uplink_types import Publisher, UplinkStats

__all__ = ["P1Lane"]


class P1Lane:
    """Publishes the P1 events of a claim on the P1 channel; rejects the unencodable ones at once."""

    def __init__(self, topic: str | None, build: MessageBuilder, rejects: LocalRejects,
                 stats: UplinkStats) -> None:
        self.topic = topic
        self.build = build
        self.rejects = rejects
        self.stats = stats

    def publish(self, pub: Publisher, events: list[StoredEvent]) -> dict[str, str]:
        """Hand the P1 events of ``events`` to the client on the P1 channel (nothing without a
        P1 topic). Returns the P1 events that cannot be encoded (event id -> reason): their
        ``rejected_local`` write has started; the caller takes them out of its window and its
        claim."""
        if self.topic is None:
            return {}
        urgent = [ev for ev in events if ev.priority == 1]
        bad: dict[str, str] = {}
        start = 0
        while start < len(urgent):
            body, count = self.build.next(urgent, start, bad)
            start += count
            if body is not None:
                pub.publish_nowait(self.topic, body)
                self.stats.p1_messages += 1
        if bad:
            self.rejects.start(bad)
        return bad

