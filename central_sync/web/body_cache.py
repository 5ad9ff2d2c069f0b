"""Render-once caches for the dashboard's expensive bodies (the incident queue's rows, the post
overview's JSON), so a request at city scale costs a dictionary lookup, not a render.

At 10,000 posts a ``GET /api/nodes`` builds and serialises 10,000 rows (2.7 MB) and ``GET /``
renders up to 500 queue rows; with posts heartbeating every 20 s the data changes several
hundred times a second, so "render once per change" alone would render on almost every
request. ``BodyCache`` is *stale-while-revalidate*:

* a body is built once per ``key`` (what the body depends on besides the data: the user's
  visibility scope, the language) and stored with the ``version`` of the data it was built from;
* a request whose ``version`` matches gets it as is; a newer ``version`` gets the stored body
  too while it is younger than ``max_age_s``, and once it is older, ONE background thread
  rebuilds it (the request still gets the stored body); only a key never built before is built
  in the request;
* so a body is at most about ``max_age_s`` plus one build behind the data, a request never waits
  for a build it did not need, and the web process renders each body at most once per
  ``max_age_s`` whatever the number of dashboards.

The caller makes staleness safe: the queue page is sent with the stream id read BEFORE its rows
were built, so the live stream replays whatever changed since (``routes_pages``). The build runs
in the caller's ``contextvars`` context (the language of the request that triggered it).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from markupsafe import Markup

from central_sync.web.post_json import PostJson
from edge.logs import log_event

log = logging.getLogger("central.web.cache")

T = TypeVar("T")


@dataclass(frozen=True)
class Cached(Generic[T]):
    version: Hashable
    value: T
    built_at: float


class BodyCache(Generic[T]):
    """Thread-safe; ``get`` is called on the event loop or in FastAPI's worker threads."""

    def __init__(self, max_age_s: float = 1.0, capacity: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.capacity = capacity
        #: False: every ``get`` builds (the uncached behaviour, for comparisons and debugging).
        self.enabled = True
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Hashable, Cached[T]] = {}
        self._building: set[Hashable] = set()
        self.hits = 0
        self.stale = 0
        self.builds = 0

    def get(self, key: Hashable, version: Hashable, build: Callable[[], T]) -> Cached[T]:
        """The body for ``key``: built now if there is none, else the stored one (rebuilt in the
        background once it is behind ``version`` and older than ``max_age_s``)."""
        if not self.enabled:
            return Cached(version, build(), self._clock())
        entry = self._stored(key, version, build)
        return entry if entry is not None else self._build(key, version, build)

    async def aget(self, key: Hashable, version: Hashable, build: Callable[[], T]) -> Cached[T]:
        """``get`` for the event loop: a stored body is returned at once, a build (the first
        of a key, or every one when disabled) runs in a worker thread, never on the loop."""
        if not self.enabled:
            return Cached(version, await asyncio.to_thread(build), self._clock())
        entry = self._stored(key, version, build)
        return entry if entry is not None else await asyncio.to_thread(self._build, key, version, build)

    async def afresh(self, key: Hashable, version: Hashable, build: Callable[[], T]) -> Cached[T]:
        """The body built from exactly ``version``: the stored one when it is, else built now in
        a worker thread (and stored). For a caller that must not get an older body, such as the
        page re-reading its queue after a gap in its stream."""
        with self._lock:
            entry = self._entries.get(key) if self.enabled else None
            if entry is not None and entry.version == version:
                self.hits += 1
                return entry
        return await asyncio.to_thread(self._build, key, version, build)

    def _stored(self, key: Hashable, version: Hashable, build: Callable[[], T]) -> Cached[T] | None:
        """The stored body (a background rebuild started when it is due), or None."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                if entry.version == version:
                    self.hits += 1
                    return entry
                self.stale += 1
                if now - entry.built_at >= self.max_age_s and key not in self._building:
                    self._building.add(key)
                    ctx = contextvars.copy_context()
                    threading.Thread(target=ctx.run, args=(self._rebuild, key, version, build),
                                     name="body-cache", daemon=True).start()
                return entry
        return None

    def _build(self, key: Hashable, version: Hashable, build: Callable[[], T]) -> Cached[T]:
        entry = Cached(version, build(), self._clock())
        with self._lock:
            self.builds += 1
            if key not in self._entries and len(self._entries) >= self.capacity:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = entry
        return entry

    def _rebuild(self, key: Hashable, version: Hashable, build: Callable[[], T]) -> None:
        try:
            self._build(key, version, build)
        except Exception as exc:  # the stored body stays; the next request tries again
            log_event(log, "body_rebuild_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:200])
        finally:
            with self._lock:
                self._building.discard(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


#: How far (seconds) a cached body may lag its data before one background rebuild starts.
MAX_AGE_S = 1.0


@dataclass(frozen=True)
class QueueRows:
    html: Markup
    count: int
    head: int  # the stream id read before the rows were built: they are at least this new


@dataclass
class DeskBodies:
    """The caches of one web app (``WebContext.bodies``)."""

    queue: BodyCache[QueueRows] = field(default_factory=lambda: BodyCache(MAX_AGE_S))
    nodes: BodyCache[bytes] = field(default_factory=lambda: BodyCache(MAX_AGE_S))
    #: Rendered queue rows by (language, time slot, summary) (``cached_views.render_rows``);
    #: written by one rebuild at a time per scope, a plain dict is enough.
    rows: dict[Hashable, Markup] = field(default_factory=dict)
    #: The post overview's rows, serialised once per change (``post_json``).
    post_json: PostJson = field(default_factory=PostJson)
