"""Real central processes for the scale-out and flood tests: config files, ``kentongan-central``
subprocesses, readiness through central's retained STATE, process RSS."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "kentongan/v1"


def write_config(path: Path, port: int, **ingest: Any) -> Path:
    lines = [f'database = "{path.parent / "central.db"}"', 'log_level = "INFO"', "[broker]", f"port = {port}",
             'client_id = "central"', "reconnect_min_seconds = 0.1", "reconnect_max_seconds = 1.0", "[ingest]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in ingest.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "central_sync.cli", *args], cwd=ROOT, stdout=out, stderr=out)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class StateWatcher:
    """Follows the retained ``central/state/+`` messages: which central ids read online."""

    def __init__(self, port: int) -> None:
        self.states: dict[str, str] = {}
        self.history: list[tuple[str, str]] = []  # (central_id, state) in arrival order
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-state-watcher",
                                  protocol=paho.MQTTv5)
        self.client.on_connect = lambda c, *_a: c.subscribe(f"{PREFIX}/central/state/+", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        data = json.loads(msg.payload)
        with self.lock:
            self.states[data["central_id"]] = data["state"]
            self.history.append((data["central_id"], data["state"]))

    def online(self) -> set[str]:
        with self.lock:
            return {k for k, v in self.states.items() if v == "online"}

    def wait_online(self, ids: set[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= self.online():
            if time.monotonic() > deadline:
                raise AssertionError(f"central ids {ids - self.online()} not online: {self.states}")
            time.sleep(0.05)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
