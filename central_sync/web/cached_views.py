"""The dashboard's two heavy bodies through ``BodyCache``: the incident queue's rows (``GET /``,
``GET /fragments/queue``) and the post overview's JSON (``GET /api/nodes``).

What each body depends on, and so its cache key and version:

* queue rows: the user's incident visibility (role and RTs) and the language; the data version
  is (stream head, ``PostTable.labels_version``): an incident change moves the stream head, a
  post's name or place moves the labels version; heartbeats move neither;
* post overview: the user's post visibility (staff, or the RTs); version ``PostTable.version``
  (every presence/heartbeat), so under a live fleet it is rebuilt at most once per
  ``max_age_s`` in the background and served as stored in between.

The queue's stream id is the head read BEFORE its rows were built (``QueueRows.head``): the
page's live stream replays every change after it, so rows a little behind are caught up by the
browser, never lost.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from central_sync.users import Role, User
from central_sync.web import i18n
from central_sync.web.body_cache import Cached, QueueRows
from central_sync.web.posts import post_rows

#: How stale a post's clock-derived status may be in the cached post overview (seconds).
STATUS_SLOT_S = 5.0

if TYPE_CHECKING:  # context.py imports this module
    from central_sync.web.auth import Principal
    from central_sync.web.context import WebContext

def scope_of(user: User) -> Hashable:
    """What visibility depends on: admins and operators see by role, RT admins by their RTs."""
    return user.role, (frozenset() if user.role in (Role.ADMIN, Role.OPERATOR) else user.rts)


_scope = scope_of


def queue_rows(ctx: WebContext, who: Principal, at_least: int | None = None) -> Awaitable[Cached[QueueRows]]:
    """The visible queue rows, rendered (``.value.head``: the stream id they are as new as);
    awaited on the loop (a build runs in a worker thread). ``at_least``: the stream id the
    caller has already seen; rows older than it are never returned (built now instead of served
    stale), because a page that re-reads its queue after a resync continues its stream from
    there and would otherwise miss the changes in between."""
    head = ctx.hub.head  # before reading anything
    version = (head, ctx.desk.posts.labels_version)

    def build() -> QueueRows:
        nodes = ctx.desk.nodes()
        incidents = [ctx.desk.summary(i, nodes.get(i.node_id)) for i in ctx.desk.visible(who, nodes)]
        return QueueRows(render_rows(ctx, incidents), len(incidents), head)

    key = (_scope(who.user), i18n.current())
    if at_least is not None and at_least <= head:  # never more than exists (a restarted hub)
        return _at_least(ctx, key, version, build, at_least)
    return ctx.bodies.queue.aget(key, version, build)


async def _at_least(ctx: WebContext, key: Hashable, version: Hashable, build: Callable[[], QueueRows],
                    at_least: int) -> Cached[QueueRows]:
    stored = await ctx.bodies.queue.aget(key, version, build)
    if stored.value.head >= at_least:
        return stored
    return await ctx.bodies.queue.afresh(key, version, build)


#: Seconds a rendered row's time-dependent parts (its age text, "late") may lag: the browser's
#: dashboard script recomputes both every second anyway.
ROW_AGE_S = 30


def render_rows(ctx: WebContext, incidents: list[dict[str, Any]]) -> Markup:
    """The queue rows (``_row.html``'s ``incident_row`` of each summary, concatenated as
    ``queue_fragment.html`` does), each rendered once per (summary, language, ``ROW_AGE_S``
    slot) and kept in ``ctx.bodies.rows``: a rebuild renders only the incidents that changed."""
    macro = ctx.templates.get_template("_row.html").module.incident_row  # type: ignore[attr-defined]
    if not ctx.bodies.queue.enabled:  # uncached: as queue_fragment.html renders them
        return Markup("").join(Markup(macro(summary)) for summary in incidents)
    rows = ctx.bodies.rows
    if len(rows) > 4 * max(len(incidents), 1000):
        rows.clear()
    out = []
    lang, now = i18n.current(), time.time()
    for summary in incidents:
        key = row_key(summary, lang, now)
        html = rows.get(key)
        if html is None:
            html = rows[key] = Markup(macro(summary))
        out.append(html)
    return Markup("").join(out)


def row_key(summary: dict[str, Any], lang: str, now: float) -> Hashable:
    """A rendered row's key: its summary, the language and its ``ROW_AGE_S`` slot. Each
    incident's slots are offset by a hash of its id, so the rows age out spread over the slot,
    not all in the same second (500 rows re-rendered at once hold the GIL for ~0.1 s)."""
    offset = zlib.crc32(str(summary.get("incident_id")).encode()) % ROW_AGE_S
    return lang, int((now + offset) // ROW_AGE_S), repr(sorted(summary.items()))


def warm(ctx: WebContext) -> int:
    """At start-up, off the loop: compile the desk's templates and render the queue rows in the
    default language, so the first page after a restart (every browser reconnects and re-reads
    its queue) is not the one that pays for 500 row renderings. Returns the rows rendered."""
    for name in ("base.html", "dashboard.html", "_row.html", "row_fragment.html", "queue_fragment.html"):
        ctx.templates.get_template(name)
    token = i18n.set_language(ctx.settings.language)
    try:
        nodes = ctx.desk.nodes()
        incidents = [ctx.desk.summary(i, nodes.get(i.node_id)) for i in ctx.desk.book.incidents()]
        render_rows(ctx, incidents)
        return len(incidents)
    finally:
        i18n.reset_language(token)


def render_row(ctx: WebContext, summary: dict[str, Any]) -> str:
    """One queue row as ``/fragments/incidents/<id>`` renders it, through the same per-(language,
    slot, summary) store as ``render_rows``: the live stream sends it with each change, so every
    browser of a language gets the one rendering instead of fetching it (``routes_live``)."""
    key = row_key(summary, i18n.current(), time.time())
    html = ctx.bodies.rows.get(key)
    if html is None:
        macro = ctx.templates.get_template("_row.html").module.incident_row  # type: ignore[attr-defined]
        html = ctx.bodies.rows[key] = Markup(macro(summary))
    return str(html)


def nodes_json(ctx: WebContext, who: Principal) -> Awaitable[Cached[bytes]]:
    """``GET /api/nodes``'s body, serialised once per version. A post's status also moves with the
    clock (silence turns it offline, a blind central makes it unknown) and its siren-test times
    come from events, so the version includes a ``STATUS_SLOT_S`` time slot: a status is at most
    that much later than the data's own changes."""
    version = (ctx.desk.posts.version, int(time.time() // STATUS_SLOT_S))

    def build() -> bytes:
        if not ctx.bodies.nodes.enabled:  # uncached: every row serialised, as before
            return json.dumps(post_rows(ctx, who), separators=(",", ":"), ensure_ascii=False).encode()
        return ctx.bodies.post_json.build(ctx, who)

    return ctx.bodies.nodes.aget(_scope(who.user), version, build)
