"""Central's P1 lane: alarms committed and acknowledged ahead of any backlog.

A post publishes each P1 (alarm) event first on its own channel ``{prefix}/up/{node}/event/p1``
and then, as before, on ``{prefix}/up/{node}/event`` (docs/protocol.md, "P1 channel"). Ingest
consumes the P1 channel on a SEPARATE broker connection (client id ``<client_id>-p1``, in the
shared group of the process when there is one) with its own small queue, its own commit loop
(no batching wait, no commit lock shared with the backlog) and its own Acks on that
connection. So when a thousand posts reconnect with a thousand queued events each, the backlog
waits in the broker's queue of the main connection while a P1 has its own queue, socket and
commit: it is stored and acknowledged in well under a second.

Semantics are the normal event path's: every envelope is validated, verified (same verifier,
same key cache and replay log) and committed idempotently by ``event_id``, so the copy that
arrives later on the normal channel is a duplicate (acknowledged again, stored once). Only
priority-1 envelopes may use the lane: anything else is rejected permanently (``not_p1``) and
named in the node's Ack, so a post cannot jump its backlog ahead of other posts' alarms.

The lane does not announce central presence (no retained state, no last will): the main
connection does. If the lane is down, P1s still arrive on the normal channel.

Own process (``P1Process``, ``kentongan-central ingest --lane p1``): in one process the lane
shares the interpreter lock and the event loop with bulk ingest, which decodes and verifies a
reconnecting fleet's backlog flat out; a P1 then waits for CPU behind it (measured: P1 p99 2.5-10 s
with 1,000 posts draining 1,000 events each). Run as its own process (systemd
``kentongan-ingest-p1.service``, higher ``CPUWeight``), with the bulk workers started with
``--lane bulk``, the lane has a core's share of its own. ``run`` (all-in-one) keeps the lane
in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from central_sync.acks import AckBook, AckCounters, AckWindow, Delivery, Link, publish_all
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
from central_sync.ingest_decode import decode_events
from central_sync.ingest_stats import IngestStats
from central_sync.mqtt_central import Backoff, MessageBuffer, make_client, next_messages
from central_sync.mqtt_session import SessionGuard
from central_sync.read_gate import ReadGate
from central_sync.rejections import RejectionAggregator
from central_sync.store import Store
from central_sync.store_retry import call_retrying
from edge.errors import WireError
from edge.logs import log_event
from edge.sync.transport import paho_client, raise_if_cancelling, session, subscribe
from edge.sync.wire import P1_CHANNEL, EventEnvelope, Topics

log = logging.getLogger("central_sync.ingest_p1")

#: Messages taken from the lane's buffer per wake-up.
_READ_BURST = 200


def p1_client_id(client_id: str) -> str:
    """The lane's fixed MQTT client id for an ingest process whose base client id is ``client_id``."""
    return f"{client_id}-p1"


def p1_subscription(cfg: CentralConfig) -> tuple[str, SubscribeOptions]:
    """The lane's topic filter: every node's P1 channel (in the process's shared group, if any)."""
    topic = Topics(cfg.topic_prefix).up_wildcard(P1_CHANNEL)
    opts = SubscribeOptions(qos=1)
    group = cfg.ingest.shared_group
    return (topic if group is None else f"$share/{group}/{topic}"), opts


def _disconnector(client: aiomqtt.Client) -> Callable[[], None]:
    """Ends ``client``'s connection (a session reset, ``central_sync.mqtt_session``)."""
    mqtt = paho_client(client)

    def reset() -> None:
        mqtt.disconnect()

    return reset


