"""Live updates: a hub that fans incident changes out to server-sent-event subscribers and keeps
a bounded replay ring so a browser that reconnects gets what it missed.

Every change gets a stream id (``seq``) that only ever increases. The web app runs the hub on
the store's durable incident change numbers (``start=``, then ``publish(incident_id, seq=...)``
with ``DeskTables.incident_changes``): the same change has the same id in every web process and
after a restart, so a browser moving to another process, or back after a restart, gets what it
missed from the store (``subscribe(..., backlog=...)``) instead of a resync. Without ``start``
(a hub on its own) ids are microseconds of the wall clock, bumped by one when two changes fall
in the same microsecond, so a restarted hub starts above every earlier id.

A subscriber names the last id it saw (``Last-Event-ID``). When that id lies inside the ring the
hub replays the changes after it; when it is older than the ring the caller may pass what the
store knows (a durable hub); otherwise, or when even that is too much or the id is not one of
ours, the subscriber is told to resync: re-read the queue.

``publish`` may be called from any thread (the change-feed follower); each subscriber has its own
bounded queue on the web app's event loop, and a slow browser only loses its own updates (it is
then told to resync).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LiveChange:
    """Incident ``incident_id`` changed; ``seq`` is its stream id."""

    seq: int
    incident_id: str


@dataclass(eq=False)
class Subscription:
    """One browser's stream: what to replay first (``None``: resync) and then live changes."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[LiveChange]
    replay: list[LiveChange] | None
    head: int
    lost: bool = field(default=False)
    #: The hub closed (the server is shutting down): the stream should end now.
    closed: bool = field(default=False)

    async def next(self, timeout: float) -> LiveChange | None:
        """The next change, or ``None`` after ``timeout`` seconds without one or once closed."""
        try:
            change = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return None
        return None if self.closed else change

    def take_lost(self) -> bool:
        """True once after this subscriber's queue overflowed (it must resync)."""
        lost, self.lost = self.lost, False
        return lost


def parse_event_id(value: str | None) -> int | None:
    """A ``Last-Event-ID`` as the hub's integer id; ``None`` when absent or not ours."""
    if not value:
        return None
    value = value.strip()
    if not value.isdigit() or len(value) > 20:
        return None
    return int(value)


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the store says changed after a subscriber's id, up to ``top`` (latest per incident)."""

    changes: list[LiveChange]
    top: int


class LiveHub:
    def __init__(self, max_queue: int = 256, replay: int = 1024,
                 clock: Callable[[], float] = time.time, start: int | None = None) -> None:
        self._subs: set[Subscription] = set()
        self._lock = threading.Lock()
        self._clock = clock
        self.max_queue = max_queue
        self._ring: deque[LiveChange] = deque(maxlen=replay)
        #: Ids are the store's durable change numbers (every publish names its ``seq``).
        self.durable = start is not None
        self._seq = start if start is not None else self._now_us()
        #: Changes with an id up to this one can no longer be replayed.
        self._floor = self._seq
        self.published = 0
        self._closed = False

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    @property
    def head(self) -> int:
        """The id of the latest change (or of the hub's start when there was none)."""
        with self._lock:
            return self._seq

    def publish(self, incident_id: str, seq: int | None = None) -> int:
        """Record that ``incident_id`` changed and tell every subscriber; returns the id."""
        with self._lock:
            if self.durable:
                if seq is None:
                    raise ValueError("a durable hub publishes the store's change number")
                if seq <= self._seq:            # already published (or older): nothing new
                    return seq
            wanted = self._now_us() if seq is None else seq
            self._seq = max(self._seq + 1, wanted)
            change = LiveChange(self._seq, incident_id)
            if len(self._ring) == self._ring.maxlen and self._ring:
                self._floor = self._ring[0].seq
            self._ring.append(change)
            self.published += 1
            subs = list(self._subs)
        for sub in subs:
            with contextlib.suppress(RuntimeError):  # loop closed
                sub.loop.call_soon_threadsafe(self._put, sub, change)
        return change.seq

    def close(self) -> None:
        """End every stream now (server shutdown), so browsers reconnect at once instead of the
        server waiting out its graceful-shutdown timeout; later subscribers end at once too."""
        with self._lock:
            self._closed = True
            subs = list(self._subs)
        for sub in subs:
            with contextlib.suppress(RuntimeError):
                sub.loop.call_soon_threadsafe(self._end, sub)

    @staticmethod
    def _end(sub: Subscription) -> None:
        sub.closed = True
        with contextlib.suppress(asyncio.QueueFull):
            sub.queue.put_nowait(LiveChange(-1, ""))     # wake a waiting ``next``

    @staticmethod
    def _put(sub: Subscription, change: LiveChange) -> None:
        try:
            sub.queue.put_nowait(change)
        except asyncio.QueueFull:
            sub.lost = True

    def can_replay(self, last_id: int | None) -> bool:
        """True when the ring alone holds everything after ``last_id``."""
        with self._lock:
            return last_id is not None and self._floor <= last_id <= self._seq

    def missed_since(self, last_id: int | None,
                     backlog: Backlog | None = None) -> list[LiveChange] | None:
        """Changes after ``last_id`` (latest per incident, in id order), or ``None`` when they
        cannot be known from the ring (nor from ``backlog``) and the subscriber must resync."""
        with self._lock:
            return self._missed(last_id, backlog)

    def _missed(self, last_id: int | None,
                backlog: Backlog | None = None) -> list[LiveChange] | None:
        if last_id is not None and self._floor <= last_id <= self._seq:
            after, latest = last_id, {}
        elif backlog is not None and backlog.top >= self._floor:
            # The store's changes up to ``top``, then the ring's after it (nothing in between
            # is lost: the ring still holds everything above its floor).
            after, latest = backlog.top, {c.incident_id: c for c in backlog.changes}
        else:
            return None
        for change in self._ring:
            if change.seq > after:
                latest[change.incident_id] = change
        return sorted(latest.values(), key=lambda c: c.seq)

    @contextlib.asynccontextmanager
    async def subscribe(self, last_id: int | None = None,
                        backlog: Backlog | None = None) -> AsyncIterator[Subscription]:
        """Register a subscriber; what it missed since ``last_id`` (from the ring, or from
        ``backlog`` read from the store when the ring no longer reaches back that far) and its
        live changes join without a gap (both are taken under one lock)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            sub = Subscription(loop, asyncio.Queue(self.max_queue), self._missed(last_id, backlog),
                               self._seq, closed=self._closed)
            self._subs.add(sub)
        try:
            yield sub
        finally:
            with self._lock:
                self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)
