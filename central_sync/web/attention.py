"""``GET /fragments/attention``'s body (the red P1 banner on every desk page), kept up to date
change by change instead of rebuilt from the incident table per request.

The page re-reads the banner on every change its live stream reports (``static/attention.js``),
so with two operators and a city at 20 new incidents a second it was asked for 40 times a
second, and each answer read the 500 open incidents from the store, summarised them and
serialised ~100 kB of JSON (11 ms of CPU at 500 open P1s). Now:

* one body per (visibility scope, language), with the stream head it is as new as;
* a request whose head is newer applies only the changes since (the hub's ring names the
  incidents that changed: one store read each), re-joins the per-incident JSON it keeps and
  stores the result; the hub's ring no longer reaching back (or more than ``FULL_AFTER``
  changes) rebuilds from the store; so does a change of a post's name or place;
* the head is read BEFORE the store is: the body is at least as new as the head it is stored
  under, never older (unlike the queue rows, the banner has no stream replay to catch up with,
  so it is never served stale);
* the answer carries an ``ETag`` (a hash of the body); the page revalidates (``cache:
  "no-cache"``) and an unchanged banner costs a ``304`` without a body.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from central_sync.incidents import Incident
from central_sync.web import i18n
from central_sync.web.cached_views import scope_of
from central_sync.web.policy import can_see_incident
from central_sync.web.present import type_name

if TYPE_CHECKING:  # context.py imports this module
    from central_sync.web.auth import Principal
    from central_sync.web.context import WebContext

#: More changes than this since the stored body: rebuild it from the store instead.
FULL_AFTER = 256
#: Open incidents read by a rebuild (the queue shows 500; the banner must show every P1).
OPEN_LIMIT = 5000
FIELDS = ("incident_id", "type", "priority", "state", "opened_at", "post_name", "rt", "rw")


@dataclass(frozen=True)
class AttentionBody:
    head: int
    labels: int
    #: incident id -> (sort key, its JSON object)
    entries: Mapping[str, tuple[tuple[float, str], bytes]]
    body: bytes
    etag: str


def _waiting(incident: Incident) -> bool:
    return incident.priority == 1 and incident.state.value == "new"


class AttentionView:
    """Thread-safe; ``get`` runs in a worker thread (it may read the store)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[Hashable, AttentionBody] = {}
        self.rebuilds = 0
        self.updates = 0

    def get(self, ctx: WebContext, who: Principal) -> AttentionBody:
        key = (scope_of(who.user), i18n.current())
        head = ctx.hub.head  # before reading anything
        labels = ctx.desk.posts.labels_version
        with self._lock:
            stored = self._bodies.get(key)
            if stored is not None and stored.labels == labels and stored.head >= head:
                return stored
            changes = (ctx.hub.missed_since(stored.head)
                       if stored is not None and stored.labels == labels else None)
            if changes is None or len(changes) > FULL_AFTER:
                entries = self._rebuild(ctx, who)
                self.rebuilds += 1
            else:
                entries = dict(stored.entries) if stored is not None else {}
                nodes = ctx.desk.nodes()
                for change in changes:
                    entries.pop(change.incident_id, None)
                    incident = ctx.desk.book.get(change.incident_id)
                    if incident is not None:
                        self._add(ctx, entries, who, incident, nodes)
                self.updates += 1
            body = b"[" + b",".join(e for _, e in sorted(entries.values())) + b"]"
            made = AttentionBody(head, labels, entries, body,
                                 '"a' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"')
            self._bodies[key] = made
            return made

    def _rebuild(self, ctx: WebContext, who: Principal) -> dict[str, tuple[tuple[float, str], bytes]]:
        entries: dict[str, tuple[tuple[float, str], bytes]] = {}
        nodes = ctx.desk.nodes()
        for incident in ctx.desk.book.incidents(open_only=True, limit=OPEN_LIMIT):
            self._add(ctx, entries, who, incident, nodes)
        return entries

    @staticmethod
    def _add(ctx: WebContext, entries: dict[str, tuple[tuple[float, str], bytes]], who: Principal,
             incident: Incident, nodes: Mapping[str, dict[str, Any]]) -> None:
        node = nodes.get(incident.node_id)
        if not _waiting(incident) or not can_see_incident(who.user, incident, node):
            return
        summary = ctx.desk.summary(incident, node)
        entry = {k: summary.get(k) for k in FIELDS} | {"type_name": type_name(incident.type)}
        entries[incident.incident_id] = (
            (float(incident.opened_at or 0), incident.incident_id),
            json.dumps(entry, separators=(",", ":"), ensure_ascii=False, default=str).encode())
