"""Sirens central starts and stops (docs/desk.md, "Siren control").

* **Incident warnings.** The RW warnings of an incident (``Router.rw_warnings``) are recorded as
  the activation ``incident-<incident id>`` before they are sent; resolving the incident or
  marking it a false alarm sends each of those posts a signed ``stop`` naming the ``sound``
  command ids it was sent, so the post stops exactly what central started (a local alarm that
  took over the siren keeps sounding).
  The warnings themselves are queued (``queue_incident_warnings``, any thread) and published
  by one coroutine (``publish_warnings``) as coalesced batches (``central_sync.command_batch``:
  signed in a worker thread, recorded in one transaction, a bounded window in flight) at a
  bounded rate: a burst of incidents in a large RW is a paced series of batches, not one task,
  signature and commit per command all at once.
* **Group activation.** An RT, an RW, a kelurahan or the whole city: one ``sound`` per post,
  signed, recorded and published as one batch (``central_sync.command_batch``); each post's
  command result is its confirmation. ``stop`` ends the group the same way as an incident.

Command results are read from what ingest stored (``commands`` table), never from the wire here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from central_sync.errors import CentralError
from central_sync.incidents import Incident
from central_sync.routing import make_command
from central_sync.siren_warnings import WarningQueue, incident_activation_id
from central_sync.store.siren_tables import UNSENT, SirenTables
from edge.incidents import INCIDENTS, IncidentType
from edge.logs import log_event
from edge.sync.wire import Command

log = logging.getLogger("central_sync.siren_control")

ScopeKind = Literal["rt", "rw", "kelurahan", "city"]
#: The most RW warnings one coalesced batch publishes (one commit of that many rows).
WARNING_BATCH = 250
#: RW warnings published per second at most: a burst of incidents in large RWs (thousands of
#: warnings) is spread out instead of taking the broker, the database's write lock and the CPU
#: from ingest (alarms are acknowledged first; a warning waits at most its share of the burst).
WARNING_RATE = 500.0
Record = Callable[[list[Command]], None]


@runtime_checkable
class BatchSender(Protocol):
    async def send_commands(self, cmds: Sequence[Command], *, record: Record) -> list[Command]: ...


class SirenControlError(CentralError):
    """A group activation or stop that cannot be done (bad scope, no posts, not connected)."""


@dataclass(frozen=True)
class Scope:
    """Which posts a group activation reaches."""

    kind: ScopeKind
    kelurahan_code: str | None = None
    rw: int | None = None
    rt: int | None = None

    def __post_init__(self) -> None:
        need = {"rt": 3, "rw": 2, "kelurahan": 1, "city": 0}[self.kind]
        given = [self.kelurahan_code, self.rw, self.rt][:need]
        if any(v is None for v in given):
            raise SirenControlError(f"a {self.kind} scope needs kelurahan_code, rw and rt down to its level")

    @property
    def key(self) -> str:
        parts = [str(p) for p in (self.kelurahan_code, self.rw, self.rt) if p is not None]
        return f"{self.kind}:{'/'.join(parts)}" if parts else self.kind

    def contains(self, post: Mapping[str, Any]) -> bool:
        if self.kind == "city":
            return True
        if post.get("kelurahan_code") != self.kelurahan_code:
            return False
        if self.kind == "kelurahan":
            return True
        if post.get("rw") is None or int(post["rw"]) != self.rw:
            return False
        return self.kind == "rw" or (post.get("rt") is not None and int(post["rt"]) == self.rt)


class SirenControl:
    """Starts, records and stops the sirens of groups and incident warnings."""

    def __init__(self, tables: SirenTables, sender: BatchSender | None, *, ttl_s: float) -> None:
        self.tables = tables
        self.sender = sender
        self.ttl_s = ttl_s
        self._tasks: set[asyncio.Task[Any]] = set()
        self._warn_lock = threading.Lock()
        self.warnings = WarningQueue(tables)
        self._publishing = False

    # -- incident warnings ---------------------------------------------------------------------
    def record_incident_warnings(self, incident: Incident, cmds: Sequence[Command]) -> None:
        """Remember the RW warnings of ``incident`` (before they are published)."""
        if not cmds:
            return
        act_id = incident_activation_id(incident.incident_id)
        self.tables.add_activation(act_id, kind="incident", scope=f"incident:{incident.incident_id}",
                                   label=f"{incident.type} {incident.node_id}", incident_id=incident.incident_id,
                                   created_by="central:routing", created_at=time.time())
        self.tables.add_commands(act_id, "start", cmds, issued_by="central:routing", link_only=True)

    def queue_incident_warnings(self, incident: Incident, cmds: Sequence[Command]) -> bool:
        """Record the warnings (linked to the incident's activation, so a resolve can stop them)
        and queue them for ``publish_warnings``, one per post (``siren_warnings``; any thread).
        True: the caller must start ``publish_warnings`` on the loop (nothing is publishing
        the queue now)."""
        if not cmds or self.sender is None:
            return False
        self.warnings.add(incident, list(cmds))
        with self._warn_lock:
            start, self._publishing = not self._publishing, True
        return start

    async def publish_warnings(self) -> int:
        """Publish the queued warnings in batches of up to ``WARNING_BATCH``, at most
        ``WARNING_RATE`` a second, until the queue is empty; returns how many were handed to
        the broker. A failed batch is logged (its
        commands are not retried: a warning is only worth its moment)."""
        sent = 0
        while True:
            with self._warn_lock:
                batch = self.warnings.take(WARNING_BATCH) if self.sender is not None else []
                if not batch or self.sender is None:
                    self._publishing = False
                    return sent
            started = time.monotonic()
            try:
                await self.sender.send_commands(batch, record=self._record_warnings)
                sent += len(batch)
                log_event(log, "rw_warnings_sent", count=len(batch), lag_s=round(self.warnings.lag_s, 3),
                          queued=len(self.warnings))
                await asyncio.sleep(max(0.0, len(batch) / WARNING_RATE - (time.monotonic() - started)))
            except asyncio.CancelledError:
                with self._warn_lock:
                    self._publishing = False
                raise
            except Exception as exc:
                log_event(log, "rw_warnings_not_sent", logging.WARNING, count=len(batch), error=str(exc)[:200])

    def drop_queued_warnings(self) -> None:
        """Forget the queue (there is no loop to publish it on)."""
        with self._warn_lock:
            self.warnings.clear()
            self._publishing = False

    def _record_warnings(self, signed: list[Command]) -> None:
        self.tables.record_sent(signed, issued_by="central:routing")

    async def stop_incident(self, incident_id: str, by: str) -> dict[str, Any]:
        """Stop every activation recorded for the incident (its RW warnings, groups started
        for it). Returns {activation id: stop commands sent}."""
        out: dict[str, Any] = {}
        cancelled = await asyncio.to_thread(self.warnings.cancel, incident_id)
        if cancelled:
            out["cancelled"] = cancelled
            log_event(log, "rw_warnings_cancelled", incident_id=incident_id, count=cancelled)
        for row in await asyncio.to_thread(self.tables.of_incident, incident_id):
            out[str(row["activation_id"])] = await self.stop(str(row["activation_id"]), by)
        return out

    # -- groups --------------------------------------------------------------------------------
    def targets(self, scope: Scope, posts: Mapping[str, Mapping[str, Any]]) -> list[str]:
        return sorted(node_id for node_id, post in posts.items() if scope.contains(post))

    async def activate(self, scope: Scope, incident_type: str, posts: Mapping[str, Mapping[str, Any]], *,
                       by: str, label: str, incident_id: str | None = None) -> dict[str, Any]:
        """One ``sound`` per post of ``scope``, published as one batch; returns the activation."""
        try:
            kind = IncidentType(incident_type)
        except ValueError:
            raise SirenControlError(f"unknown incident type {incident_type!r}") from None
        if self.sender is None:
            raise SirenControlError("central has no broker connection for commands")
        node_ids = self.targets(scope, posts)
        if not node_ids:
            raise SirenControlError(f"no posts in {scope.key}")
        act_id = f"group-{uuid.uuid4().hex}"
        pattern = INCIDENTS[kind].pattern
        cmds = [make_command(n, "sound", {"incident_type": kind.value, "pattern": pattern,
                                          "reason": "group", "activation": act_id},
                             issuer=f"web:{by}", ttl_s=self.ttl_s) for n in node_ids]
        created = time.time()

        def record(signed: list[Command]) -> None:
            self.tables.add_activation(act_id, kind="group", scope=scope.key, label=label[:120],
                                       incident_id=incident_id, created_by=by, created_at=created)
            self.tables.add_commands(act_id, "start", signed, issued_by=by)

        await self._send(cmds, record)
        log_event(log, "group_activated", activation_id=act_id, scope=scope.key, posts=len(node_ids),
                  incident_type=kind.value, by=by)
        return {"activation_id": act_id, "scope": scope.key, "posts": len(node_ids), "created_at": created}

    async def stop(self, activation_id: str, by: str) -> dict[str, Any]:
        """A signed targeted ``stop`` to every post the activation sounded (again if asked
        again: a post that missed the first stop gets another)."""
        if await asyncio.to_thread(self.tables.get, activation_id) is None:
            raise SirenControlError(f"no activation {activation_id}")
        await asyncio.to_thread(self.tables.mark_stopped, activation_id, by, time.time())
        started = await asyncio.to_thread(self._to_stop, activation_id)
        if not started:
            return {"activation_id": activation_id, "stops": 0}
        if self.sender is None:
            raise SirenControlError("central has no broker connection for commands")
        cmds = [make_command(node_id, "stop", {"command_ids": ids[-64:], "activation": activation_id},
                             issuer=f"web:{by}" if not by.startswith("central:") else by, ttl_s=self.ttl_s)
                for node_id, ids in sorted(started.items())]

        def record(signed: list[Command]) -> None:
            self.tables.add_commands(activation_id, "stop", signed, issued_by=by)

        await self._send(cmds, record)
        log_event(log, "sirens_stopped", activation_id=activation_id, posts=len(cmds), by=by)
        return {"activation_id": activation_id, "stops": len(cmds)}

    def _to_stop(self, activation_id: str) -> dict[str, list[str]]:
        """The ``sound`` command ids to stop, by post. An incident's RW warning shared with
        other incidents (``siren_warnings``: merged) is stopped with the last of them to close:
        its own and the ones merged into (named as the post knows them), none that another
        open incident still has."""
        started = self.tables.started(activation_id)
        if not activation_id.startswith("incident-"):
            return started
        rows = self.tables.warning_rows(self.tables.warning_nodes(activation_id))
        live: set[str] = set()  # command ids an open incident still wants
        wanted: dict[str, set[str]] = {}
        for r in rows:
            real = r["merged_into"] or (None if r["status"] in UNSENT else r["command_id"])
            if real is None:
                continue
            if not r["stopped"]:
                live.add(real)
            if r["activation_id"] == activation_id:
                wanted.setdefault(r["node_id"], set()).add(real)
        return {node: sorted(ids - live) for node, ids in wanted.items() if ids - live}

    async def _send(self, cmds: list[Command], record: Record) -> None:
        """Send ``cmds``; return once they are recorded (the activation page can show them),
        while publishing goes on in the background: for a city that takes seconds, and the
        confirmations start arriving meanwhile. Not connected (nothing recorded): raised."""
        assert self.sender is not None
        loop = asyncio.get_running_loop()
        recorded = asyncio.Event()

        def record_then_tell(signed: list[Command]) -> None:
            record(signed)
            loop.call_soon_threadsafe(recorded.set)

        task = loop.create_task(self.sender.send_commands(cmds, record=record_then_tell))
        self._tasks.add(task)
        task.add_done_callback(self._sent)
        waiter = loop.create_task(recorded.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if task.done() and task.exception() is not None and not recorded.is_set():
            raise SirenControlError(str(task.exception())[:200])

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log_event(log, "siren_commands_not_all_published", logging.ERROR,
                      error=str(task.exception())[:200])

    async def aclose(self) -> None:
        """Let publishing in progress finish (bounded), then cancel what is left."""
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=10)
            for task in pending:
                task.cancel()

    # -- what the desk shows -------------------------------------------------------------------
    def status(self, activation_id: str, *, answered_after: float | None = None) -> dict[str, Any] | None:
        """Counts confirmed / failed / pending (and the stops' counts), per-post rows (only
        those answered after ``answered_after`` when given)."""
        row = self.tables.get(activation_id)
        if row is None:
            return None
        now = time.time()
        counts = self.tables.counts(activation_id)
        stops = self.tables.counts(activation_id, "stop")
        posts = self.tables.posts(activation_id, answered_after=answered_after)
        for p in posts:
            p["state"] = _post_state(p, now)
        return {**dict(row), "now": now,
                "counts": {"confirmed": counts.get("ok", 0), "failed": counts.get("failed", 0),
                           "pending": counts.get("sent", 0), "merged": counts.get("merged", 0),
                           "cancelled": counts.get("cancelled", 0), "total": sum(counts.values())},
                "stops": {"confirmed": stops.get("ok", 0), "failed": stops.get("failed", 0),
                          "pending": stops.get("sent", 0), "total": sum(stops.values())},
                "posts": posts}

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        return [dict(r) for r in self.tables.recent(limit)]


def _post_state(p: Mapping[str, Any], now: float) -> str:
    if p["status"] == "ok":
        return "confirmed"
    if p["status"] in ("failed", *UNSENT):
        return str(p["status"])
    return "no_answer" if p.get("expires_at") and now > float(p["expires_at"]) else "pending"
