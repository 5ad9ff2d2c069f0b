"""Central's MQTT client code (aiomqtt 2.x): client construction, subscriptions, backoff
(reading the socket under backpressure is ``central_sync.read_gate``).

Session model: MQTT 5 with ``clean_start=False``, a session expiry > 0 and a FIXED client id, so
the broker keeps central's subscriptions and queues QoS 1 messages while central is down; they
arrive right after the next CONNACK (a resumed session with subscriptions of an older
configuration is reset once: ``central_sync.mqtt_session``). aiomqtt has no automatic reconnect: ``IngestService`` owns
the loop and uses ``Backoff`` (capped, jittered exponential).

Shared subscriptions: with ``ingest.shared_group`` every worker subscribes to
``$share/<group>/{prefix}/up/+/<channel>`` for the load-bearing channels (event, snapshot,
heartbeat, cmd_result) so the broker hands each message to ONE worker. Each worker needs its own
fixed client id (``<client_id>-w<N>`` inside one process, or a different ``broker.client_id`` per
process): Mosquitto may queue shared messages in an offline worker's session, and they are only
delivered when that same client id reconnects, so a shared-group member gets a SHORT session
expiry (``ingest.shared_session_expiry_seconds``): a dead worker's share returns to the living
ones soon, and the posts resend whatever was not acknowledged. ``presence`` is always an ordinary subscription
(shared subscriptions do not receive retained messages), so every worker sees it; the upsert is
idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from central_sync.config import CentralConfig
from central_sync.mqtt_session import SessionGuard
from edge.sync import transport
from edge.sync.transport import ConnectSpec, TlsFiles
from edge.sync.wire import CentralState, Topics, encode

MQTT_LOGGER = logging.getLogger("central_sync.mqtt")

#: Channels split between workers when a shared group is configured.
SHARED_CHANNELS = ("event", "snapshot", "heartbeat", "cmd_result")


def worker_client_ids(cfg: CentralConfig) -> list[str]:
    """The fixed client ids this process connects with (one per worker)."""
    base = cfg.broker.client_id
    if cfg.ingest.workers == 1:
        return [base]
    return [f"{base}-w{i}" for i in range(cfg.ingest.workers)]


def subscriptions(cfg: CentralConfig) -> list[tuple[str, SubscribeOptions]]:
    """Topic filters with options: QoS 1, retained messages only for a new subscription."""
    topics = Topics(cfg.topic_prefix)
    opts = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
    group = cfg.ingest.shared_group
    if group is None:
        return [(topics.up_wildcard("+"), opts)]
    out = [(f"$share/{group}/{topics.up_wildcard(ch)}", opts) for ch in SHARED_CHANNELS]
    out.append((topics.up_wildcard("presence"), opts))
    return out


def connect_spec(cfg: CentralConfig, client_id: str, *, will: aiomqtt.Will | None = None,
                 clean_start: bool = False) -> ConnectSpec:
    """Central's connection parameters for the project's one client factory
    (``edge.sync.transport``): persistent MQTT 5 session (resumed unless ``clean_start``: a
    stale session's reset, ``central_sync.mqtt_session``), keys through systemd credentials."""
    tls = cfg.broker.tls
    files = None if tls is None else TlsFiles(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file)
    return ConnectSpec(
        host=cfg.broker.host,
        port=cfg.broker.port,
        client_id=client_id,
        tls=files,
        username=cfg.broker.username,
        password=cfg.broker.password,
        keepalive=cfg.broker.keepalive,
        session_expiry_s=session_expiry(cfg),
        clean_start=clean_start,
        will=will,
        receive_maximum=cfg.ingest.max_inflight,
        max_inflight=cfg.ingest.max_inflight,
        timeout=10,
    )


# -- central presence (Sparkplug B "primary host STATE" style; docs/protocol.md) ----------------


def central_id_for(client_id: str) -> str:
    """The ``central_id`` a connection announces itself as: its MQTT client id, with characters
    the wire does not allow in an id replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", client_id)[:64] or "central"


def central_state_message(cfg: CentralConfig, central_id: str, state: str) -> tuple[str, bytes]:
    """Topic and payload of one retained ``CentralState``."""
    cid = central_id_for(central_id)
    msg = CentralState(central_id=cid, state="online" if state == "online" else "offline", at=time.time())
    return Topics(cfg.topic_prefix).central_state(cid), encode(msg)


def central_state_will(cfg: CentralConfig, central_id: str) -> aiomqtt.Will:
    """The retained QoS 1 ``offline`` last will of a central connection: when the connection
    dies without a clean DISCONNECT the broker publishes it and the posts stop resending."""
    topic, payload = central_state_message(cfg, central_id, "offline")
    return aiomqtt.Will(topic, payload, qos=1, retain=True)


async def publish_central_online(client: aiomqtt.Client, cfg: CentralConfig, central_id: str) -> None:
    """Announce this connection ``online`` (retained, QoS 1). Call it right AFTER the uplink
    subscriptions were granted: a post resends everything unacknowledged the moment it reads it."""
    topic, payload = central_state_message(cfg, central_id, "online")
    await client.publish(topic, payload, qos=1, retain=True)
    # aiomqtt's publish runs asyncio.wait_for, which on Python 3.11 drops a cancellation that
    # races the PUBACK: a stop arriving right after connecting would otherwise be lost.
    transport.raise_if_cancelling()


async def publish_central_offline(client: aiomqtt.Client, cfg: CentralConfig, central_id: str,
                                  timeout: float = 2.0) -> bool:
    """Announce ``offline`` before a clean disconnect (the will is not sent then). Best effort:
    False when it could not be published within ``timeout``."""
    topic, payload = central_state_message(cfg, central_id, "offline")
    try:
        async with asyncio.timeout(timeout):
            await client.publish(topic, payload, qos=1, retain=True)
    except (aiomqtt.MqttError, TimeoutError):
        return False
    return True


@contextlib.asynccontextmanager
async def central_presence(client: aiomqtt.Client, cfg: CentralConfig, central_id: str) -> AsyncIterator[None]:
    """``online`` on entry (after subscribing), ``offline`` on any exit, the will for a crash."""
    await publish_central_online(client, cfg, central_id)
    try:
        yield
    finally:
        await publish_central_offline(client, cfg, central_id)


def session_expiry(cfg: CentralConfig) -> int:
    """Broker session expiry of an ingest connection. A shared-group member gets a short one:
    Mosquitto keeps handing an offline member its share of the messages until its session
    expires, and the posts hold the data anyway (they resend what is not acknowledged)."""
    if cfg.ingest.shared_group is None:
        return cfg.broker.session_expiry_seconds
    return min(cfg.broker.session_expiry_seconds, cfg.ingest.shared_session_expiry_seconds)


class MessageBuffer(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue, kept by us so that ``next_messages`` can drain it in bulk.

    QoS 1 deliveries are bounded by the broker (MQTT 5 receive maximum with manual PUBACKs);
    QoS 0 ones (heartbeats, or a flood) are not, so past ``qos0_limit`` queued messages a QoS 0
    message is dropped (``on_drop`` counts it): at most once is what QoS 0 promises."""

    qos0_limit = 0
    on_drop: Callable[[], None] | None = None
    peak = 0  # most messages ever waiting (for the stats and the tests)
    nbytes = 0  # payload bytes waiting

    def put_nowait(self, item: aiomqtt.Message) -> None:
        if item.qos == 0 and self.qos0_limit and self.qsize() >= self.qos0_limit:
            if self.on_drop is not None:
                self.on_drop()
            return
        super().put_nowait(item)
        self.nbytes += _size(item)
        self.peak = max(self.peak, self.qsize())

    def get_nowait(self) -> aiomqtt.Message:
        item = super().get_nowait()
        self.nbytes -= _size(item)
        return item

    def take(self, limit: int) -> list[aiomqtt.Message]:
        out: list[aiomqtt.Message] = []
        while len(out) < limit:
            try:
                out.append(self.get_nowait())
            except asyncio.QueueEmpty:
                break
        return out


def _size(item: aiomqtt.Message) -> int:
    payload = item.payload
    return len(payload) if isinstance(payload, bytes | bytearray | str) else 0


async def next_messages(client: aiomqtt.Client, buffer: MessageBuffer, limit: int) -> list[aiomqtt.Message]:
    """Wait for the next message (``MqttError`` on disconnect), then take up to ``limit`` - 1 more
    that are already buffered: one wake-up per burst instead of one per message."""
    first = await client.messages.__anext__()
    return [first, *buffer.take(limit - 1)]


def deliver_inline(client: aiomqtt.Client, topic_filter: str,
                   on_message: Callable[[str, bytes, int, int], None], guard: SessionGuard) -> None:
    """Hand every message matching ``topic_filter`` to ``on_message(topic, payload, mid, qos)``
    right where paho parses it (on the event loop, inside the socket reader: aiomqtt drives paho
    from the loop), through paho's public per-filter callbacks (``message_callback_add``).

    Ingest's per-message work does no I/O, so nothing is gained by queueing first: this skips
    aiomqtt's ``Message`` (with its topic validation), its queue and the consumer's wake-up per
    burst. Backpressure is unchanged: ``ReadGate`` stops reading the socket while ingest is
    full, and then paho parses nothing. Messages matching no such filter still go to aiomqtt's
    queue (``MessageBuffer``). Register before connecting: a persistent session's queued
    messages arrive right after the CONNACK.

    Every message is first checked against ``guard`` (one attribute read and one comparison):
    one not carrying exactly our Subscription Identifier proves a stale subscription in a
    resumed session (``central_sync.mqtt_session``); it is handled all the same."""
    expected, stale = guard.expected, guard.stale

    def callback(_client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        if getattr(message.properties, "SubscriptionIdentifier", None) != expected:
            stale(message.properties, message.topic)
        payload = message.payload
        on_message(message.topic, payload if type(payload) is bytes else bytes(payload), message.mid, message.qos)

    transport.paho_client(client).message_callback_add(topic_filter, callback)


def make_client(cfg: CentralConfig, client_id: str, on_drop: Callable[[], None] | None = None, *,
                announce: bool = True, clean_start: bool = False,
                on_connack: Callable[[Properties | None], None] | None = None,
                ) -> tuple[aiomqtt.Client, MessageBuffer]:
    """An aiomqtt client for a persistent MQTT 5 session under ``client_id`` (not yet connected),
    with manual PUBACKs (``central_sync.acks``), central's retained-state last will (unless
    ``announce`` is False: the P1 lane's connection is no central presence), and its incoming
    message buffer. ``on_connack(properties)`` sees every CONNACK's properties before aiomqtt
    completes the connect (``SessionGuard.on_connack``: the broker's capabilities)."""
    buffers: list[MessageBuffer] = []

    def queue_factory(maxsize: int = 0) -> MessageBuffer:
        buffer = MessageBuffer(maxsize)
        buffer.qos0_limit = cfg.ingest.max_queued_qos0
        buffer.on_drop = on_drop
        buffers.append(buffer)
        return buffer

    # Every central connection registers its retained "offline" presence as its last will.
    spec = connect_spec(cfg, client_id, will=central_state_will(cfg, client_id) if announce else None,
                        clean_start=clean_start)
    client = transport.make_client(
        spec,
        logger=MQTT_LOGGER,
        # aiomqtt would DISCARD past a full queue after paho had PUBACKed: with manual PUBACKs
        # the broker bounds QoS 1 (receive maximum) and MessageBuffer bounds QoS 0.
        max_queued_incoming=0,
        queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", queue_factory),
        pending_calls_threshold=cfg.ingest.pending_calls_threshold,
    )
    mqtt = transport.paho_client(client)
    mqtt.manual_ack_set(True)
    if not MQTT_LOGGER.isEnabledFor(logging.DEBUG):
        # aiomqtt always gives paho a logger, called for every packet (~4 debug lines per event,
        # ~1 us each even when nothing is written). paho's error lines go too; what they report
        # still surfaces (``central_disconnected``; ``broker_read_failed`` from ``ReadGate``).
        mqtt.disable_logger()
    if on_connack is not None:
        transport.on_connack(client, on_connack)
    return client, buffers[0]


class Backoff:
    """Capped, jittered exponential delays ("full jitter" over the upper half)."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self._next = minimum

    def reset(self) -> None:
        self._next = self.minimum

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        return random.uniform(delay / 2, delay)
