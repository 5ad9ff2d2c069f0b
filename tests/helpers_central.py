"""Real central processes for the scale-out and flood tests: config files, ``kentongan-central``
subprocesses, readiness through central's retained STATE, process RSS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from central_sync.config import CentralConfig
from central_sync.ingest import IngestService
from central_sync.store import CentralStore
from central_sync.verify_cache import CachedEventVerifier
from tests.helpers_sync import LoopThread, wait_until

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


class IngestInThread:
    """Central's ``IngestService`` on ``store``, run in a loop thread beside synchronous test code
    (the tests that need ingest in-process rather than a ``kentongan-central`` subprocess);
    ``start``/``stop`` may be repeated (central going away and coming back)."""

    def __init__(self, cfg: CentralConfig, store: CentralStore,
                 verify_event: CachedEventVerifier | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.verify_event = verify_event
        self.lt = LoopThread()
        self.ingest: IngestService | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        async def go() -> None:
            self.ingest = IngestService(self.cfg, self.store, verify_event=self.verify_event)
            self.task = asyncio.get_running_loop().create_task(self.ingest.run())
        self.lt.call(go())

    def wait_connected(self, timeout: float = 30, what: str = "central connected") -> None:
        wait_until(lambda: self.ingest is not None and self.ingest.connected.is_set(), timeout, what=what)

    def stop(self) -> None:
        async def halt() -> None:
            if self.task is not None:
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
            self.task = None
        self.lt.call(halt())

    def events(self, node_id: str) -> dict[str, dict[str, Any]]:
        """The events central stored for ``node_id`` (up to 5,000), by event id."""
        return {e["event_id"]: e for e in self.store.list_events(node_id=node_id, since_rowid=0, limit=5000)}

    def close(self) -> None:
        self.stop()
        self.lt.close()
        self.store.close()


def started_central(db: Path, port: int) -> IngestInThread:
    """An in-process central (``IngestInThread``) on a fresh SQLite store ``db`` against the
    broker on ``port``, started and connected; ``close()`` it when done."""
    c = IngestInThread(CentralConfig.model_validate({
        "database": str(db), "broker": {"host": "127.0.0.1", "port": port,
                                        "client_id": "central-test", "reconnect_max_seconds": 1.0}}),
        CentralStore(db))
    c.start()
    c.wait_connected(30, "central connected")
    return c

