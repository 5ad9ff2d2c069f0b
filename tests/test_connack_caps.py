"""Central reads the broker's CONNACK "Subscription Identifier Available" (MQTT 5, property 41)
before subscribing with an identifier (central_sync.mqtt_session): a broker without them would
refuse every SUBSCRIBE with DISCONNECT 0xA1, so central stops with one clear error instead of
reconnecting forever. Real paho CONNACK properties, real Mosquitto (which supports them), and
the CLI against a minimal broker that announces it does not."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from central_sync.broker import LocalMosquitto
from central_sync.errors import BrokerUnsupported
from central_sync.ingest_stats import IngestStats
from central_sync.mqtt_central import make_client, subscriptions
from central_sync.mqtt_session import SessionGuard, subscription_ids_available
from edge.sync.transport import session
from tests.test_ingest import make_cfg

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("test.connack")


def _connack_props(wire: bytes) -> Properties:
    """CONNACK properties as paho decodes them from the wire (length prefix + properties)."""
    props = Properties(PacketTypes.CONNACK)
    props.unpack(wire)
    return props


def _connack(available: int | None) -> bytes:
    """A whole CONNACK packet (session not present, success) with or without property 41."""
    props = b"" if available is None else bytes([0x29, available])
    body = bytes([0x00, 0x00, len(props)]) + props
    return bytes([0x20, len(body)]) + body


def test_the_decision_follows_the_connack_property() -> None:
    assert subscription_ids_available(_connack_props(bytes([2, 0x29, 0]))) is False
    assert subscription_ids_available(_connack_props(bytes([2, 0x29, 1]))) is True
    # MQTT 5 3.2.2.3.12: absent means available (Mosquitto sends nothing).
    assert subscription_ids_available(_connack_props(bytes([3, 0x21, 0, 20]))) is True
    assert subscription_ids_available(None) is True


def _guard(tmp_path: Path, port: int) -> SessionGuard:
    cfg = make_cfg(tmp_path, port)
    return SessionGuard("central-test", subscriptions(cfg), IngestStats(), log, broker=f"127.0.0.1:{port}")


def test_a_broker_without_identifiers_is_refused_with_one_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    guard = _guard(tmp_path, 1883)
    guard.clean_start()
    guard.on_connack(_connack_props(bytes([2, 0x29, 0])))
    with pytest.raises(BrokerUnsupported) as err:
        guard.connected()
    assert err.value.capability == "subscription_identifiers"
    assert "127.0.0.1:1883" in str(err.value) and "Subscription Identifiers" in str(err.value)
    records = [r for r in caplog.records if r.getMessage() == "broker_unsupported"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR


def test_mosquitto_announces_identifiers_and_central_subscribes_with_one(
        tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    asyncio.run(_subscribe_on_mosquitto(tmp_path, mosquitto))


async def _subscribe_on_mosquitto(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    cfg = make_cfg(tmp_path, mosquitto.port)
    guard = _guard(tmp_path, mosquitto.port)
    seen: list[Properties | None] = []

    def on_connack(props: Properties | None) -> None:
        seen.append(props)
        guard.on_connack(props)

    client, _buffer = make_client(cfg, "central-caps", clean_start=True, on_connack=on_connack)
    async with session(client):
        assert len(seen) == 1  # read by the time the connect completes
        assert subscription_ids_available(seen[0])
        guard.connected()  # does not raise
        granted = await client.subscribe(guard.subs, properties=guard.properties())
        assert [getattr(rc, "is_failure", False) for rc in granted] == [False]


class _NoIdsBroker:
    """Accepts MQTT connections and answers every CONNECT with a CONNACK saying "Subscription
    Identifier Available = 0" (what a broker without them sends); nothing else. Mosquitto cannot
    be configured that way, so this stands in for such a broker at the byte level."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connects = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                if conn.recv(1) != b"\x10":  # CONNECT
                    return
                remaining, shift = 0, 0
                while True:
                    b = conn.recv(1)[0]
                    remaining |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                while remaining:
                    remaining -= len(conn.recv(remaining))
                self.connects += 1
                conn.sendall(_connack(0))
                while conn.recv(4096):  # until the client disconnects
                    pass
            except (OSError, IndexError):
                return

    def __enter__(self) -> _NoIdsBroker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


@pytest.fixture
def no_ids_broker() -> Iterator[_NoIdsBroker]:
    with _NoIdsBroker() as broker:
        yield broker


def test_the_guarded_connect_fails_on_a_broker_without_identifiers(
        tmp_path: Path, no_ids_broker: _NoIdsBroker) -> None:
    asyncio.run(_guarded_connect(tmp_path, no_ids_broker))


async def _guarded_connect(tmp_path: Path, no_ids_broker: _NoIdsBroker) -> None:
    cfg = make_cfg(tmp_path, no_ids_broker.port)
    guard = _guard(tmp_path, no_ids_broker.port)
    client, _buffer = make_client(cfg, "central-caps", on_connack=guard.on_connack)
    with pytest.raises(BrokerUnsupported):
        async with session(client):
            guard.connected()
    with pytest.raises(aiomqtt.MqttError):  # left again: no longer connected
        await client.publish("t", b"x")


def test_ingest_exits_with_a_clear_message_on_a_broker_without_identifiers(
        tmp_path: Path, no_ids_broker: _NoIdsBroker) -> None:
    cfg = tmp_path / "central.toml"
    cfg.write_text(f'database = "{tmp_path / "central.db"}"\n[broker]\nport = {no_ids_broker.port}\n'
                   'client_id = "central-cli"\nreconnect_max_seconds = 0.5\n')
    proc = subprocess.run([sys.executable, "-m", "central_sync.cli", "ingest", "--worker-id", "1",
                           "--config", str(cfg)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the MQTT broker 127.0.0.1:") and "Subscription Identifiers" in last
    assert "Traceback" not in proc.stderr
    assert "broker_unsupported" in proc.stderr + proc.stdout
    assert no_ids_broker.connects >= 1
