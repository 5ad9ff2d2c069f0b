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
rejection, a refused snapshot is also acknowledged (settled: the post stops resending it).

The batcher commits up to ``ingest.batch_max`` events (or after ``ingest.batch_wait_ms``): verify
(``CachedEventVerifier`` over the received canonical bytes), ``store.commit_events`` (which
rejects only the rows it cannot hold), the coalesced node updates, then ONE ``Ack`` per node
(``central_sync.acks``) and the MQTT PUBACKs of the deliveries the batch settled. Past
``ingest.max_pending_events`` decoded events or ``ingest.max_buffered_messages`` undecoded
messages, ``mqtt_central.ReadGate`` stops reading the broker socket (the broker's own receive
maximum is not enough, docs/scale.md): memory stays bounded whatever is offered.

A node whose rejections exhaust its budget (``central_sync.reject_budget``) is shed until the
budget refills: its messages are counted (``shed``) and settled without being decoded.

Anything malformed, unstorable, unverifiable or raising while handled is rejected: counted in
``stats.rejected`` by reason (``internal`` for an unexpected exception), aggregated per node
(``central_sync.rejections``: one log line and one store write per node per interval) and, when
permanent and nameable, listed in the node's Ack. Locked/busy/unreachable databases are retried
with backoff and nothing is acknowledged until the commit succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import aiomqtt

from central_sync.acks import AckBook, AckCounters, AckWindow, Delivery, Link, publish_all
from central_sync.command_batch import Record, publish_batch
from central_sync.config import CentralConfig
from central_sync.ingest_commit import (
    Batch,
    BatchOutcome,
    BatchVerifier,
    BatchWriter,
    EventMsg,
    RowRejection,
    as_batch_verifier,
)
from central_sync.ingest_decode import decode_events, payload_suspect, unstorable
from central_sync.ingest_p1 import P1Lane
from central_sync.ingest_stats import IngestStats
from central_sync.mqtt_central import (
    Backoff,
    MessageBuffer,
    ReadGate,
    central_presence,
    deliver_inline,
    make_client,
    next_messages,
    paho_of,
    subscriptions,
    worker_client_ids,
)
from central_sync.processes import publish_command
from central_sync.reject_budget import RejectBudget
from central_sync.rejections import RejectionAggregator
from central_sync.snapshot_policy import check_snapshot_envelope
from central_sync.store import Store, is_transient
from central_sync.supervision import link_beats
from edge.errors import SecurityError, WireError
from edge.logs import log_event
from edge.sync.transport import raise_if_cancelling
from edge.sync.wire import (
    EVENT_CHANNELS,
    Command,
    CommandResult,
    EventEnvelope,
    Heartbeat,
    Presence,
    SnapshotEnvelope,
    Topics,
    decode_on_topic_data,
)

log = logging.getLogger("central_sync.ingest")

#: Wire reasons after which resending the same bytes can never succeed.
_PERMANENT_WIRE_REASONS = frozenset({"bad_field"})
#: Messages taken from the client's buffer per wake-up.
_READ_BURST = 1000
#: Longest stretch of decoding before other tasks (the P1 lane, the batcher) get the loop.
_DECODE_SLICE_S = 0.02


