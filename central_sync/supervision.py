"""Post supervision: central's own sight of the broker, post states, POST_OFFLINE incidents and
the per-post path figures (docs/desk.md "Supervision").

* **Central's sight.** Every ingest process, while connected to the broker, writes a link beat
  (``central_links``: connected since, beat time, newest message received) every ``LINK_BEAT_S``
  seconds (``link_beats``) and deletes its row on disconnect. Central is **blind** when no beat is
  fresher than ``blind_after_s``, or when the connected processes heard nothing from any post for
  ``quiet_after_s`` (a half-open link) while central knows at least ``quiet_min_posts`` posts.
  Blind, every post reads ``unknown`` and no POST_OFFLINE opens: a central that cannot see must
  not page everyone.
* **Post state** (``post_status``): ``online`` when its last presence did not say offline and it
  was heard within ``offline_after_s``; ``offline`` when its will / presence said offline or it has been silent
  longer; ``unknown`` when never heard, while blind, and for ``offline_after_s`` after central
  regains sight for posts not heard since (their next heartbeat is on its way).
* **Outages** (``Supervisor.sweep``): the web processes sweep every ``sweep_s``. A post found
  offline (and no outage of it open) gets an outage row keyed by (post, last heard) and, when
  supervised, a POST_OFFLINE incident, in ONE incident transaction that first re-reads the post and
  the open outage; transactions are serialised across processes, so any number of sweepers open
  one outage and one incident. When the post is online again the outage records the restore and the
  incident's timeline gets a ``restored`` step (an operator still closes it).
* **Figures** (``path_figures``): availability over ``availability_days`` = 1 - outage time /
  time since the window start (or the post's first sighting), and the transmission time of its
  events (post clock -> stored at central; mean and p95) over the same window.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from central_sync.incidents import SYSTEM_INCIDENTS
from central_sync.store import Store
from central_sync.store.desk_tables import DeskTables
from central_sync.store.supervision_tables import POST_OFFLINE, Outage, SupervisionTables
from central_sync.supervision_settings import SupervisionSettings
from edge.logs import log_event

log = logging.getLogger("central.supervision")

#: Seconds between an ingest process's link beats (``blind_after_s`` is a few of these).
LINK_BEAT_S = 5.0
ACTOR = "central:supervision"


@dataclass(frozen=True)
class LinkState:
    """Central's sight of the broker, as the store last said."""

    blind: bool
    reason: str  # "ok" | "no_ingest" | "quiet" | "unknown"
    processes: int = 0
    #: Since when central has seen continuously (the oldest connection of a live process).
    sighted_since: float | None = None
    last_message_at: float | None = None
    checked_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"blind": self.blind, "reason": self.reason, "processes": self.processes,
                "sighted_since": self.sighted_since, "last_message_at": self.last_message_at,
                "checked_at": self.checked_at}


NOT_CHECKED = LinkState(blind=False, reason="unknown")


def link_state(links: list[Any], now: float, settings: SupervisionSettings, *, posts_known: int) -> LinkState:
    """Judge central's sight from the ``central_links`` rows."""
    live = [r for r in links if now - r.beat_at <= settings.blind_after_s]
    if not live:
        return LinkState(True, "no_ingest", 0, None, None, now)
    since = min(r.connected_since for r in live)
    heard = [r.last_message_at for r in live if r.last_message_at is not None]
    last = max(heard) if heard else None
    quiet = settings.quiet_after_s
    if quiet is not None and posts_known >= settings.quiet_min_posts and now - max(last or 0.0, since) > quiet:
        return LinkState(True, "quiet", len(live), since, last, now)
    return LinkState(False, "ok", len(live), since, last, now)


def post_status(row: Mapping[str, Any], now: float, link: LinkState, offline_after_s: float) -> str:
    """online / offline / unknown of one node row (``online``, ``last_seen``)."""
    last_seen = row.get("last_seen")
    if last_seen is None or link.blind:
        return "unknown"
    last = float(last_seen)
    # Offline by word: its last presence (its will, or a clean shutdown) said so. A post known
    # only from its events (no presence yet) is judged by silence alone.
    said_offline = not row.get("online") and row.get("presence_at") is not None
    if not said_offline and now - last <= offline_after_s:
        return "online"
    since = link.sighted_since
    if since is not None and last < since and now - since < offline_after_s:
        return "unknown"  # sight just came back: its next heartbeat is on its way
    return "offline"


