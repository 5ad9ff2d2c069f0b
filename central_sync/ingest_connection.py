"""The broker connections of ingest (``central_sync.ingest``): connect, subscribe, read.

``BrokerSessions.run(client_id)`` keeps one connection (a worker's client id, docs/scale.md)
up forever, reconnecting with backoff: subscribe to the uplink tree, publish central's retained
presence (posts resend at once), beat the link for the desk (``central_sync.supervision``) and
hand every message to ``handle`` right where paho parses it (``mqtt_central.deliver_inline``).
Messages the client buffered are drained in bursts, yielding to other tasks every
``_DECODE_SLICE_S`` (an alarm on the P1 lane is not kept waiting behind a burst of big
batches). A ``ReadGate`` per connection stops reading the broker socket while the client's
buffer or ``IngestQueue`` is full: memory stays bounded whatever is offered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiomqtt

from central_sync.acks import AckWindow, Delivery, Link
from central_sync.config import CentralConfig
from central_sync.ingest_queue import IngestQueue
from central_sync.ingest_stats import IngestStats
from central_sync.mqtt_central import (
    Backoff,
    MessageBuffer,
    central_presence,
    deliver_inline,
    make_client,
    next_messages,
    publish_central_offline,
    subscriptions,
)
from central_sync.mqtt_session import SessionGuard
from central_sync.read_gate import ReadGate
from central_sync.store import Store
from central_sync.supervision import link_beats
from edge.logs import log_event
from edge.sync.transport import paho_client, raise_if_cancelling, session, subscribe
from edge.sync.wire import Topics

log = logging.getLogger("central_sync.ingest")

#: Messages taken from the client's buffer per wake-up.
_READ_BURST = 1000
#: Longest stretch of decoding before other tasks (the P1 lane, the batcher) get the loop.
_DECODE_SLICE_S = 0.02

#: ``handle(topic, payload, delivery)``: handles one message without I/O, never raises.
Handle = Callable[[str, bytes, Delivery | None], None]


class BrokerSessions:
    """The live broker connections of one ingest service (links for Acks, clients for commands)."""

    def __init__(self, cfg: CentralConfig, store: Store, topics: Topics, queue: IngestQueue, stats: IngestStats,
                 handle: Handle, last_message_at: Callable[[], float | None]) -> None:
        self.cfg = cfg
        self.store = store
        self.topics = topics
        self.queue = queue
        self.stats = stats
        self.handle = handle
        self.last_message_at = last_message_at
        self.connected = asyncio.Event()
        self.links: dict[str, Link] = {}
        self.clients: dict[str, aiomqtt.Client] = {}
        self._resets: set[asyncio.Task[None]] = set()  # session resets under way (kept referenced)

    def count_drop(self) -> None:
        """A QoS 0 message the client's buffer had no room for."""
        self.stats.dropped_qos0 += 1

    def link(self) -> Link | None:
        """A live connection to publish Acks on (None while none is up)."""
        for link in self.links.values():
            if link.alive:
                return link
        return None

    def client(self) -> aiomqtt.Client | None:
        """A connected client to publish commands on (None while none is up)."""
        return next(iter(self.clients.values()), None)

    async def run(self, client_id: str) -> None:
        """Keep the connection ``client_id`` up and consumed forever; cancel to stop."""
        backoff = Backoff(self.cfg.broker.reconnect_min_seconds, self.cfg.broker.reconnect_max_seconds)
        guard = SessionGuard(client_id, subscriptions(self.cfg), self.stats, log,
                             broker=f"{self.cfg.broker.host}:{self.cfg.broker.port}")
        while True:
            link: Link | None = None
            try:
                client, buffer = make_client(self.cfg, client_id, on_drop=self.count_drop,
                                             clean_start=guard.clean_start(), on_connack=guard.on_connack)
                link = Link(client_id, paho_client(client), AckWindow(self.cfg.ingest.ack_window))
                deliver_inline(client, self.topics.up_tree(), self._inline_handler(link), guard)
                async with session(client):
                    guard.connected()
                    # The link takes Acks from the CONNACK on: a resumed session delivers what the
                    # broker queued while central was away before the SUBACK arrives, and a batch
                    # committed meanwhile would otherwise find no link (its Acks unsent, the posts
                    # resending after their Ack timeout).
                    self.links[client_id] = link
                    granted = await subscribe(client, guard.subs, properties=guard.properties())
                    refused = [str(rc) for rc in granted if getattr(rc, "is_failure", False)]
                    if refused:  # e.g. an ACL that does not grant central the uplink tree
                        log_event(log, "subscription_refused", logging.ERROR, client_id=client_id, reasons=refused)
                    self.clients[client_id] = client
                    self.connected.set()
                    backoff.reset()
                    log_event(log, "central_connected", client_id=client_id, host=self.cfg.broker.host,
                              port=self.cfg.broker.port, shared_group=self.cfg.ingest.shared_group)
                    # Retained "online" now that we are subscribed (posts resend at once), "offline" on exit.
                    async with central_presence(client, self.cfg, client_id):
                        # Central's own sight of the broker, for the desk (central_sync.supervision).
                        beat = asyncio.create_task(link_beats(self.store, client_id, self.last_message_at),
                                                   name=f"link-beat-{client_id}")
                        try:
                            guard.arm(self._resetter(client, client_id))
                            await self._consume(client, buffer, link, guard)
                        finally:
                            beat.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await beat
            except aiomqtt.MqttError as exc:
                raise_if_cancelling(exc)
                if not guard.resetting:
                    log_event(log, "central_disconnected", logging.WARNING, client_id=client_id,
                              error=str(exc)[:200])
            finally:
                if link is not None:
                    link.alive = False
                self.links.pop(client_id, None)
                self.clients.pop(client_id, None)
                if not self.links:
                    self.connected.clear()
            if guard.take_reset():  # a stale session (mqtt_session): start clean at once
                log_event(log, "central_session_reset", client_id=client_id)
                continue
            await asyncio.sleep(backoff.next_delay())

    async def _consume(self, client: aiomqtt.Client, buffer: MessageBuffer, link: Link,
                       guard: SessionGuard) -> None:
        limit, byte_limit = self.cfg.ingest.max_buffered_messages, self.cfg.ingest.max_buffered_bytes
        room = self.queue.room
        gate = ReadGate(client, lambda: (buffer.qsize() >= limit or buffer.nbytes >= byte_limit
                                         or not room.is_set()))
        gate.install()
        self.queue.gates.add(gate)
        try:
            while True:
                until = time.monotonic() + _DECODE_SLICE_S
                for message in await next_messages(client, buffer, _READ_BURST):
                    guard.check(message.properties, message.topic.value)
                    payload = message.payload
                    body = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
                    self.handle(message.topic.value, bytes(body), Delivery(link, message.mid, message.qos))
                    if time.monotonic() >= until:  # a burst of big batches: let an alarm through
                        await asyncio.sleep(0)
                        until = time.monotonic() + _DECODE_SLICE_S
                if not room.is_set():
                    await room.wait()  # backpressure: the gate stopped reading the socket
                gate.poke()
                self.stats.buffer_peak = max(self.stats.buffer_peak, buffer.peak)
                self.stats.read_pauses_live = gate.pauses
        finally:
            self.queue.gates.discard(gate)
            self.stats.read_pauses += gate.pauses
            self.stats.buffer_peak = max(self.stats.buffer_peak, buffer.peak)

    def _resetter(self, client: aiomqtt.Client, client_id: str) -> Callable[[], None]:
        """End the connection for a session reset (``mqtt_session``): the retained ``offline``
        first (awaited, at most 2 s: a raw publish could wait behind a full in-flight window and
        be dropped by the DISCONNECT), so that the ``online`` of the clean reconnect makes the
        posts resend at once."""
        async def reset_now() -> None:
            await publish_central_offline(client, self.cfg, client_id, timeout=2.0)
            paho_client(client).disconnect()

        def reset() -> None:
            task = asyncio.create_task(reset_now(), name=f"session-reset-{client_id}")
            self._resets.add(task)
            task.add_done_callback(self._resets.discard)

        return reset

    def _inline_handler(self, link: Link) -> Callable[[str, bytes, int, int], None]:
        handle = self.handle

        def on_message(topic: str, payload: bytes, mid: int, qos: int) -> None:
            handle(topic, payload, Delivery(link, mid, qos))

        return on_message