class IngestService:
    """Subscribes to the uplink tree, stores what arrives, acknowledges after commit.

    ``verify_event`` is a ``BatchVerifier`` (``central_sync.verify_cache.CachedEventVerifier``)
    or a plain callable raising ``edge.errors.SecurityError`` to reject an event (permanently);
    ``sign_command`` returns the signed command; ``authenticate(node_id, data)``
    (``central_sync.message_auth.MessageAuth``) checks every NON-event message before it is queued,
    raising ``SecurityError`` to drop it; ``on_events(rows)`` is called from a worker
    thread after each committed batch with the NEW rows (as ``CentralStore.list_events`` returns
    them) and may raise without harming ingest. ``client_id`` overrides ``cfg.broker.client_id``;
    ``shared_group`` overrides ``cfg.ingest.shared_group`` (``kentongan-central ingest``).
    """

    def __init__(
        self,
        cfg: CentralConfig,
        store: Store,
        *,
        verify_event: BatchVerifier | Callable[[EventEnvelope], None] | None = None,
        sign_command: Callable[[Command], Command] | None = None,
        authenticate: Callable[[str, dict[str, Any]], None] | None = None,
        on_events: Callable[[list[dict[str, Any]]], None] | None = None,
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
        self.authenticate = authenticate
        self.topics = Topics(cfg.topic_prefix)
        self.stats = IngestStats()
        self.rejections = RejectionAggregator(flood_threshold=cfg.ingest.flood_threshold)
        self.budget = RejectBudget(burst=cfg.ingest.reject_burst, rate_per_s=cfg.ingest.reject_rate_per_s)
        self.connected = asyncio.Event()
        self._links: dict[str, Link] = {}
        self._clients: dict[str, aiomqtt.Client] = {}
        self._acks = AckCounters()
        self._events: deque[EventMsg] = deque()
        self._pending_events = 0
        self._presences: dict[str, Presence] = {}
        self._heartbeats: dict[str, Heartbeat] = {}
        self._snapshots: list[SnapshotEnvelope] = []
        self._results: list[CommandResult] = []
        self._settle: list[Delivery] = []  # PUBACK after the next commit
        self._acks_due = AckBook()  # rejections named before the next commit
        self._wake = asyncio.Event()
        self._batch_full = asyncio.Event()  # set once ``batch_max`` events wait: commit now
        self._room = asyncio.Event()
        self._room.set()
        self._gates: set[ReadGate] = set()
        self._commit_lock = asyncio.Lock()
        #: When any uplink message last arrived (the link beat reports it; None: none yet).
        self.last_message_at: float | None = None
        #: The P1 channel's own connection, queue and commits (``central_sync.ingest_p1``).
        self.p1 = (P1Lane(cfg, BatchWriter(store, verifier, on_events), self.stats, self.rejections, self._count_drop)
                   if cfg.ingest.p1_lane else None)

    @property
    def on_events(self) -> Callable[[list[dict[str, Any]]], None] | None:
        """Called (worker thread) with the NEW rows of each committed batch; the web app sets it."""
        return self.writer.on_events

    @on_events.setter
    def on_events(self, fn: Callable[[list[dict[str, Any]]], None] | None) -> None:
        self.writer.on_events = fn
        if self.p1 is not None:
            self.p1.writer.on_events = fn

    # -- running ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, subscribe and ingest forever (reconnecting with backoff); cancel to stop."""
        helpers = [asyncio.create_task(self._batcher(), name="ingest-batcher"),
                   asyncio.create_task(self._rejection_flusher(), name="ingest-rejections")]
        try:
            await asyncio.gather(*(self._connection_loop(cid) for cid in worker_client_ids(self.cfg)),
                                 *([self.p1.run()] if self.p1 is not None else []))
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())

    async def _connection_loop(self, client_id: str) -> None:
        backoff = Backoff(self.cfg.broker.reconnect_min_seconds, self.cfg.broker.reconnect_max_seconds)
        while True:
            link: Link | None = None
            try:
                client, buffer = make_client(self.cfg, client_id, on_drop=self._count_drop)
                link = Link(client_id, paho_of(client), AckWindow(self.cfg.ingest.ack_window))
                deliver_inline(client, self.topics.up_tree(), self._inline_handler(link))
                async with client:
                    granted = await client.subscribe(subscriptions(self.cfg))
                    refused = [str(rc) for rc in granted if getattr(rc, "is_failure", False)]
                    if refused:  # e.g. an ACL that does not grant central the uplink tree
                        log_event(log, "subscription_refused", logging.ERROR, client_id=client_id, reasons=refused)
                    self._links[client_id] = link
                    self._clients[client_id] = client
                    self.connected.set()
                    backoff.reset()
                    log_event(log, "central_connected", client_id=client_id, host=self.cfg.broker.host,
                              port=self.cfg.broker.port, shared_group=self.cfg.ingest.shared_group)
                    # Retained "online" now that we are subscribed (posts resend at once), "offline" on exit.
                    async with central_presence(client, self.cfg, client_id):
                        # Central's own sight of the broker, for the desk (central_sync.supervision).
                        beat = asyncio.create_task(link_beats(self.store, client_id, lambda: self.last_message_at),
                                                   name=f"link-beat-{client_id}")
                        try:
                            await self._consume(client, buffer, link)
                        finally:
                            beat.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await beat
            except aiomqtt.MqttError as exc:
                raise_if_cancelling(exc)
                log_event(log, "central_disconnected", logging.WARNING, client_id=client_id, error=str(exc)[:200])
            finally:
                if link is not None:
                    link.alive = False
                self._links.pop(client_id, None)
                self._clients.pop(client_id, None)
                if not self._links:
                    self.connected.clear()
            await asyncio.sleep(backoff.next_delay())

    async def _consume(self, client: aiomqtt.Client, buffer: MessageBuffer, link: Link) -> None:
        limit, byte_limit = self.cfg.ingest.max_buffered_messages, self.cfg.ingest.max_buffered_bytes
        gate = ReadGate(client, lambda: (buffer.qsize() >= limit or buffer.nbytes >= byte_limit
                                         or not self._room.is_set()))
        gate.install()
        self._gates.add(gate)
        try:
            while True:
                until = time.monotonic() + _DECODE_SLICE_S
                for message in await next_messages(client, buffer, _READ_BURST):
                    payload = message.payload
                    body = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
                    self.handle(message.topic.value, bytes(body), Delivery(link, message.mid, message.qos))
                    if time.monotonic() >= until:  # a burst of big batches: let an alarm through
                        await asyncio.sleep(0)
                        until = time.monotonic() + _DECODE_SLICE_S
                if not self._room.is_set():
                    await self._room.wait()  # backpressure: the gate stopped reading the socket
                gate.poke()
                self.stats.buffer_peak = max(self.stats.buffer_peak, buffer.peak)
                self.stats.read_pauses_live = gate.pauses
        finally:
            self._gates.discard(gate)
            self.stats.read_pauses += gate.pauses
            self.stats.buffer_peak = max(self.stats.buffer_peak, buffer.peak)

    def _inline_handler(self, link: Link) -> Callable[[str, bytes, int, int], None]:
        handle = self.handle

        def on_message(topic: str, payload: bytes, mid: int, qos: int) -> None:
            handle(topic, payload, Delivery(link, mid, qos))

        return on_message

    def _count_drop(self) -> None:
        self.stats.dropped_qos0 += 1

    def _link(self) -> Link | None:
        for link in self._links.values():
            if link.alive:
                return link
        return None

    # -- per message -----------------------------------------------------------------------------
    async def handle_message(self, topic: str, payload: bytes) -> None:
        """Handle one message outside a broker connection (tests, tools); waits for room."""
        if not self._room.is_set():
            await self._room.wait()
        self.handle(topic, payload, None)

    def handle(self, topic: str, payload: bytes, delivery: Delivery | None) -> None:
        """Handle one uplink message without I/O; never raises (bad input is rejected)."""
        self.stats.received += 1
        self.last_message_at = time.time()
        if self.budget.active and self.budget.exhausted(self._topic_node(topic)):
            # This node's rejection budget is spent: counted, settled, never decoded or verified.
            self._reject(topic, "shed", "rejection budget of the node exhausted")
            self._settle_now(delivery)
            return
        try:
            self._dispatch(topic, payload, delivery)
        except WireError as exc:
            self._reject(topic, exc.reason, exc.detail, permanent=exc.reason in _PERMANENT_WIRE_REASONS,
                         payload=payload)
            self._settle_now(delivery)
        except SecurityError as exc:
            self._reject(topic, exc.reason, exc.detail, permanent=True, payload=payload)
            self._settle_now(delivery)
        except Exception as exc:  # one message never stops ingest
            self._reject(topic, "internal", f"{type(exc).__name__}: {exc}", payload=payload)
            self._settle_now(delivery)

    def _dispatch(self, topic: str, payload: bytes, delivery: Delivery | None) -> None:
        direction, _node, channel = self.topics.parse(topic)
        if direction != "up":
            raise WireError("wrong_topic", f"not an uplink topic: {topic[:120]}")
        if channel in EVENT_CHANNELS:
            self._handle_events(topic, payload, delivery)
            return
        node_id, msg, data = decode_on_topic_data(self.topics, topic, payload)
        problem = unstorable(msg.model_dump(mode="python")) if payload_suspect(payload) else None
        if problem is not None:
            raise WireError(*problem)
        try:
            if self.authenticate is not None:  # unknown_node, revoked, unsigned, bad_signature
                self.authenticate(node_id, data)
            if isinstance(msg, SnapshotEnvelope):
                check_snapshot_envelope(msg)  # images or nothing
        except SecurityError:
            if isinstance(msg, SnapshotEnvelope):
                # Settled for good: acknowledged so the post stops resending it, never stored;
                # the rejection itself is counted and recorded by ``handle``.
                self._acks_due.snapshot(node_id, msg.snapshot_id)
                self._wake.set()
            raise
        if isinstance(msg, SnapshotEnvelope):
            self._snapshots.append(msg)
        elif isinstance(msg, Presence):
            self._presences[node_id] = msg
        elif isinstance(msg, Heartbeat):
            self._heartbeats[node_id] = msg
        elif isinstance(msg, CommandResult):
            self._results.append(msg)
        else:  # pragma: no cover - decode_on_topic only yields uplink kinds on uplink topics
            raise WireError("wrong_kind", type(msg).__name__)
        if delivery is not None:
            self._settle.append(delivery)
        self._wake.set()

    def _handle_events(self, topic: str, payload: bytes, delivery: Delivery | None) -> None:
        decoded = decode_events(self.topics, topic, payload)
        if decoded.is_batch:
            self.stats.event_batches += 1
            self.stats.batched_events += len(decoded.good) + len(decoded.bad)
        for b in decoded.bad:
            self._reject(topic, b.reason, b.detail, permanent=b.permanent, node_id=decoded.node_id,
                         event_id=b.event_id)
        if decoded.good:
            self._events.append(EventMsg(topic, decoded.node_id, decoded.good, delivery))
            self._pending_events += len(decoded.good)
            if self._pending_events >= self.cfg.ingest.batch_max:
                self._batch_full.set()
            if self._pending_events >= self.cfg.ingest.max_pending_events:
                self._room.clear()
        elif delivery is not None:
            self._settle.append(delivery)
        self._wake.set()

    def _settle_now(self, delivery: Delivery | None) -> None:
        if delivery is not None and delivery.puback():
            self.stats.pubacks += 1

    def _reject(self, topic: str, reason: str, detail: str, *, permanent: bool = False,
                node_id: str | None = None, event_id: str | None = None, payload: bytes | None = None) -> None:
        """Count and aggregate one rejection; name it in the node's next Ack when permanent."""
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        node_id = node_id or self._topic_node(topic)
        if event_id is None and payload is not None and permanent and node_id:
            event_id = _event_id_of(payload)
        self.rejections.add(node_id, reason, topic, detail)
        if reason not in ("shed", "internal"):  # "internal": not the sender's doing
            self.budget.charge(node_id)
        if permanent and event_id and node_id:
            self._acks_due.reject(node_id, event_id, reason)
            self._wake.set()

    def _topic_node(self, topic: str) -> str | None:
        try:
            node = self.topics.parse(topic)[1]
        except WireError:
            return None
        return node if unstorable(node) is None and len(node) <= 64 else None

    # -- batching --------------------------------------------------------------------------------
    async def _batcher(self) -> None:
        wait_s = self.cfg.ingest.batch_wait_ms / 1000
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if wait_s > 0 and self._pending_events < self.cfg.ingest.batch_max:
                # One timed wait per batch (not a wake-up per arriving message): until the
                # batch is full or ``batch_wait_ms`` has passed.
                self._batch_full.clear()
                deadline = loop.time() + wait_s
                while self._pending_events < self.cfg.ingest.batch_max:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._batch_full.wait(), left)
            try:
                await self._commit_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the batcher die
                log_event(log, "batch_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
                await asyncio.sleep(0.5)

    def _has_work(self) -> bool:
        return bool(self._events or self._presences or self._heartbeats or self._snapshots or self._results
                    or self._settle or self._acks_due)

    async def flush(self) -> None:
        """Commit and acknowledge everything queued so far, and write the rejection summaries."""
        while self._has_work():
            await self._commit_once()
        await self.flush_rejections()

    def _take(self) -> tuple[Batch, list[Delivery], AckBook]:
        events: list[EventMsg] = []
        n = 0
        while self._events and (not events or n + len(self._events[0].envs) <= self.cfg.ingest.batch_max):
            msg = self._events.popleft()
            events.append(msg)
            n += len(msg.envs)
        self._pending_events -= n
        if self._pending_events < self.cfg.ingest.max_pending_events:
            self._room.set()
            for gate in self._gates:
                gate.poke()
        if self._gates:
            self.stats.read_pauses_live = sum(gate.pauses for gate in self._gates)
        batch = Batch(events, list(self._presences.values()), list(self._heartbeats.values()), self._snapshots,
                      self._results)
        settle = self._settle + [m.delivery for m in events if m.delivery is not None]
        acks = self._acks_due
        self._presences, self._heartbeats, self._snapshots, self._results = {}, {}, [], []
        self._settle, self._acks_due = [], AckBook()
        if not self._has_work():
            self._wake.clear()
        return batch, settle, acks

    async def _commit_once(self) -> None:
        async with self._commit_lock:
            batch, settle, acks = self._take()
            try:
                out = await self._with_store(self.writer.write, batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not transient and not the input's fault: the nodes resend
                log_event(log, "batch_not_committed", logging.ERROR, events=sum(len(m.envs) for m in batch.events),
                          error=f"{type(exc).__name__}: {exc}"[:300])
                out = BatchOutcome(rejections=[RowRejection(m.topic, m.node_id, "internal", str(exc)[:200], None)
                                               for m in batch.events for _ in m.envs])
            self.stats.batches += 1 if batch.events else 0
            self.stats.inserted += out.inserted
            self.stats.duplicates += out.duplicates
            self.stats.snapshots += len(out.snapshots)
            self.stats.updates += out.updates
            self.stats.place_mismatches += out.place_mismatches
            for node, event_id in out.stored:
                acks.stored(node, event_id)
            for node, snapshot_id in out.snapshots:
                acks.snapshot(node, snapshot_id)
            for r in out.rejections:
                self._reject(r.topic, r.reason, r.detail, node_id=r.node_id)
                if r.event_id is not None:
                    acks.reject(r.node_id, r.event_id, r.reason)
            before = self._acks.event_ids
            publish_all(acks, self._link(), self.topics, time.time(), self._acks)
            self.stats.acked += self._acks.event_ids - before
            self.stats.acks_published, self.stats.acks_unsent = self._acks.published, self._acks.unsent
            self.stats.acks_qos0 = self._acks.qos0
            for delivery in settle:
                self._settle_now(delivery)

    # -- rejections ------------------------------------------------------------------------------
    async def _rejection_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.ingest.rejection_interval_s)
            with contextlib.suppress(Exception):
                await self.flush_rejections()

    async def flush_rejections(self) -> None:
        """Write the aggregated rejections of the interval in one store call."""
        summaries = self.rejections.drain()
        self.stats.floods, self.stats.flooding = self.rejections.floods, dict(self.rejections.flooding)
        if not summaries:
            return
        try:
            await self._with_store(self.store.record_rejections, summaries)
        except Exception as exc:  # counted and logged already
            log_event(log, "rejections_not_recorded", logging.ERROR, error=str(exc)[:200], rows=len(summaries))

    # -- commands --------------------------------------------------------------------------------
    async def send_command(self, cmd: Command, *, issued_by: str) -> None:
        """Sign (if configured), record and publish a command (QoS 1); ``CentralError`` if offline."""
        client = next(iter(self._clients.values()), None)
        await publish_command(client, self.store, self.topics, self.sign_command, cmd, issued_by=issued_by)

    async def send_commands(self, cmds: Sequence[Command], *, record: Record) -> list[Command]:
        """Many commands at once (``central_sync.command_batch``)."""
        client = next(iter(self._clients.values()), None)
        return await publish_batch(client, self.topics, self.sign_command, cmds, record)

    # -- store access ----------------------------------------------------------------------------
    async def _with_store(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store call in a thread, retrying locked/busy errors with capped backoff."""
        backoff = Backoff(0.05, self.cfg.ingest.db_retry_max_seconds)
        while True:
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.stats.store_retries += 1
                delay = backoff.next_delay()
                log_event(log, "store_busy_retry", logging.WARNING, error=str(exc)[:200], delay_s=round(delay, 3))
                await asyncio.sleep(delay)


def _event_id_of(payload: bytes) -> str | None:
    """The event id of a rejected single event envelope, when it can be named in an Ack."""
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("kind") != "event":
        return None
    event_id = data.get("event_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 64 or unstorable(event_id) is not None:
        return None
    return event_id
