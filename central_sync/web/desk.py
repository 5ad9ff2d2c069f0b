"""The command-centre desk: follows the store's change feed (events and post state committed by
any ingest process), groups events into incidents, routes them, runs lifecycle steps and sends the
resulting commands through a ``CommandSender``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from central_sync.escalation import Escalator
from central_sync.incidents import Change, Incident, IncidentBook, State, event_payload
from central_sync.routing import Router, make_command
from central_sync.siren_control import BatchSender, SirenControl
from central_sync.store import ChangeFeed, ChangeMark, Changes, Store
from central_sync.supervision import Supervisor
from central_sync.web.auth import Principal
from central_sync.web.live import Backlog, LiveChange, LiveHub
from central_sync.web.policy import can_see_incident, node_location, redact
from central_sync.web.post_table import PostTable
from central_sync.web_settings import WebSettings
from edge.logs import log_event
from edge.sync.wire import Command

log = logging.getLogger("central.web.desk")
#: Seconds between writes of the desk's feed position when no incident changed.
STATE_EVERY_S = 5.0


class CommandSender(Protocol):
    async def send_command(self, cmd: Command, *, issued_by: str) -> Any: ...


def as_dict(row: Any) -> dict[str, Any]:
    if row is None:
        return {}
    if isinstance(row, Mapping):
        return dict(row)
    if hasattr(row, "model_dump"):
        return dict(row.model_dump())
    if hasattr(row, "_asdict"):
        return dict(row._asdict())
    return {k: getattr(row, k) for k in dir(row) if not k.startswith("_")
            and not callable(getattr(row, k))}


class Desk:
    """Everything the dashboard does that is more than a query."""

    def __init__(self, store: Store, commands: CommandSender | None,
                 settings: WebSettings, hub: LiveHub) -> None:
        self.store, self.commands, self.settings, self.hub = store, commands, settings, hub
        self.tables = store.desk()
        self.book = IncidentBook(self.tables, settings.group_window_s)
        # Supervision (issue 11): post status with the offline threshold and central's sight.
        self.supervisor = Supervisor(store, settings.supervision)
        self.escalator = Escalator(self.tables, self.book, settings.escalation)
        self.posts = PostTable(self.supervisor.status_of)
        self.posts.load(store.list_nodes())
        self.sirens = SirenControl(store.siren_tables(),
                                   commands if isinstance(commands, BatchSender) else None,
                                   ttl_s=settings.command_ttl_s)
        self.router = Router(warning_types=settings.rw_warning_types,
                             rw_patterns=settings.rw_warning_patterns,
                             ttl_s=settings.command_ttl_s)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        #: The highest incident change number handed to the hub (see ``publish_changes``).
        self._published = hub.head if hub.durable else self.tables.incident_change_head()
        self._publish_lock = threading.Lock()
        self._state_written = float("-inf")  # monotonic time ``last_rowid`` was last written

    # -- live stream ------------------------------------------------------------------------
    def publish_changes(self, batch: int = 500) -> int:
        """Hand the hub every incident change committed since the last call, by any process
        (this one's grouping and lifecycle steps, another web process's), with the store's
        durable change number as its stream id. Any thread; returns how many."""
        count = 0
        with self._publish_lock:
            while True:
                rows = self.tables.incident_changes(self._published, batch)
                for seq, incident_id in rows:
                    if self.hub.durable:
                        self.hub.publish(incident_id, seq=seq)
                    else:
                        self.hub.publish(incident_id)
                    self._published = seq
                count += len(rows)
                if len(rows) < batch:
                    return count

    def backlog_since(self, last_id: int, limit: int) -> Backlog | None:
        """What changed after stream id ``last_id`` according to the store (latest per
        incident), for a browser the hub's ring cannot serve (it was on another web process, or
        on this one before a restart); ``None`` (resync) when that is more than ``limit``
        incidents or the id is beyond anything the store has handed out."""
        head = self.tables.incident_change_head()
        if not self.hub.durable or last_id < 0 or last_id > head:
            return None
        rows = self.tables.incident_changes(last_id, limit + 1)
        if len(rows) > limit:
            return None
        return Backlog([LiveChange(seq, incident_id) for seq, incident_id in rows],
                       max([head, *(seq for seq, _ in rows)]))

    # -- nodes ------------------------------------------------------------------------------
    def nodes(self) -> Mapping[str, dict[str, Any]]:
        """Every post by node id, from memory (kept current by the change feed); looking one up
        is a dict lookup, not a copy of the table."""
        return self.posts.view()

    # -- feeding ----------------------------------------------------------------------------
    def on_events(self, rows: list[dict[str, Any]]) -> None:
        """Group, route new incidents, tell the browsers (any thread). Fed by ``follow``; also
        usable directly by tools and tests."""
        try:
            self._feed(rows, route=True)
        except Exception:  # never break the caller because of the dashboard
            log.exception("on_events failed")

    def apply_changes(self, changes: Changes) -> None:
        """Apply what the change feed reported: post state, then new events."""
        if changes.resync:
            self.posts.load(changes.nodes)
        elif changes.nodes:
            self.posts.update(changes.nodes)
        if changes.events:
            self.on_events(changes.events)

    async def follow(self, feed: ChangeFeed, mark: ChangeMark, poll_s: float = 1.0) -> None:
        """Apply the store's change feed until cancelled (events and post state committed by
        any process: ingest workers, another central)."""
        while True:
            try:
                changes = await asyncio.to_thread(feed.wait, mark, poll_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lost database: the feed resyncs when it is back
                log_event(log, "change_feed_failed", logging.WARNING, error=str(exc)[:200])
                await asyncio.sleep(poll_s)
                continue
            mark = changes.mark
            if changes.events or changes.nodes or changes.resync:
                await asyncio.to_thread(self.apply_changes, changes)
            # Incident changes made by other web processes (acknowledgements, grouping) reach
            # this process's browsers within one poll.
            try:
                await asyncio.to_thread(self.publish_changes)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_event(log, "publish_changes_failed", logging.WARNING, error=str(exc)[:200])

    def catch_up(self, batch: int = 1000) -> int:
        """Group events already in the store (at start-up; no routing: they are old news)."""
        since = int(self.tables.get_state("last_rowid", "0"))
        total = 0
        while True:
            rows = [as_dict(r) for r in self.store.list_events(since_rowid=since, limit=batch)]
            if not rows:
                return total
            self._feed(rows, route=False)
            total += len(rows)
            since = max(int(r.get("rowid") or since) for r in rows)
            self.tables.set_state("last_rowid", str(since))
            if len(rows) < batch:
                return total

    def _feed(self, rows: list[dict[str, Any]], route: bool) -> list[Change]:
        changes = self.book.add_events(rows)
        rowids = [int(r["rowid"]) for r in rows if r.get("rowid")]
        now = time.monotonic()
        # Where a restart's catch_up starts: written with every change, else at most every
        # STATE_EVERY_S (a restart re-reads those events; grouping ignores what it has).
        if rowids and route and (changes or now - self._state_written >= STATE_EVERY_S):
            last = int(self.tables.get_state("last_rowid", "0"))
            self.tables.set_state("last_rowid", str(max(last, *rowids)))
            self._state_written = now
        for change in changes:
            incident = self.book.get(change.incident_id)
            if incident is None:
                continue
            if change.opened:
                log_event(log, "incident_opened", incident_id=incident.incident_id,
                          node_id=incident.node_id, type=incident.type,
                          priority=incident.priority)
                if route:
                    self._warn_rw(incident)
        if changes:
            self.publish_changes()
        return changes

    def _warn_rw(self, incident: Incident) -> None:
        """Sound the incident's RW: queued and published in batches when the sender can (the
        broker gets them in bounded windows, signed off the loop), else one command at a time."""
        warnings = self.router.rw_warnings(incident, self._rw_posts(incident.node_id))
        if not warnings:
            return
        try:  # remembered before they go out, so a resolve can stop them
            if self.sirens.sender is not None:
                if self.sirens.queue_incident_warnings(incident, warnings) and \
                        not self.spawn(self.sirens.publish_warnings()):
                    self.sirens.drop_queued_warnings()
                return
            self.sirens.record_incident_warnings(incident, warnings)
        except Exception as exc:
            log_event(log, "warnings_not_recorded", logging.ERROR,
                      incident_id=incident.incident_id, error=str(exc)[:200])
            return
        for cmd in warnings:
            self.spawn(self._send(cmd, "central:routing"))

    def _rw_posts(self, node_id: str) -> list[dict[str, Any]]:
        """The posts of ``node_id``'s RW (itself included), by index."""
        origin = self.posts.get(node_id)
        if origin is None or origin.get("kelurahan_code") is None or origin.get("rw") is None:
            return [origin] if origin is not None else []
        return self.posts.in_rw(str(origin["kelurahan_code"]), int(origin["rw"]))

    # -- commands ---------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> bool:
        """Run a coroutine on the web app's loop, from that loop or from another thread
        (False: there is no loop; the coroutine was dropped)."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and (self.loop is None or running is self.loop):
            task: asyncio.Future[Any] = running.create_task(coro)
        elif self.loop is not None and not self.loop.is_closed():
            asyncio.run_coroutine_threadsafe(coro, self.loop)
            return True
        else:
            coro.close()
            log_event(log, "command_not_sent", logging.WARNING, reason="no event loop")
            return False
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _send(self, cmd: Command, issued_by: str) -> bool:
        if self.commands is None:
            log_event(log, "command_not_sent", logging.WARNING, command_id=cmd.command_id,
                      reason="no command sender")
            return False
        try:
            await self.commands.send_command(cmd, issued_by=issued_by)
        except Exception as exc:
            log_event(log, "command_failed", logging.WARNING, command_id=cmd.command_id,
                      node_id=cmd.node_id, action=cmd.action, error=str(exc)[:200])
            return False
        log_event(log, "command_sent", command_id=cmd.command_id, node_id=cmd.node_id,
                  action=cmd.action, issued_by=issued_by)
        return True

    async def send(self, who: Principal, node_id: str, action: str,
                   params: dict[str, Any]) -> dict[str, Any]:
        cmd = make_command(node_id, action, params, issuer=f"web:{who.user.name}",
                           ttl_s=self.settings.command_ttl_s)
        sent = await self._send(cmd, who.user.name)
        return {"command_id": cmd.command_id, "node_id": node_id, "action": action,
                "sent": sent}

    # -- lifecycle --------------------------------------------------------------------------
    async def acknowledge(self, who: Principal, incident_id: str, note: str) -> dict[str, Any]:
        incident = self.book.step(incident_id, State.ACKNOWLEDGED, who.user.name, note)
        self.publish_changes()
        result = await self.send(who, incident.node_id, "incident_ack",
                                 {"incident_id": incident_id, "operator": who.user.name,
                                  "note": note})
        return {"incident": incident.as_dict(), "command": result}

    async def close(self, who: Principal, incident_id: str, to: State,
                    note: str) -> dict[str, Any]:
        incident = self.book.step(incident_id, to, who.user.name, note)
        self.publish_changes()
        out: dict[str, Any] = {"incident": incident.as_dict(), "warning": None, "command": None}
        out["sirens"] = await self._stop_sirens(incident_id, who.user.name)
        if to is State.FALSE_ALARM:
            out.update(await self._false_alarm_check(who, incident))
        return out

    async def _stop_sirens(self, incident_id: str, by: str) -> dict[str, Any]:
        """Stop the sirens central started for the incident (never fails the lifecycle step)."""
        try:
            return await self.sirens.stop_incident(incident_id, by)
        except Exception as exc:
            log_event(log, "sirens_not_stopped", logging.ERROR, incident_id=incident_id,
                      error=str(exc)[:200])
            return {"error": str(exc)[:200]}

    async def _false_alarm_check(self, who: Principal, incident: Incident) -> dict[str, Any]:
        s = self.settings
        since = time.time() - s.false_alarm_window_s
        count = self.book.false_alarms(incident.node_id, since)
        if count < s.false_alarm_threshold:
            return {}
        recent = self.tables.recent_warning(incident.node_id, "false_alarms", since)
        message = (f"Post {incident.node_id} had {count} false alarms in "
                   f"{s.false_alarm_window_s / 3600:g} h: panic hold raised to "
                   f"{s.false_alarm_hold_seconds:g} s")
        if recent:
            return {"warning": message}
        self.tables.add_warning(time.time(), incident.node_id, "false_alarms", message)
        log_event(log, "false_alarm_threshold", logging.WARNING, node_id=incident.node_id,
                  count=count)
        command = await self.send(who, incident.node_id, "config",
                                  {"hold_seconds": s.false_alarm_hold_seconds})
        return {"warning": message, "command": command}

    def warnings(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.tables.warnings(limit)

    # -- views ------------------------------------------------------------------------------
    def visible(self, who: Principal, nodes: Mapping[str, dict[str, Any]] | None = None,
                *, open_only: bool = False) -> list[Incident]:
        nodes = nodes if nodes is not None else self.nodes()
        return [i for i in self.book.incidents(open_only=open_only)
                if can_see_incident(who.user, i, nodes.get(i.node_id))]

    def summary(self, incident: Incident, node: dict[str, Any] | None) -> dict[str, Any]:
        kel, rw, rt = node_location(node)
        out = incident.as_dict()
        out.update({"kelurahan_code": kel, "rw": rw, "rt": rt,
                    "post_name": (node or {}).get("display_name") or incident.node_id,
                    "node_time_quality": (node or {}).get("time_quality")})
        return out

    def detail(self, who: Principal, incident: Incident,
               node: dict[str, Any] | None) -> dict[str, Any]:
        out = self.summary(incident, node)
        events = []
        ids = self.book.event_ids(incident.incident_id)
        # Event ids are unique per post only: this incident's post's rows (its (node, event id) index).
        rows = {r["event_id"]: r for r in self.store.get_events(ids, incident.node_id)}
        for event_id in ids:
            ev = as_dict(rows.get(event_id))
            if not ev:
                continue
            events.append({"event_id": ev.get("event_id"), "type": ev.get("type"),
                           "priority": ev.get("priority"), "wall_time": ev.get("wall_time"),
                           "time_quality": ev.get("time_quality"),
                           "received_at": ev.get("received_at"),
                           "payload": redact(who.user, event_payload(ev))})
        out["events"] = events
        out["history"] = [
            {**h, "actor": h["actor"] if who.user.is_staff or h["actor"].startswith("post:")
             else "staff"} for h in self.book.history(incident.incident_id)]
        out["snapshots"] = self.snapshot_ids(incident)
        return out

    def snapshot_ids(self, incident: Incident) -> list[dict[str, Any]]:
        wanted = set(self.book.event_ids(incident.incident_id))
        rows = [as_dict(s) for s in self.store.list_snapshots(node_id=incident.node_id)]
        return [{"snapshot_id": r.get("snapshot_id"), "taken_at": r.get("taken_at"),
                 "sealed": bool(r.get("sealed"))}
                for r in rows if r.get("event_id") in wanted]

    async def aclose(self) -> None:
        await self.sirens.aclose()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
