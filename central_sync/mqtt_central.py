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
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator
from typing import cast

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from central_sync.config import CentralConfig
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


def connect_spec(cfg: CentralConfig, client_id: str, *, will: aiomqtt.Will | None = None) -> ConnectSpec:
    """Central's connection parameters for the project's one client factory
    (``edge.sync.transport``): persistent MQTT 5 session, keys through systemd credentials."""
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
        session_expiry_s=cfg.broker.session_expiry_seconds,
        clean_start=False,
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

    # Every central connection registers its retained "offline" presence as its last will.
    spec = connect_spec(cfg, client_id, will=central_state_will(cfg, client_id))
    client = transport.make_client(
        spec,
        logger=MQTT_LOGGER,
        # Unbounded: aiomqtt DISCARDS messages past a full queue after paho already PUBACKed
        # them. Back-pressure is applied by IngestService instead (max_pending_events).
        max_queued_incoming=0,
        queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", queue_factory),
        pending_calls_threshold=cfg.ingest.pending_calls_threshold,
    )
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