class P1Lane:
    """The P1 channel's consumer: own connection, own queue, own commits and Acks.

    ``writer`` is a ``BatchWriter`` of its own (sharing the store, verifier and ``on_events``
    with the main path); ``stats`` and ``rejections`` are the ingest process's, so counters and
    rejection summaries cover both paths."""

    def __init__(self, cfg: CentralConfig, writer: BatchWriter, stats: IngestStats,
                 rejections: RejectionAggregator, on_drop: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.writer = writer
        self.stats = stats
        self.rejections = rejections
        self.topics = Topics(cfg.topic_prefix)
        self.client_id = p1_client_id(cfg.broker.client_id)
        self.connected = asyncio.Event()
        self._on_drop = on_drop
        self._link: Link | None = None
        self._acks = AckCounters()
        self._events: deque[EventMsg] = deque()
        self._pending = 0
        self._settle: list[Delivery] = []
        self._acks_due = AckBook()
        self._wake = asyncio.Event()

    # -- running ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, subscribe and commit P1s forever (reconnecting with backoff); cancel to stop."""
        committer = asyncio.create_task(self._committer(), name="ingest-p1-commit")
        try:
            await self._connection_loop()
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())

    async def _connection_loop(self) -> None:
        backoff = Backoff(self.cfg.broker.reconnect_min_seconds, self.cfg.broker.reconnect_max_seconds)
        guard = SessionGuard(self.client_id, [p1_subscription(self.cfg)], self.stats, log,
                             broker=f"{self.cfg.broker.host}:{self.cfg.broker.port}")
        while True:
            link: Link | None = None
            try:
                client, buffer = make_client(self.cfg, self.client_id, on_drop=self._on_drop, announce=False,
                                             clean_start=guard.clean_start(), on_connack=guard.on_connack)
                async with session(client):
                    guard.connected()
                    link = Link(self.client_id, paho_client(client), AckWindow(self.cfg.ingest.ack_window))
                    granted = await subscribe(client, guard.subs, properties=guard.properties())
                    refused = [str(rc) for rc in granted if getattr(rc, "is_failure", False)]
                    if refused:
                        log_event(log, "p1_subscription_refused", logging.ERROR, client_id=self.client_id,
                                  reasons=refused)
                    self._link = link
                    self.connected.set()
                    backoff.reset()
                    log_event(log, "p1_lane_connected", client_id=self.client_id)
                    guard.arm(_disconnector(client))  # the lane has no presence to announce
                    await self._consume(client, buffer, link, guard)
            except aiomqtt.MqttError as exc:
                raise_if_cancelling(exc)
                if not guard.resetting:
                    log_event(log, "p1_lane_disconnected", logging.WARNING, client_id=self.client_id,
                              error=str(exc)[:200])
            finally:
                if link is not None:
                    link.alive = False
                self._link = None
                self.connected.clear()
            if guard.take_reset():  # a stale session (central_sync.mqtt_session): start clean at once
                log_event(log, "p1_lane_session_reset", client_id=self.client_id)
                continue
            await asyncio.sleep(backoff.next_delay())

    async def _consume(self, client: aiomqtt.Client, buffer: MessageBuffer, link: Link,
                       guard: SessionGuard) -> None:
        limit = self.cfg.ingest.p1_max_pending
        gate = ReadGate(client, lambda: self._pending >= limit or buffer.qsize() >= limit)
        gate.install()
        while True:
            for message in await next_messages(client, buffer, _READ_BURST):
                guard.check(message.properties, message.topic.value)
                payload = message.payload
                body = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
                self.handle(message.topic.value, bytes(body), Delivery(link, message.mid, message.qos))
            gate.poke()

    # -- per message -----------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, delivery: Delivery | None) -> None:
        """Queue the P1 envelopes of one message for the next P1 commit; never raises."""
        self.stats.received += 1
        self.stats.p1_received += 1
        try:
            self._handle(topic, payload, delivery)
        except WireError as exc:
            self._count(topic, exc.reason, exc.detail, None)
            self._puback(delivery)
        except Exception as exc:  # one message never stops the lane
            self._count(topic, "internal", f"{type(exc).__name__}: {exc}", None)
            self._puback(delivery)

    def _handle(self, topic: str, payload: bytes, delivery: Delivery | None) -> None:
        if self.topics.parse(topic)[2] != P1_CHANNEL:
            raise WireError("wrong_topic", f"not a P1 topic: {topic[:120]}")
        decoded = decode_events(self.topics, topic, payload)
        if decoded.is_batch:
            self.stats.event_batches += 1
            self.stats.batched_events += len(decoded.good) + len(decoded.bad)
        node = decoded.node_id
        for b in decoded.bad:
            self._count(topic, b.reason, b.detail, node)
            if b.permanent and b.event_id:
                self._acks_due.reject(node, b.event_id, b.reason)
        good = []
        for g in decoded.good:
            if g.env.priority == 1:
                good.append(g)
            else:  # only alarms may overtake the backlog
                self._count(topic, "not_p1", f"priority {g.env.priority} on the P1 channel", node)
                self._acks_due.reject(node, g.env.event_id, "not_p1")
        if good:
            self._events.append(EventMsg(topic, node, good, delivery, decoded.batch))
            self._pending += len(good)
        elif delivery is not None:
            self._settle.append(delivery)
        self._wake.set()

    def _count(self, topic: str, reason: str, detail: str, node_id: str | None) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        self.rejections.add(node_id, reason, topic, detail)

    def _puback(self, delivery: Delivery | None) -> None:
        if delivery is not None and delivery.puback():
            self.stats.pubacks += 1

    # -- committing ------------------------------------------------------------------------------
    def _has_work(self) -> bool:
        return bool(self._events or self._settle or self._acks_due)

    async def flush(self) -> None:
        """Commit and acknowledge everything queued so far."""
        while self._has_work():
            await self._commit_once()

    async def _committer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while self._has_work():
                    await self._commit_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the committer die
                log_event(log, "p1_batch_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
                await asyncio.sleep(0.2)

    def _take(self) -> tuple[Batch, list[Delivery], AckBook]:
        events: list[EventMsg] = []
        n = 0
        while self._events and (not events or n + len(self._events[0].envs) <= self.cfg.ingest.batch_max):
            msg = self._events.popleft()
            events.append(msg)
            n += len(msg.envs)
        self._pending -= n
        settle = self._settle + [m.delivery for m in events if m.delivery is not None]
        acks = self._acks_due
        self._settle, self._acks_due = [], AckBook()
        return Batch(events, [], [], [], []), settle, acks

    async def _commit_once(self) -> None:
        batch, settle, acks = self._take()
        try:
            out = BatchOutcome()
            if batch.events:
                out = await call_retrying(self.writer.write, batch, stats=self.stats, min_s=0.02,
                                          max_s=self.cfg.ingest.db_retry_max_seconds, log=log,
                                          event="p1_store_busy_retry")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not the input's fault: the nodes resend (and the normal copy comes)
            log_event(log, "p1_batch_not_committed", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
            out = BatchOutcome(rejections=[RowRejection(m.topic, m.node_id, "internal", str(exc)[:200], None)
                                           for m in batch.events for _ in m.envs])
        self.stats.batches += 1 if batch.events else 0
        self.stats.p1_batches += 1 if batch.events else 0
        self.stats.inserted += out.inserted
        self.stats.duplicates += out.duplicates
        self.stats.p1_committed += out.inserted + out.duplicates
        for node, event_id in out.stored:
            acks.stored(node, event_id)
        for r in out.rejections:
            self._count(r.topic, r.reason, r.detail, r.node_id)
            if r.event_id is not None:
                acks.reject(r.node_id, r.event_id, r.reason)
        before = self._acks.event_ids
        publish_all(acks, self._link, self.topics, time.time(), self._acks)
        self.stats.acked += self._acks.event_ids - before
        for delivery in settle:
            self._puback(delivery)



class P1Process:
    """The P1 lane alone (``kentongan-central ingest --lane p1``): its connection, commits, Acks and
    the rejection summaries of what it refused; nothing else runs in this process.

    ``client_id`` / ``shared_group`` are the process's (as an ingest worker's): the lane connects
    as ``<client_id>-p1`` in that group, so several P1 processes (on several machines) split the
    P1 channel between them."""

    def __init__(self, cfg: CentralConfig, store: Store, *,
                 verify_event: BatchVerifier | Callable[[EventEnvelope], None] | None,
                 client_id: str, shared_group: str | None) -> None:
        cfg = cfg.model_copy(update={
            "broker": cfg.broker.model_copy(update={"client_id": client_id}),
            "ingest": cfg.ingest.model_copy(update={"shared_group": shared_group})})
        self.cfg, self.store = cfg, store
        self.stats = IngestStats()
        self.rejections = RejectionAggregator(flood_threshold=cfg.ingest.flood_threshold)
        self.lane = P1Lane(cfg, BatchWriter(store, as_batch_verifier(verify_event), None), self.stats,
                           self.rejections)
        self.connected = self.lane.connected

    async def run(self) -> None:
        """Run the lane (reconnecting) and write rejection summaries each interval; cancel to stop."""
        flusher = asyncio.create_task(self._flush_rejections_forever(), name="ingest-p1-rejections")
        try:
            await self.lane.run()
        finally:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush_rejections())

    async def _flush_rejections_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.ingest.rejection_interval_s)
            await self.flush_rejections()

    async def flush_rejections(self) -> None:
        """Write the rejection summaries so far; a locked or busy store is retried with backoff
        (``call_retrying``, as the bulk batcher does), so a summary is not lost to a busy store."""
        summaries = self.rejections.drain()
        if not summaries:
            return
        try:
            await call_retrying(self.store.record_rejections, summaries, stats=self.stats, min_s=0.05,
                                max_s=self.cfg.ingest.db_retry_max_seconds, log=log,
                                event="p1_rejections_busy_retry")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # counted and logged already
            log_event(log, "p1_rejections_not_recorded", logging.ERROR, error=str(exc)[:200], rows=len(summaries))
