"""Central's MQTT client code (aiomqtt 2.x): client construction, subscriptions, backoff.

Session model: MQTT 5 with ``clean_start=False``, a session expiry > 0 and a FIXED client id, so
the broker keeps central's subscriptions and queues QoS 1 messages while central is down; they
arrive right after the next CONNACK. aiomqtt has no automatic reconnect: ``IngestService`` owns
the loop and uses ``Backoff`` (capped, jittered exponential).

Shared subscriptions: with ``ingest.shared_group`` every worker subscribes to
``$share/<group>/{prefix}/up/+/<channel>`` for the load-bearing channels (event, snapshot,
heartbeat, cmd_result) so the broker hands each message to ONE worker. Each worker needs its own
fixed client id (``<client_id>-w<N>`` inside one process, or a different ``broker.client_id`` per
process): Mosquitto may queue shared messages in an offline worker's session, and they are only
delivered when that same client id reconnects. ``presence`` is always an ordinary subscription
(shared subscriptions do not receive retained messages), so every worker sees it; the upsert is
idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import Literal, cast

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from central_sync.config import CentralConfig
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


def _tls_params(cfg: CentralConfig) -> aiomqtt.TLSParameters | None:
    tls = cfg.broker.tls
    if tls is None:
        return None
    return aiomqtt.TLSParameters(
        ca_certs=str(tls.ca_file),
        certfile=str(tls.cert_file) if tls.cert_file else None,
        keyfile=str(tls.key_file) if tls.key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )


class MessageBuffer(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming queue, kept by us so that ``next_messages`` can drain it in bulk.

    QoS 1 deliveries are bounded by the broker (MQTT 5 receive maximum with manual PUBACKs);
    QoS 0 ones (heartbeats, or a flood) are not, so past ``qos0_limit`` queued messages a QoS 0
    message is dropped (``on_drop`` counts it): at most once is what QoS 0 promises."""

    qos0_limit = 0
    on_drop: Callable[[], None] | None = None

    def put_nowait(self, item: aiomqtt.Message) -> None:
        if item.qos == 0 and self.qos0_limit and self.qsize() >= self.qos0_limit:
            if self.on_drop is not None:
                self.on_drop()
            return
        super().put_nowait(item)

    def take(self, limit: int) -> list[aiomqtt.Message]:
        out: list[aiomqtt.Message] = []
        while len(out) < limit:
            try:
                out.append(self.get_nowait())
            except asyncio.QueueEmpty:
                break
        return out


async def next_messages(client: aiomqtt.Client, buffer: MessageBuffer, limit: int) -> list[aiomqtt.Message]:
    """Wait for the next message (``MqttError`` on disconnect), then take up to ``limit`` - 1 more
    that are already buffered: one wake-up per burst instead of one per message."""
    first = await client.messages.__anext__()
    return [first, *buffer.take(limit - 1)]


def paho_of(client: aiomqtt.Client) -> paho.Client:
    """The paho client inside an aiomqtt client. aiomqtt 2.x has no API for manual PUBACKs or for
    a publish without an awaited future; ingest needs both (``central_sync.acks``)."""
    return client._client


def central_state_body(central_id: str, state: Literal["online", "offline"], at: float | None = None) -> bytes:
    """Body of central's retained presence (``edge.sync.wire.CentralState``)."""
    return encode(CentralState(central_id=central_id, state=state, at=time.time() if at is None else at))


def central_state_will(cfg: CentralConfig, central_id: str) -> aiomqtt.Will:
    """The last will of one ingest connection: its retained state turns ``offline``."""
    return aiomqtt.Will(Topics(cfg.topic_prefix).central_state(central_id), central_state_body(central_id, "offline"),
                        qos=1, retain=True)


def session_expiry(cfg: CentralConfig) -> int:
    """Broker session expiry of an ingest connection. A shared-group member gets a short one:
    Mosquitto keeps handing an offline member its share of the messages until its session
    expires, and the posts hold the data anyway (they resend what is not acknowledged)."""
    if cfg.ingest.shared_group is None:
        return cfg.broker.session_expiry_seconds
    return min(cfg.broker.session_expiry_seconds, cfg.ingest.shared_session_expiry_seconds)


def make_client(cfg: CentralConfig, client_id: str,
                on_drop: Callable[[], None] | None = None) -> tuple[aiomqtt.Client, MessageBuffer]:
    """An aiomqtt client for a persistent MQTT 5 session under ``client_id`` (not yet connected),
    with manual PUBACKs, central's retained-state last will, and its incoming message buffer."""
    buffers: list[MessageBuffer] = []

    def queue_factory(maxsize: int = 0) -> MessageBuffer:
        buffer = MessageBuffer(maxsize)
        buffer.qos0_limit = cfg.ingest.max_queued_qos0
        buffer.on_drop = on_drop
        buffers.append(buffer)
        return buffer

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry(cfg)
    props.ReceiveMaximum = cfg.ingest.max_inflight
    client = aiomqtt.Client(
        cfg.broker.host,
        cfg.broker.port,
        identifier=client_id,
        username=cfg.broker.username,
        password=cfg.broker.password,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=False,
        keepalive=cfg.broker.keepalive,
        properties=props,
        tls_params=_tls_params(cfg),
        # aiomqtt would DISCARD past a full queue after paho had PUBACKed: with manual PUBACKs
        # the broker bounds QoS 1 (receive maximum) and MessageBuffer bounds QoS 0.
        max_queued_incoming_messages=0,
        will=central_state_will(cfg, client_id),
        queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", queue_factory),
        max_inflight_messages=cfg.ingest.max_inflight,
        logger=MQTT_LOGGER,
        timeout=10,
    )
    client.pending_calls_threshold = cfg.ingest.pending_calls_threshold
    paho_of(client).manual_ack_set(True)
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
