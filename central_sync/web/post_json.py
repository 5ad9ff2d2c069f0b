"""``GET /api/nodes``'s body built one changed post at a time.

At 10,000 posts heartbeating every 20 s, about 500 posts change a second, and a clock-derived
status turns a few more; serialising all 10,000 rows (3 MB) on every rebuild held the GIL for
tens of milliseconds in one C call (``json.dumps``), during which no request was served. Here
each post's row is serialised once per (row revision, status, its test and fault times) and kept
(``PostJson``); a rebuild computes every status (cheap), serialises only the rows whose key
moved, and joins the stored bytes in the overview's order, which is sorted again only when a
post is added or renamed or moved (``PostTable.labels_version``). The bytes are exactly
``json.dumps(post_rows(...))``'s (``tests/test_desk_cache.py``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING

from central_sync.web.policy import can_see_node
from central_sync.web.posts import event_times, order_key, post_row

if TYPE_CHECKING:
    from central_sync.web.auth import Principal
    from central_sync.web.context import WebContext


class PostJson:
    """The serialised rows and the order of one web app (``DeskBodies.post_json``)."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[Hashable, bytes]] = {}
        self._order: tuple[int, list[str]] = (-1, [])
        self._lock = threading.Lock()  # one build at a time (a rebuild per scope may overlap)
        self.serialised = 0  # rows serialised since start (tests, benchmarks)

    def build(self, ctx: WebContext, who: Principal) -> bytes:
        with self._lock:
            return self._build(ctx, who)

    def _build(self, ctx: WebContext, who: Principal) -> bytes:
        posts = ctx.desk.posts
        tests, passed, faults = event_times(ctx)
        rows, revs, labels = posts.snapshot()
        if self._order[0] != labels or len(self._order[1]) != len(rows):
            self._order = (labels, sorted(rows, key=lambda node_id: order_key(rows[node_id])))
        everyone = who.user.is_staff
        now = time.time()
        cache = self._rows
        out = []
        for node_id in self._order[1]:
            n = rows.get(node_id)
            if n is None or not (everyone or can_see_node(who.user, n)):
                continue
            status = posts.status_of(n, now)
            key = (revs.get(node_id), status, tests.get(node_id), passed.get(node_id), faults.get(node_id))
            hit = cache.get(node_id)
            if hit is None or hit[0] != key:
                body = json.dumps(post_row(node_id, n, status, tests, passed, faults),
                                  separators=(",", ":"), ensure_ascii=False).encode()
                hit = cache[node_id] = (key, body)
                self.serialised += 1
            out.append(hit[1])
        if len(cache) > 2 * max(len(rows), 1000):  # posts removed by a resync
            for node_id in [k for k in cache if k not in rows]:
                del cache[node_id]
        return b"[" + b",".join(out) + b"]"
