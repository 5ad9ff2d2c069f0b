"""Publish one signed command to a node from the command line (e.g. a certificate renewal),
using central's own broker identity. The running service keeps its persistent session; this uses
a separate, clean client id."""

from __future__ import annotations

import ssl
import threading
import uuid

import paho.mqtt.client as paho

from central_sync.config import CentralConfig
from central_sync.errors import CentralError
from edge.bundle import credential_path
from edge.sync.wire import Command, Topics, encode


def cli_client(cfg: CentralConfig) -> paho.Client:
    """A short-lived paho MQTT 5 client with central's broker identity and a clean client id
    (command-line tools: this module and ``central_sync.dynsec``). Not yet connected."""
    b = cfg.broker
    client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                         client_id=f"{b.client_id}-cli-{uuid.uuid4().hex[:8]}",
                         protocol=paho.MQTTv5)
    if b.tls is not None:
        ctx = ssl.create_default_context(cafile=str(b.tls.ca_file))
        if b.tls.cert_file is not None and b.tls.key_file is not None:
            ctx.load_cert_chain(str(b.tls.cert_file), str(credential_path(b.tls.key_file)))
        client.tls_set_context(ctx)
    if b.username:
        client.username_pw_set(b.username, b.password)
    return client


def publish_command(cfg: CentralConfig, cmd: Command, timeout: float = 15.0) -> None:
    """Publish ``cmd`` QoS 1 to the node's downlink and wait for the broker's PUBACK."""
    b = cfg.broker
    client = cli_client(cfg)
    done = threading.Event()
    outcome: list[str] = []

    def on_publish(_c: object, _u: object, _mid: int, rc: paho.ReasonCode, _p: object) -> None:
        if rc.is_failure:
            outcome.append(str(rc))
        done.set()

    client.on_publish = on_publish
    try:
        client.connect(b.host, b.port, keepalive=30)
    except OSError as exc:
        raise CentralError(f"cannot reach the broker {b.host}:{b.port}: {exc}") from None
    client.loop_start()
    try:
        topic = Topics(cfg.topic_prefix).down(cmd.node_id, "cmd")
        client.publish(topic, encode(cmd), qos=1)
        if not done.wait(timeout):
            raise CentralError(f"broker did not acknowledge the command within {timeout}s")
        if outcome:
            raise CentralError(f"broker refused the command: {outcome[0]}")
    finally:
        client.disconnect()
        client.loop_stop()
