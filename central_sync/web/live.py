"""Live updates: a hub that fans incident changes out to server-sent-event subscribers.

``publish`` may be called from any thread (the ingest callback); each subscriber has its own
bounded queue on the web app's event loop, and a slow browser only loses its own updates.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator


class LiveHub:
    def __init__(self, max_queue: int = 256) -> None:
        self._subs: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]] = set()
        self._lock = threading.Lock()
        self.max_queue = max_queue

    def publish(self, incident_id: str) -> None:
        with self._lock:
            subs = list(self._subs)
        for loop, queue in subs:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(self._put, queue, incident_id)

    @staticmethod
    def _put(queue: asyncio.Queue[str], item: str) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(item)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[str]]:
        entry = (asyncio.get_running_loop(), asyncio.Queue[str](self.max_queue))
        with self._lock:
            self._subs.add(entry)
        try:
            yield entry[1]
        finally:
            with self._lock:
                self._subs.discard(entry)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

