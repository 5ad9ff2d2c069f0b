"""Live revocation at the broker through Mosquitto's dynamic-security plugin.

Mosquitto 2.0 does not re-check a certificate login against anything but the CRL (no plugin is
asked: a disabled dynamic-security client still connects with its certificate, upstream issue
eclipse-mosquitto/mosquitto#2999), and it only re-reads the CRL on a reload; an open session
survives even that. The dynamic-security plugin
(``broker/mosquitto.conf``: ``plugin ... mosquitto_dynamic_security.so``) closes both gaps while
the broker runs:

* ``createClient`` in role ``kentongan-revoked`` for the node's certificate CN (its MQTT
  username under ``use_identity_as_username``): every publish, delivery and subscription of
  that username is denied from now on, also after it reconnects;
* ``disableClient``: the broker kicks every open session of that username at once.

Central sends these on ``$CONTROL/dynamic-security/v1`` with its own certificate (CN
``central``, role ``kentongan-control`` in ``broker/dynamic-security.json``) and waits for the
plugin's answer on ``.../response``. ``reinstate`` deletes the entry again (re-enrolment).
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from central_sync.config import CentralConfig
from central_sync.errors import CentralError

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
REVOKED_ROLE = "kentongan-revoked"

#: Answers that mean "already in the wanted state" (a second revoke, a reinstate of a node
#: that was never revoked).
_BENIGN = {"Client not found"}


class BrokerControlError(CentralError):
    """The broker could not be reached, or refused a dynamic-security command."""


def revoke_commands(node_id: str) -> list[dict[str, Any]]:
    """Idempotent: any earlier entry of that username is replaced by one in the revoked role
    (``addClientRole`` would answer "Internal error" for a role the client already has)."""
    return [
        {"command": "deleteClient", "username": node_id},
        {"command": "createClient", "username": node_id,
         "textname": "revoked by kentongan-central",
         "roles": [{"rolename": REVOKED_ROLE, "priority": 1000}]},
        {"command": "disableClient", "username": node_id},
    ]


def reinstate_commands(node_id: str) -> list[dict[str, Any]]:
    return [{"command": "deleteClient", "username": node_id}]


def run_commands(cfg: CentralConfig, commands: list[dict[str, Any]],
                 timeout: float = 10.0) -> list[dict[str, Any]]:
    """Send ``commands`` in one request and return the plugin's responses; raise
    ``BrokerControlError`` when the broker is unreachable, silent, or answers an error other
    than an "already so" one."""
    from central_sync.command_send import cli_client
    from edge.sync.transport import paho_connect

    client, spec = cli_client(cfg)
    correlation = uuid.uuid4().hex.encode()
    connected, subscribed, answered = threading.Event(), threading.Event(), threading.Event()
    state: dict[str, Any] = {}

    def on_connect(_c: object, _u: object, _f: object, rc: paho.ReasonCode,
                   _p: object = None) -> None:
        state["connect_rc"] = rc
        connected.set()

    def on_subscribe(_c: object, _u: object, _mid: int, rcs: list[paho.ReasonCode],
                     _p: object = None) -> None:
        state["suback"] = rcs
        subscribed.set()

    def on_message(_c: object, _u: object, msg: paho.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        responses = body.get("responses") if isinstance(body, dict) else None
        if isinstance(responses, list):
            mine = [r for r in responses if isinstance(r, dict)
                    and str(r.get("correlationData", "")).encode() == correlation]
            if mine or not any(isinstance(r, dict) and "correlationData" in r for r in responses):
                state["responses"] = mine or responses
                answered.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    b = cfg.broker
    try:
        paho_connect(client, spec)
    except OSError as exc:
        raise BrokerControlError(f"cannot reach the broker {b.host}:{b.port}: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout) or state["connect_rc"].is_failure:
            raise BrokerControlError(f"broker {b.host}:{b.port} refused central's connection: "
                                     f"{state.get('connect_rc', 'timeout')}")
        client.subscribe(RESPONSE_TOPIC, qos=1)
        if not subscribed.wait(timeout) or any(rc.is_failure for rc in state["suback"]):
            raise BrokerControlError("broker refused the dynamic-security response topic "
                                     "(is the plugin loaded and central in role "
                                     "kentongan-control?)")
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = correlation
        tagged = [{**c, "correlationData": correlation.decode()} for c in commands]
        info = client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=1,
                              properties=props)
        info.wait_for_publish(timeout)
        if not answered.wait(timeout):
            raise BrokerControlError("no answer from the broker's dynamic-security plugin "
                                     f"within {timeout:g}s (plugin not loaded?)")
    finally:
        client.disconnect()
        client.loop_stop()
    responses: list[dict[str, Any]] = state["responses"]
    bad = [r for r in responses if r.get("error") and r["error"] not in _BENIGN]
    if bad:
        raise BrokerControlError("broker refused: " + "; ".join(
            f"{r.get('command')}: {r.get('error')}" for r in bad))
    return responses


def revoke_at_broker(cfg: CentralConfig, node_id: str, timeout: float = 10.0) -> None:
    """Cut ``node_id``'s open sessions now and deny it everything from now on."""
    run_commands(cfg, revoke_commands(node_id), timeout)


def reinstate_at_broker(cfg: CentralConfig, node_id: str, timeout: float = 10.0) -> None:
    """Undo ``revoke_at_broker`` (a re-enrolled node has a new certificate with the same CN)."""
    run_commands(cfg, reinstate_commands(node_id), timeout)
