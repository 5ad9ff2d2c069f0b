"""Batch command publishing (central_sync.command_batch) against a real Mosquitto: every command
arrives signed, the store records them before the first goes out, the window bounds what is
unconfirmed, and without a connection nothing is recorded."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers_sync import wait_until

from central_sync.broker import LocalMosquitto
from central_sync.command_batch import publish_batch
from central_sync.errors import CentralError
from central_sync.routing import make_command
from edge.signing import CommandSigner, verify_bytes
from edge.sync.transport import session
from edge.sync.wire import Command, Topics, canonical_bytes


def test_a_batch_arrives_signed_and_recorded_first(mosquitto: LocalMosquitto) -> None:
    key = Ed25519PrivateKey.generate()
    topics = Topics()
    got: list[dict[str, Any]] = []
    lock = threading.Lock()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="batch-sub", protocol=paho.MQTTv5)
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_a: subscribed.set()

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        with lock:
            got.append(json.loads(msg.payload))

    sub.on_message = on_message
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    sub.subscribe(f"{topics.prefix}/down/+/cmd", qos=1)
    assert subscribed.wait(30)
    cmds = [make_command(f"pos-{i:04d}", "sound", {"incident_type": "BENCANA"}, issuer="web:op")
            for i in range(1500)]
    recorded: list[list[Command]] = []

    async def go() -> list[Command]:
        async with session(aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="batch-pub",
                                          protocol=aiomqtt.ProtocolVersion.V5)) as client:
            def record(signed: list[Command]) -> None:
                with lock:
                    assert got == []  # recorded before anything was published
                recorded.append(signed)
            out = await publish_batch(client, topics, CommandSigner(key).sign, cmds, record, window=10)
            await asyncio.sleep(0)  # the last PUBACKs are the broker's business now
            return out

    try:
        signed = asyncio.run(go())
        wait_until(lambda: len(got) >= len(cmds), 60, what="every command at the subscriber")
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert [c.command_id for c in recorded[0]] == [c.command_id for c in cmds] == [c.command_id for c in signed]
    assert {d["command_id"] for d in got} == {c.command_id for c in cmds}
    for data in got[:50]:
        verify_bytes(key.public_key(), canonical_bytes(data), data["sig"])


def test_not_connected_records_nothing() -> None:
    recorded: list[Any] = []
    with pytest.raises(CentralError, match="not connected"):
        asyncio.run(publish_batch(None, Topics(), None, [make_command("pos-0001", "stop", {}, issuer="x")],
                                  recorded.append))
    assert recorded == []
