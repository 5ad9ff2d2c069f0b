"""Backlog pacing of the event uplink (``edge.sync.uplink.EventUplink``) by the broker's PUBACK.

The in-flight window counts events until central's Ack, which may be minutes away in a fleet
storm; what leaves the post's own connection is paced separately: a backlog message is handed to
the MQTT client only while fewer than ``MAX_UNCONFIRMED`` earlier ones still wait for the
broker's PUBACK. The rest of a claim waits in the post, so a P1 recorded meanwhile is published
behind at most ``MAX_UNCONFIRMED`` backlog messages in this post's TCP stream.

Nothing polls: the session's publisher calls :meth:`Pacer.confirmed` with the message id of every
PUBACK (paho's ``on_publish``, from whatever thread runs paho; it runs before paho marks the
message published, so the id, not ``is_published()``, is what counts), and the pacer drops that
message and sets the lane's wake-up event on the loop thread. A post that waits for its
broker does no work until a PUBACK or a new event arrives (docs/protocol.md, "Pacing", has
the measurement behind ``MAX_UNCONFIRMED``).
"""

from __future__ import annotations

import asyncio
import threading

from edge.sync.uplink_types import Sent

__all__ = ["MAX_UNCONFIRMED", "Pacer"]

#: Backlog messages handed to the client and not yet confirmed by the broker (PUBACK) at most: a
#: new P1 is then queued behind at most this many messages in this post's own connection.
MAX_UNCONFIRMED = 2


class Pacer:
    """The unconfirmed backlog messages of the current connection, and the wake-up on PUBACK.

    ``wake`` is the lane's own event (also set by new events and Acks): whoever waits for room
    waits on it and re-checks :meth:`has_room`.
    """

    def __init__(self, wake: asyncio.Event, limit: int = MAX_UNCONFIRMED) -> None:
        self.limit = limit
        self._wake = wake
        self._unconfirmed: list[Sent] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    def reset(self) -> None:
        """A new connection (call on the loop): the previous one's messages are never confirmed."""
        self._unconfirmed = []
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def sent(self, message: Sent) -> None:
        """A backlog message was handed to the client."""
        self._unconfirmed.append(message)

    def has_room(self) -> bool:
        """Fewer than ``limit`` backlog messages wait for their PUBACK."""
        return len(self._unconfirmed) < self.limit

    @property
    def unconfirmed(self) -> int:
        return len(self._unconfirmed)

    def confirmed(self, mid: int) -> None:
        """The broker confirmed publish ``mid`` (PUBACK; any thread)."""
        if self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._drop(mid)
        else:
            self._loop.call_soon_threadsafe(self._drop, mid)

    def _drop(self, mid: int) -> None:
        for i, s in enumerate(self._unconfirmed):
            if s.mid == mid:
                del self._unconfirmed[i]
                self._wake.set()
                return