@dataclass
class SweepResult:
    opened: list[str] = field(default_factory=list)  # node ids with a new outage
    incidents: list[str] = field(default_factory=list)  # POST_OFFLINE incident ids opened
    restored: list[str] = field(default_factory=list)  # node ids back online
    skipped_blind: bool = False


@dataclass(frozen=True)
class PathFigures:
    """One post's supervision figures over the window."""

    window_s: float
    availability: float | None  # fraction 0..1; None before the post was first seen
    below_threshold: bool
    outages: int
    transmissions: int
    transmission_mean_s: float | None
    transmission_p95_s: float | None
    open_outage_since: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"window_s": self.window_s, "availability": self.availability,
                "below_threshold": self.below_threshold, "outages": self.outages,
                "transmissions": self.transmissions, "transmission_mean_s": self.transmission_mean_s,
                "transmission_p95_s": self.transmission_p95_s, "open_outage_since": self.open_outage_since}


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class Supervisor:
    """Reads central's sight and sweeps outages; one per web process (thread-safe reads)."""

    def __init__(self, store: Store, settings: SupervisionSettings) -> None:
        self.settings = settings
        self.desk: DeskTables = store.desk()
        self.tables = SupervisionTables(self.desk)
        self.link: LinkState = NOT_CHECKED
        self._posts_known = 0
        self._seen_noted: set[str] = set()

    # -- sight ------------------------------------------------------------------------------
    def refresh_link(self, now: float | None = None, *, posts_known: int | None = None) -> LinkState:
        t = time.time() if now is None else now
        if posts_known is not None:
            self._posts_known = posts_known
        previous = self.link
        self.link = link_state(self.tables.links(), t, self.settings, posts_known=self._posts_known)
        if previous.blind != self.link.blind or previous.reason == "unknown":
            log_event(log, "central_blind" if self.link.blind else "central_sighted",
                      logging.WARNING if self.link.blind else logging.INFO, reason=self.link.reason,
                      processes=self.link.processes)
        return self.link

    def status_of(self, row: Mapping[str, Any], now: float) -> str:
        """The desk's post status (``PostTable``), with central's last known sight."""
        return post_status(row, now, self.link, self.settings.offline_after_s)

    # -- the sweep --------------------------------------------------------------------------
    def sweep(self, now: float | None = None, posts: Mapping[str, Mapping[str, Any]] | None = None) -> SweepResult:
        """Open outages (and POST_OFFLINE incidents) for posts gone offline, record restores.
        ``posts`` (the desk's post table) only feeds first sightings; states are read from the
        store inside each transaction."""
        t = time.time() if now is None else now
        if posts is not None:
            self._note_first_seen(posts, t)
        link = self.refresh_link(t, posts_known=len(posts) if posts is not None else None)
        result = SweepResult()
        if link.blind:
            result.skipped_blind = True
            return result
        open_by_node = {o.node_id: o for o in self.tables.open_outages()}
        offline_after = self.settings.offline_after_s
        for row in self.tables.unheard_posts(t - offline_after):
            node_id = str(row["node_id"])
            if node_id in open_by_node or post_status(row, t, link, offline_after) != "offline":
                continue
            incident_id = self._open_outage(node_id, t, link)
            if incident_id is not None:
                result.opened.append(node_id)
                if incident_id:
                    result.incidents.append(incident_id)
        # Only posts that look back online get a transaction (one read for all of them first).
        back = {str(r["node_id"]): r for r in self.tables.open_outage_nodes()
                if post_status(r, t, link, offline_after) == "online"}
        for node_id, row in back.items():
            outage = open_by_node.get(node_id)
            if outage is not None and float(row["last_seen"]) > outage.started_at and self._restore(outage, t, link):
                result.restored.append(node_id)
        return result

    def _open_outage(self, node_id: str, now: float, link: LinkState) -> str | None:
        """``None``: nothing opened (another sweeper did, or the post is back); ``""``: an outage
        without an incident (an unsupervised post, or one silent for longer than
        ``incident_horizon_s``); else the POST_OFFLINE incident id."""
        supervised = self.settings.is_supervised(node_id)
        with self.desk.incident_tx() as tx:
            row = self.tables.node_state(tx, node_id)
            if row is None or post_status(row, now, link, self.settings.offline_after_s) != "offline":
                return None
            if self.tables.open_outage_of(tx, node_id) is not None:
                return None
            started = float(row["last_seen"])
            if self.tables.has_outage(tx, node_id, started):
                return None
            recent = now - started <= self.settings.incident_horizon_s
            incident_id = f"inc-offline-{uuid.uuid4().hex}" if supervised and recent else None
            if incident_id is not None:
                info = SYSTEM_INCIDENTS[POST_OFFLINE]
                tx.insert_incident(incident_id, node_id, POST_OFFLINE, int(info.priority), started, now, None)
                tx.log_step(incident_id, now, "new", ACTOR,
                            f"not heard since {time.strftime('%H:%M:%S', time.gmtime(started))} UTC")
            self.tables.insert_outage(tx, node_id, started, now, incident_id)
        log_event(log, "post_offline", logging.WARNING, node_id=node_id, last_heard=round(started, 3),
                  detected_after_s=round(now - started, 1), incident_id=incident_id, supervised=supervised)
        return incident_id or ""

    def _restore(self, outage: Outage, now: float, link: LinkState) -> bool:
        with self.desk.incident_tx() as tx:
            row = self.tables.node_state(tx, outage.node_id)
            if row is None or post_status(row, now, link, self.settings.offline_after_s) != "online":
                return False
            if float(row["last_seen"]) <= outage.started_at:
                return False
            current = self.tables.open_outage_of(tx, outage.node_id)
            if current is None or current.started_at != outage.started_at:
                return False  # another sweeper recorded it
            self.tables.restore_outage(tx, outage.node_id, outage.started_at, now)
            if outage.incident_id is not None and tx.exists(outage.incident_id):
                tx.log_step(outage.incident_id, now, "restored", ACTOR,
                            f"post back online after {now - outage.started_at:.0f} s")
                tx.mark_changed(outage.incident_id)
        log_event(log, "post_restored", node_id=outage.node_id, outage_s=round(now - outage.started_at, 1),
                  incident_id=outage.incident_id)
        return True

    def _note_first_seen(self, posts: Mapping[str, Mapping[str, Any]], now: float) -> None:
        new: list[tuple[str, float]] = []
        for node_id in list(posts):
            if node_id in self._seen_noted:
                continue
            row = posts.get(node_id)
            if row is not None:
                new.append((node_id, float(row.get("last_seen") or now)))
        if new:
            self.tables.note_first_seen(new)
            self._seen_noted.update(node_id for node_id, _ in new)

    # -- figures ----------------------------------------------------------------------------
    def path_figures(self, node_id: str, now: float | None = None) -> PathFigures:
        t = time.time() if now is None else now
        s = self.settings
        window = s.availability_days * 86400.0
        start = t - window
        first = self.tables.first_seen(node_id)
        outages = self.tables.outages_since(node_id, start)
        if first is not None or outages:
            begin = max(start, min([first or t, *(o.started_at for o in outages)]))
            span = t - begin
            down = sum(max(0.0, min(o.restored_at or t, t) - max(o.started_at, begin)) for o in outages)
            availability: float | None = max(0.0, 1.0 - down / span) if span > 0 else 1.0
        else:
            availability = None
        times = self.tables.transmission_times(node_id, start)
        open_since = next((o.started_at for o in outages if o.restored_at is None), None)
        return PathFigures(
            window_s=window, availability=availability,
            below_threshold=availability is not None and availability < s.availability_threshold,
            outages=len(outages), transmissions=len(times),
            transmission_mean_s=(sum(times) / len(times)) if times else None,
            transmission_p95_s=p95(times), open_outage_since=open_since)


# -- ingest side ------------------------------------------------------------------------------
async def link_beats(store: Store, process_id: str, last_message: Callable[[], float | None],
                     period: float = LINK_BEAT_S) -> None:
    """Write this ingest connection's link beat every ``period`` s until cancelled, then delete
    it (the connection is gone). Never raises for a store error: supervision must not take
    ingest down."""
    try:
        tables = SupervisionTables(store.desk())
    except Exception as exc:
        log_event(log, "link_beat_unavailable", logging.WARNING, error=str(exc)[:200])
        return
    since = time.time()
    failed = False
    try:
        while True:
            try:
                await asyncio.to_thread(tables.link_beat, process_id, since, time.time(), last_message())
                failed = False
            except Exception as exc:
                if not failed:
                    log_event(log, "link_beat_failed", logging.WARNING, process_id=process_id, error=str(exc)[:200])
                failed = True
            await asyncio.sleep(period)
    finally:
        try:
            tables.link_down(process_id)
        except Exception as exc:
            log_event(log, "link_down_failed", logging.WARNING, process_id=process_id, error=str(exc)[:200])
