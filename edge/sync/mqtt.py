"""All of the edge's MQTT client code (aiomqtt 2.x, MQTT 5).

The caller owns the reconnect loop (aiomqtt has none): ``SyncService.run`` opens one
``aiomqtt.Client`` per connection with :func:`open_client`, and between attempts calls
:meth:`Reconnector.wait`.

Reconnect policy (docs/protocol.md, "Reconnect"): full MQTT connection attempts back off
exponentially with full jitter between ``reconnect_min_seconds`` and ``reconnect_max_seconds``;
while waiting, the broker's TCP port is probed cheaply every ``PROBE_INTERVAL_S`` and, when the
last failure was "could not reach the broker" and the port now accepts connections, the next full
attempt starts at once. So a node that has been offline for hours still starts draining within
about ``PROBE_INTERVAL_S`` + one MQTT handshake of the broker coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as paho

from edge.config import SyncConfig, TlsConfig
from edge.sync.transport import ConnectSpec, TlsFiles, TransportError, make_client, paho_client, session

__all__ = [
    "PROBE_INTERVAL_S",
    "SESSION_EXPIRY_S",
    "MqttError",
    "Reconnector",
    "TransportError",
    "connect_spec",
    "on_puback",
    "open_client",
    "probe_tcp",
    "publish_nowait",
    "session",
]

log = logging.getLogger(__name__)

MqttError = aiomqtt.MqttError
#: How often the broker's TCP port is probed while waiting to reconnect.
PROBE_INTERVAL_S = 0.25
#: Persistent downlink session: the broker keeps acks and commands for us this long offline.
SESSION_EXPIRY_S = 24 * 3600
#: paho's own in-flight limit (PUBACK window); larger windows are slower (PLATFORM.md).
MAX_INFLIGHT = 32


def tls_files(tls: TlsConfig | None) -> TlsFiles | None:
    """The node's TLS config as the transport factory's ``TlsFiles``."""
    if tls is None:
        return None
    return TlsFiles(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file,
                    crl_file=tls.crl_file)


def connect_spec(cfg: SyncConfig, client_id: str, *, will: aiomqtt.Will | None = None,
                 timeout: float = 5.0, clean_start: bool = False,
                 session_expiry_s: int = SESSION_EXPIRY_S) -> ConnectSpec:
    """What the post connects to and as whom (shared by the sync service and the self-test)."""
    return ConnectSpec(host=cfg.broker_host, port=cfg.broker_port, client_id=client_id,
                       tls=tls_files(cfg.tls), keepalive=30, session_expiry_s=session_expiry_s,
                       clean_start=clean_start, will=will, max_inflight=MAX_INFLIGHT,
                       timeout=timeout)


def open_client(cfg: SyncConfig, client_id: str, *, will_topic: str, will_payload: bytes,
                timeout: float = 5.0) -> aiomqtt.Client:
    """An MQTT 5 client with a persistent session (clean_start False, 1 day expiry), client id
    ``client_id`` and a retained QoS 1 last will, built by the project's one client factory
    (``edge.sync.transport``: keys through systemd credentials). Use it as ``async with``.

    ``timeout`` bounds the wait for CONNACK: a broker that dies while we connect leaves the
    attempt hanging until then (aiomqtt does not fail it on the socket closing).
    Raises ``TransportError`` when the TLS material cannot be loaded."""
    spec = connect_spec(cfg, client_id, will=aiomqtt.Will(will_topic, will_payload, qos=1,
                                                          retain=True), timeout=timeout)
    # Many concurrent publishes are the normal case here; aiomqtt warns past this many.
    return make_client(spec, pending_calls_threshold=1_000_000)


def publish_nowait(client: aiomqtt.Client, topic: str, payload: bytes, qos: int = 1) -> paho.MQTTMessageInfo:
    """Hand a publish to paho without awaiting its PUBACK (raises ``MqttCodeError`` when the
    client is not connected).

    Used for events only: central's ``Ack`` is the delivery proof, a PUBACK proves nothing
    (PLATFORM.md: a SIGKILLed Mosquitto loses acknowledged messages). paho keeps at most
    ``MAX_INFLIGHT`` un-PUBACKed messages on the wire and queues the rest in order; the uplink
    keeps that queue short itself (``edge.sync.uplink_pace.MAX_UNCONFIRMED``: it is woken by
    :func:`on_puback` with the returned ``MQTTMessageInfo.mid``) so a new P1 is not queued
    behind its backlog.
    Avoiding one awaited future per message roughly doubles throughput (aiomqtt also counts all
    pending calls on every publish). If the connection drops, this client and its queue are
    discarded and the events go back to ``ready``.
    """
    info = paho_client(client).publish(topic, payload, qos)
    if info.rc != 0:
        raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
    return info


def on_puback(client: aiomqtt.Client, callback: Callable[[int], None]) -> None:
    """Also call ``callback(mid)`` on every PUBACK (paho's ``on_publish``, chained after
    aiomqtt's own, which resolves awaited publishes). With aiomqtt it runs on the loop thread
    (paho is driven by the loop's socket callbacks), before paho marks the message published."""
    mqtt = paho_client(client)
    inner: Callable[..., object] | None = mqtt.on_publish  # aiomqtt's, kept

    def chained(c: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if inner is not None:
            inner(c, userdata, mid, reason, props)
        callback(mid)

    mqtt.on_publish = chained


async def probe_tcp(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when ``host:port`` accepts a TCP connection (closed again at once)."""
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def is_unreachable(exc: BaseException) -> bool:
    """True when a connection attempt failed because nothing answered on the port."""
    text = str(exc).lower()
    return any(s in text for s in ("refused", "unreachable", "timed out", "no route",
                                   "errno 111", "errno 113", "operation timed out"))


class Reconnector:
    """Capped, jittered exponential backoff with a cheap TCP probe in between attempts."""

    def __init__(self, cfg: SyncConfig, *, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.min_s = cfg.reconnect_min_seconds
        self.max_s = cfg.reconnect_max_seconds
        self.failures = 0
        self.last_unreachable = True
        self._rng = rng or random.Random()

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        """Full-jitter delay for the next attempt: uniform in [min, min(max, min * 2**n)]."""
        cap = min(self.max_s, self.min_s * (2 ** min(self.failures, 30)))
        return self._rng.uniform(self.min_s, max(self.min_s, cap))

    def failed(self, exc: BaseException | None) -> None:
        self.failures += 1
        self.last_unreachable = exc is None or is_unreachable(exc)

    async def wait(self) -> dict[str, Any]:
        """Sleep until the next attempt is due; return early when the broker port opens again
        after an "unreachable" failure. Returns a small report for logging."""
        delay = self.next_delay()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        probes = 0
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return {"delay_s": round(delay, 3), "probes": probes, "early": False}
            if self.last_unreachable:
                probes += 1
                if await probe_tcp(self.cfg.broker_host, self.cfg.broker_port,
                                   timeout=min(0.5, max(0.05, left))):
                    return {"delay_s": round(delay, 3), "probes": probes, "early": True}
            await asyncio.sleep(min(PROBE_INTERVAL_S, max(0.0, deadline - loop.time())))
