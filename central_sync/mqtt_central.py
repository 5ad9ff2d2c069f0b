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
from typing import cast

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from central_sync.config import CentralConfig
from edge.sync.wire import Topics

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
    """aiomqtt's incoming queue, kept by us so that ``next_messages`` can drain it in bulk."""

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


def make_client(cfg: CentralConfig, client_id: str) -> tuple[aiomqtt.Client, MessageBuffer]:
    """An aiomqtt client for a persistent MQTT 5 session under ``client_id`` (not yet connected),
    and its incoming message buffer."""
    buffers: list[MessageBuffer] = []

    def queue_factory(maxsize: int = 0) -> MessageBuffer:
        buffers.append(MessageBuffer(maxsize))
        return buffers[-1]

    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = cfg.broker.session_expiry_seconds
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
        # Unbounded: aiomqtt DISCARDS messages past a full queue after paho already PUBACKed
        # them. Back-pressure is applied by IngestService instead (max_pending_events).
        max_queued_incoming_messages=0,
        queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", queue_factory),
        max_inflight_messages=cfg.ingest.max_inflight,
        logger=MQTT_LOGGER,
        timeout=10,
    )
    client.pending_calls_threshold = cfg.ingest.pending_calls_threshold
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
