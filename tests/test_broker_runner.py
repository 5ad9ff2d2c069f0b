from __future__ import annotations

import socket
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from central_sync.broker import LocalMosquitto, free_port, listens, mqtt_connack, production_broker
from central_sync.errors import CentralError
from central_sync.pki import PkiSettings, init_ca


def test_local_mosquitto_accepts_clients_and_restarts(mosquitto: LocalMosquitto) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
    assert c.connect(mosquitto.host, mosquitto.port) == 0
    c.disconnect()
    mosquitto.kill()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.running
    assert "listener" in mosquitto.conf_path.read_text()


def _occupied_port() -> tuple[socket.socket, int]:
    """A loopback port another program holds (a listening socket), as under load."""
    sock = socket.create_server(("127.0.0.1", 0))
    return sock, int(sock.getsockname()[1])


def test_a_picked_port_taken_meanwhile_is_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    holder, taken = _occupied_port()
    picks = [taken]

    def source() -> int:  # the first pick is the taken port, then the usual free ones
        return picks.pop(0) if picks else free_port()

    try:
        with LocalMosquitto(tmp_path / "mosquitto", port_source=source) as broker:
            assert broker.attempts == 2
            assert broker.port != taken
            assert mqtt_connack(broker.host, broker.port, "after-retry")
            port = broker.port
            broker.restart()  # a restart keeps the port the clients know
            assert broker.port == port and broker.attempts == 1
            assert mqtt_connack(broker.host, broker.port, "after-restart")
    finally:
        holder.close()


def test_a_given_port_that_is_taken_fails_at_once(tmp_path: Path) -> None:
    holder, taken = _occupied_port()
    try:
        broker = LocalMosquitto(tmp_path / "mosquitto", port=taken)
        with pytest.raises(CentralError, match="Address already in use"):
            broker.start()
        assert broker.attempts == 1 and broker.port == taken and not broker.running
    finally:
        holder.close()


def test_the_production_broker_retries_a_taken_port_too(tmp_path: Path) -> None:
    files = init_ca(PkiSettings(dir=tmp_path / "pki"))
    holder, taken = _occupied_port()
    picks = [taken]
    try:
        with production_broker(tmp_path / "broker", ca_file=files.ca_cert, cert_file=files.broker_cert,
                               key_file=files.broker_key, crl_file=files.crl,
                               port_source=lambda: picks.pop(0) if picks else free_port()) as broker:
            assert broker.attempts == 2 and broker.port != taken
            assert broker.proc is not None and listens(broker.proc.pid, broker.port)
            assert f"listener {broker.port} 127.0.0.1" in broker.conf_path.read_text()
    finally:
        holder.close()
