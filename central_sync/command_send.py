"""Publish one signed command to a node from the command line (e.g. a certificate renewal),
using central's own broker identity. The running service keeps its persistent session; this uses
a separate, clean client id."""

from __future__ import annotations

import dataclasses
import threading
import uuid

import paho.mqtt.client as paho

from central_sync.config import CentralConfig
from central_sync.errors import CentralError
from central_sync.mqtt_central import connect_spec
from edge.sync.transport import ConnectSpec, TransportError, make_paho_client, paho_connect
from edge.sync.wire import Command, Topics, encode


def cli_client(cfg: CentralConfig) -> tuple[paho.Client, ConnectSpec]:
    """A short-lived paho MQTT 5 client with central's broker identity and a clean client id
    (command-line tools: this module and ``central_sync.dynsec``), made by the project's one
    client factory (``edge.sync.transport``), and the spec to connect it with
    (``paho_connect``). Not yet connected."""
    b = cfg.broker
    spec = dataclasses.replace(connect_spec(cfg, f"{b.client_id}-cli-{uuid.uuid4().hex[:8]}"),
                               clean_start=True, session_expiry_s=0)
    try:
        return make_paho_client(spec), spec
    except TransportError as exc:
        raise CentralError(f"cannot use central's TLS files: {exc}") from None


def publish_command(cfg: CentralConfig, cmd: Command, timeout: float = 15.0) -> None:
    """Publish ``cmd`` QoS 1 to the node's downlink and wait for the broker's PUBACK."""
    b = cfg.broker
    client, spec = cli_client(cfg)
    done = threading.Event()
    outcome: list[str] = []

    def on_publish(_c: object, _u: object, _mid: int, rc: paho.ReasonCode, _p: object) -> None:
        if rc.is_failure:
            outcome.append(str(rc))
        done.set()

    client.on_publish = on_publish
    try:
        paho_connect(client, spec)
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
