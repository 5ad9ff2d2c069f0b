from __future__ import annotations

import paho.mqtt.client as mqtt

from central_sync.broker import LocalMosquitto


def test_local_mosquitto_accepts_clients_and_restarts(mosquitto: LocalMosquitto) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe")
    assert c.connect(mosquitto.host, mosquitto.port) == 0
    c.disconnect()
    mosquitto.kill()
    assert not mosquitto.running
    mosquitto.start()
    assert mosquitto.running
    assert "listener" in mosquitto.conf_path.read_text()
