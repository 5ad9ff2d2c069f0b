"""``GET /api/stream``: the desk's live stream (server-sent events through ``sse-starlette``).

Events, all with ``data`` as JSON:

- ``incident`` (with an ``id``): an incident visible to you changed; ``data`` is its summary
  plus ``row``: its queue row, server-rendered in your language (what
  ``/fragments/incidents/<id>`` answers), so the queue page needs no request per change.
- ``resync`` (with an ``id``): what you missed cannot be replayed (more changes than
  ``web.stream_replay``, an id that is not ours, or your queue overflowed): re-read the queue.
- ``heartbeat`` (no ``id``): every ``HEARTBEAT_S`` seconds with the server's time. A named event
  rather than an SSE comment because comments never reach the page's script, and the page must
  notice a stream that has silently died.

A reconnecting browser sends ``Last-Event-ID`` (or ``?last_event_id=`` on a fresh
``EventSource``) and first receives the changes it missed, then live ones Ids are the store's
durable incident change numbers, so this also works on another web process or after a restart
(from the process's ring when it reaches back far enough, else from the store).
sse-starlette does the framing, the heartbeat timer and client-disconnect handling; we only
decide what to send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from central_sync.incidents import Incident
from central_sync.web import i18n
from central_sync.web.auth import COOKIE, Principal, principal
from central_sync.web.cached_views import render_row
from central_sync.web.context import WebContext, ctx_of
from central_sync.web.live import LiveChange, Subscription, parse_event_id
from central_sync.web.policy import can_see_incident
from edge.logs import log_event

log = logging.getLogger("central.web.live")
router = APIRouter()

HEARTBEAT_S = 10.0
RETRY_MS = 2000
#: Seconds between lookups of an open stream's session (``still_allowed``).
SESSION_CHECK_S = 1.0


def heartbeat() -> ServerSentEvent:
    return ServerSentEvent(event="heartbeat", data=json.dumps({"t": time.time()}))


class ChangeResolver:
    """Reads each change's incident and post once for all subscribers of this app (the node
    table is read per change, not per change and browser), and builds each change's event data
    (summary, rendered row, JSON) once per language: what every browser may see of an incident
    is the same, only whether it may see it differs."""

    def __init__(self, ctx: WebContext, size: int = 256) -> None:
        self.ctx = ctx
        self._cache: OrderedDict[int, tuple[Incident | None, dict[str, Any] | None]] = (
            OrderedDict())
        self._data: OrderedDict[tuple[int, str], str] = OrderedDict()
        self.size = size

    def data(self, change: LiveChange, incident: Incident, node: dict[str, Any] | None) -> str:
        """The ``incident`` event's data for ``change`` in the request's language."""
        key = (change.seq, i18n.current())
        found = self._data.get(key)
        if found is None:
            summary: dict[str, Any] = self.ctx.desk.summary(incident, node)
            # The queue row too (the page puts it in place without fetching /fragments/incidents/<id>).
            found = self._data[key] = json.dumps(summary | {"row": render_row(self.ctx, summary)}, default=str)
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return found

    def resolve(self, change: LiveChange) -> tuple[Incident | None, dict[str, Any] | None]:
        hit = self._cache.get(change.seq)
        if hit is None:
            incident = self.ctx.desk.book.get(change.incident_id)
            node = self.ctx.desk.nodes().get(incident.node_id) if incident else None
            hit = self._cache[change.seq] = (incident, node)
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return hit


def resolver_of(ctx: WebContext, state: Any) -> ChangeResolver:
    found = getattr(state, "live_resolver", None)
    if not isinstance(found, ChangeResolver) or found.ctx is not ctx:
        found = ChangeResolver(ctx)
        state.live_resolver = found
    return found


def incident_event(ctx: WebContext, who: Principal, change: LiveChange,
                   resolver: ChangeResolver | None = None) -> ServerSentEvent | None:
    """The ``incident`` event for one change, or ``None`` when ``who`` may not see it."""
    resolver = resolver or ChangeResolver(ctx)
    incident, node = resolver.resolve(change)
    if incident is None or not can_see_incident(who.user, incident, node):
        return None
    return ServerSentEvent(event="incident", id=str(change.seq), data=resolver.data(change, incident, node))


def resync_event(head: int) -> ServerSentEvent:
    return ServerSentEvent(event="resync", id=str(head), data=json.dumps({"head": head}))


async def events_for(ctx: WebContext, who: Principal, sub: Subscription,
                     still_allowed: Any = None, wait_s: float = HEARTBEAT_S,
                     resolver: ChangeResolver | None = None,
                     ) -> AsyncIterator[ServerSentEvent]:
    """Replay (or resync), then live changes, for one subscriber; ends when ``still_allowed()``
    turns false (logged out or session expired)."""
    resolver = resolver or ChangeResolver(ctx)
    yield ServerSentEvent(retry=RETRY_MS, event="hello",
                          data=json.dumps({"head": sub.head, "replayed": len(sub.replay or []),
                                           "resync": sub.replay is None}))
    if sub.replay is None:
        yield resync_event(sub.head)
    else:
        for missed in sub.replay:
            event = incident_event(ctx, who, missed, resolver)
            if event is not None:
                yield event
    while not sub.closed and (still_allowed is None or still_allowed()):
        change = await sub.next(wait_s)
        if sub.take_lost():
            yield resync_event(ctx.hub.head)
            continue
        if change is None:
            continue
        event = incident_event(ctx, who, change, resolver)
        if event is not None:
            yield event


@router.get("/api/stream", include_in_schema=False)
async def stream(request: Request, who: Annotated[Principal, Depends(principal)],
                 last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
                 since: Annotated[str | None, Query(alias="last_event_id", max_length=24)] = None,
                 ) -> EventSourceResponse:
    """Server-sent events: incident changes visible to you, with replay from Last-Event-ID."""
    ctx = ctx_of(request)
    last = parse_event_id(last_event_id) if last_event_id else parse_event_id(since)
    cookie = request.cookies.get(COOKIE)

    checked = [time.monotonic(), True]  # when the session was last looked up, and the answer

    def still_allowed() -> bool:
        """The session still valid; looked up (a store read, on the loop) at most once a
        second, not once per change: a logout ends the stream within a second."""
        now = time.monotonic()
        if now - float(checked[0]) >= SESSION_CHECK_S:
            checked[:] = [now, ctx.sessions.lookup(cookie, who.client) is not None]
        return bool(checked[1])

    async def body() -> AsyncIterator[ServerSentEvent]:
        backlog = None
        if last is not None and ctx.hub.durable and not ctx.hub.can_replay(last):
            # Older than this process's ring (another process, or before a restart): the store
            # knows what changed since, under the same durable ids.
            backlog = await asyncio.to_thread(ctx.desk.backlog_since, last,
                                              ctx.settings.stream_replay)
        async with ctx.hub.subscribe(last, backlog) as sub:
            log_event(log, "stream_opened", user=who.user.name, last_event_id=last,
                      replayed=-1 if sub.replay is None else len(sub.replay))
            try:
                async for event in events_for(ctx, who, sub, still_allowed,
                                              resolver=resolver_of(ctx, request.app.state)):
                    yield event
            finally:
                log_event(log, "stream_closed", user=who.user.name)

    return EventSourceResponse(body(), ping=HEARTBEAT_S, ping_message_factory=heartbeat,
                               headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
