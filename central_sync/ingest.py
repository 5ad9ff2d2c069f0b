"""Central ingest: store-and-forward sync, central side.

Every uplink message goes through ``IngestService.handle(topic, payload, delivery)``, which does
no I/O and never raises, so it is called right where paho parses the message
(``mqtt_central.deliver_inline``: no queue, no task hop per message):

* ``event``: one envelope or an ``event_batch`` (``central_sync.ingest_decode``), queued whole for
  the next commit batch; envelopes for another node than the topic's are rejected PERMANENTLY
  (``wrong_node``) in the topic node's Ack.
* ``presence`` / ``heartbeat``: coalesced per node (the newest wins) and written with the next
  batch in one store call (``apply_node_updates``), not one transaction per message.
* ``snapshot`` / ``cmd_result``: written with the next batch.
* ``event/p1``: consumed by ``central_sync.ingest_p1.P1Lane`` on its own connection, queue and
  commits (alarms ahead of any backlog); here, if one arrives anyway, it is an ordinary event.

Every non-event message is first authenticated (``authenticate``, ``central_sync.message_auth``:
registry status and the node key's signature); a refused one is dropped and counted like any
rejection, a refused snapshot is also acknowledged (settled: the post stops resending it). The
key cache behind that check (``keys``) is refreshed only off the event loop: ``run`` awaits its
first preload in a worker thread before it subscribes, then ``verify_cache.keep_fresh`` checks
the registry's generation every ``check_every_s`` in a worker thread; the loop only reads it.

The batcher commits up to ``ingest.batch_max`` events (or after ``ingest.batch_wait_ms``; a
small batch without a P1 event lingers until ``ingest.linger_events`` wait or its oldest event
has waited ``ingest.linger_ms``: group commit, ``Committer.linger``): verify
(``CachedEventVerifier`` over the received bytes), ``store.commit_events`` (which
rejects only the rows it cannot hold), the coalesced node updates, then ONE ``Ack`` per node
(``central_sync.acks``) and the MQTT PUBACKs of the deliveries the batch settled. Past
``ingest.max_pending_events`` decoded events or ``ingest.max_buffered_messages`` undecoded
messages, ``read_gate.ReadGate`` stops reading the broker socket (the broker's own receive
maximum is not enough, docs/scale.md): memory stays bounded whatever is offered.

A node whose rejections exhaust its budget (``central_sync.reject_budget``) is shed until the
budget refills: its messages are counted (``shed``) and settled without being decoded.

Anything malformed, unstorable, unverifiable or raising while handled is rejected: counted in
``stats.rejected`` by reason (``internal`` for an unexpected exception), aggregated per node
(``central_sync.rejections``: one log line and one store write per node per interval) and, when
permanent and nameable, listed in the node's Ack. Locked/busy/unreachable databases are retried
with backoff and nothing is acknowledged until the commit succeeds.

This module wires the parts together (``IngestService`` is the one entry point):

* ``central_sync.ingest_connection.BrokerSessions``: the broker connections (connect, subscribe,
  central's presence, the link beat, read gates, reconnect with backoff);
* ``central_sync.ingest_dispatch.UplinkDispatcher``: per message (decode, authenticate, queue,
  reject, the rejection budget);
* ``central_sync.ingest_queue.IngestQueue``: what waits for the next commit, and the wake-up and
  backpressure signals between the two sides;
* ``central_sync.ingest_batcher.Committer``: the batcher and commit loop, Acks, PUBACKs, the
  store retries and the rejection summaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from central_sync.acks import AckBook, Delivery
from central_sync.command_batch import Record, publish_batch
from central_sync.config import CentralConfig
from central_sync.ingest_batcher import Committer
from central_sync.ingest_commit import BatchVerifier, BatchWriter, as_batch_verifier
from central_sync.ingest_connection import BrokerSessions
from central_sync.ingest_dispatch import Authenticate, UplinkDispatcher
from central_sync.ingest_p1 import P1Lane
from central_sync.ingest_queue import IngestQueue
from central_sync.ingest_stats import IngestStats
from central_sync.message_auth import MessageAuth
from central_sync.mqtt_central import worker_client_ids
from central_sync.processes import publish_command
from central_sync.reject_budget import RejectBudget
from central_sync.rejections import RejectionAggregator
from central_sync.store import Store
from central_sync.verify_cache import KeyCache, keep_fresh
from edge.errors import first_leaf
from edge.logs import log_event
from edge.sync.wire import Command, EventEnvelope, Topics

__all__ = ["IngestService"]

log = logging.getLogger("central_sync.ingest")

#: ``on_events(rows)``: the NEW rows of a committed batch (worker thread).
OnEvents = Callable[[list[dict[str, Any]]], None]


class IngestService:
    """Subscribes to the uplink tree, stores what arrives, acknowledges after commit.

    ``verify_event`` is a ``BatchVerifier`` (``central_sync.verify_cache.CachedEventVerifier``)
    or a plain callable raising ``edge.errors.SecurityError`` to reject an event (permanently);
    ``sign_command`` returns the signed command; ``authenticate(node_id, data, payload)``
    (``central_sync.message_auth.MessageAuth``) checks every NON-event message before it is queued,
    raising ``SecurityError`` to drop it; ``on_events(rows)`` is called from a worker
    thread after each committed batch with the NEW rows (as ``CentralStore.list_events`` returns
    them) and may raise without harming ingest. ``client_id`` overrides ``cfg.broker.client_id``;
    ``shared_group`` overrides ``cfg.ingest.shared_group`` (``kentongan-central ingest``).
    When ``authenticate`` is a ``MessageAuth``, ``run`` refreshes its key cache (the one the
    loop thread reads; central's event check shares it) off the event loop.
    """

    def __init__(
        self,
        cfg: CentralConfig,
        store: Store,
        *,
        verify_event: BatchVerifier | Callable[[EventEnvelope], None] | None = None,
        sign_command: Callable[[Command], Command] | None = None,
        authenticate: Authenticate | None = None,
        on_events: OnEvents | None = None,
        client_id: str | None = None,
        shared_group: str | None = None,
    ) -> None:
        if client_id is not None:
            cfg = cfg.model_copy(update={"broker": cfg.broker.model_copy(update={"client_id": client_id})})
        if shared_group is not None:
            cfg = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"shared_group": shared_group})})
        self.cfg = cfg
        self.store = store
        verifier = as_batch_verifier(verify_event)
        self.writer = BatchWriter(store, verifier, on_events)
        self.sign_command = sign_command
        self.topics = Topics(cfg.topic_prefix)
        self.stats = IngestStats()
        self.rejections = RejectionAggregator(flood_threshold=cfg.ingest.flood_threshold)
        self.queue = IngestQueue(cfg.ingest)
        self.dispatcher = UplinkDispatcher(
            self.topics, self.queue, self.stats, self.rejections,
            RejectBudget(burst=cfg.ingest.reject_burst, rate_per_s=cfg.ingest.reject_rate_per_s), authenticate)
        self.sessions = BrokerSessions(cfg, store, self.topics, self.queue, self.stats, self.dispatcher.handle,
                                       lambda: self.dispatcher.last_message_at)
        self.committer = Committer(cfg.ingest, store, self.writer, self.queue, self.dispatcher, self.stats,
                                   self.rejections, self.topics, self.sessions.link)
        self.connected = self.sessions.connected
        #: Backpressure: cleared while too many decoded events wait (``IngestQueue.room``).
        self._room = self.queue.room
        #: The P1 channel's own connection, queue and commits (``central_sync.ingest_p1``).
        self.p1 = (P1Lane(cfg, BatchWriter(store, verifier, on_events), self.stats, self.rejections,
                          self.sessions.count_drop)
                   if cfg.ingest.p1_lane else None)

    @property
    def on_events(self) -> OnEvents | None:
        """Called (worker thread) with the NEW rows of each committed batch; the web app sets it."""
        return self.writer.on_events

    @on_events.setter
    def on_events(self, fn: OnEvents | None) -> None:
        self.writer.on_events = fn
        if self.p1 is not None:
            self.p1.writer.on_events = fn

    @property
    def budget(self) -> RejectBudget:
        """The per-node rejection budget (``central_sync.reject_budget``)."""
        return self.dispatcher.budget

    @budget.setter
    def budget(self, budget: RejectBudget) -> None:
        self.dispatcher.budget = budget

    @property
    def authenticate(self) -> Authenticate | None:
        """The check of every non-event message (``central_sync.message_auth``), if any."""
        return self.dispatcher.authenticate

    @authenticate.setter
    def authenticate(self, fn: Authenticate | None) -> None:
        self.dispatcher.authenticate = fn

    @property
    def last_message_at(self) -> float | None:
        """When any uplink message last arrived (the link beat reports it; None: none yet)."""
        return self.dispatcher.last_message_at

    @property
    def _acks_due(self) -> AckBook:
        """The Ack entries named before the next commit (tests look at them)."""
        return self.queue.acks_due

    @property
    def keys(self) -> KeyCache | None:
        """The key cache ``authenticate`` reads on the event loop (refreshed by ``run`` off it)."""
        auth = self.dispatcher.authenticate
        return auth.keys if isinstance(auth, MessageAuth) else None

    # -- running ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, subscribe and ingest forever (reconnecting with backoff); cancel to stop."""
        keys = self.keys
        if keys is not None:  # filled before the first message, off the loop
            try:
                await asyncio.to_thread(keys.refresh, True)
            except Exception as exc:  # kept going: missing keys are looked up singly meanwhile
                _key_refresh_failed(exc)
        helpers = [asyncio.create_task(self.committer.run(), name="ingest-batcher"),
                   asyncio.create_task(self.committer.rejection_flusher(), name="ingest-rejections")]
        if keys is not None:
            helpers.append(asyncio.create_task(keep_fresh(keys, _key_refresh_failed), name="ingest-keys"))
        try:
            # A TaskGroup, not gather: cancelled (or one connection failing), ``run`` returns only
            # once every connection has finished its disconnect, so none outlives the service
            # (gather completes at the first cancelled child and leaves the others running).
            async with asyncio.TaskGroup() as tg:
                for cid in worker_client_ids(self.cfg):
                    tg.create_task(self.sessions.run(cid), name=f"ingest-connection-{cid}")
                if self.p1 is not None:
                    tg.create_task(self.p1.run(), name="ingest-p1-lane")
        except BaseExceptionGroup as group:  # the first failure as itself (e.g. BrokerUnsupported)
            raise first_leaf(group) from None
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())

    # -- per message -----------------------------------------------------------------------------
    async def handle_message(self, topic: str, payload: bytes) -> None:
        """Handle one message outside a broker connection (tests, tools); waits for room."""
        if not self._room.is_set():
            await self._room.wait()
        self.handle(topic, payload, None)

    def handle(self, topic: str, payload: bytes, delivery: Delivery | None) -> None:
        """Handle one uplink message without I/O; never raises (bad input is rejected)."""
        self.dispatcher.handle(topic, payload, delivery)

    # -- committing ------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Commit and acknowledge everything queued so far, and write the rejection summaries."""
        await self.committer.flush()

    async def _commit_once(self) -> None:
        await self.committer.commit_once()

    async def flush_rejections(self) -> None:
        """Write the aggregated rejections of the interval in one store call."""
        await self.committer.flush_rejections()

    # -- commands --------------------------------------------------------------------------------
    async def send_command(self, cmd: Command, *, issued_by: str) -> None:
        """Sign (if configured), record and publish a command (QoS 1); ``CentralError`` if offline."""
        await publish_command(self.sessions.client(), self.store, self.topics, self.sign_command, cmd,
                              issued_by=issued_by)

    async def send_commands(self, cmds: Sequence[Command], *, record: Record) -> list[Command]:
        """Many commands at once (``central_sync.command_batch``)."""
        return await publish_batch(self.sessions.client(), self.topics, self.sign_command, cmds, record)


def _key_refresh_failed(exc: Exception) -> None:
    log_event(log, "key_refresh_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}"[:300])
