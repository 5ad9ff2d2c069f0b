"""Test helpers for the sync tests: node configs, a tiny paho acker (unit tests of the edge side
only), a background-loop runner for SyncService, and a node process script for kill -9 tests.

Run as a script it is that node process::

    python tests/helpers_sync.py NODE_CONFIG.json OUTBOX.db

It opens the Outbox and a SyncService from the config and runs until killed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # script mode: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import paho.mqtt.client as paho

from edge.clock import Clock
from edge.config import NodeConfig, parse_config
from edge.errors import ModemError
from edge.outbox import Outbox
from edge.sync.service import SyncService
from edge.sync.wire import Ack, Command, Topics, encode
from edge.sync.wire_decode import decode
from tests.waits import wait_for


def node_config(port: int, node_id: str = "pos-rt03", **sync: Any) -> NodeConfig:
    data: dict[str, Any] = {
        "node": {"node_id": node_id, "kelurahan_code": "33.74.10.1001", "rw": 5, "rt": 3,
                 "display_name": "Pos Ronda RT 03 RW 05"},
        "siren": {"pin": 17},
        "sync": {"broker_host": "127.0.0.1", "broker_port": port, **sync},
    }
    modem = sync.pop("modem", None)
    if modem is not None:
        data["sync"].pop("modem", None)
        data["modem"] = modem
    return parse_config(data)


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05,
               what: str = "condition") -> None:
    """``tests.waits.wait_for`` with this module's historical argument order."""
    wait_for(cond, timeout, what, interval)


class SmsRecorder:
    """The SMS sender a ``SyncService`` is given (``sms_sender``): records each ``(number, text)``
    thread-safely; with ``fail`` set it raises ``ModemError`` as a modem that does not answer."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.fail = False
        self.lock = threading.Lock()

    def __call__(self, number: str, text: str) -> None:
        if self.fail:
            raise ModemError("no answer to AT+CMGS")
        with self.lock:
            self.sent.append((number, text))


class PahoAcker:
    """Stand-in for central in edge-only tests: records every event envelope and acks it.

    ``ack`` False records without acknowledging; ``reject`` maps event types to a reason.
    """

    def __init__(self, port: int, prefix: str = "kentongan/v1", *, ack: bool = True,
                 reject: dict[str, str] | None = None) -> None:
        self.topics = Topics(prefix)
        self.ack = ack
        self.reject = reject or {}
        self.events: list[dict[str, Any]] = []
        self.seen: set[str] = set()
        self.results: list[dict[str, Any]] = []
        self.presence: list[dict[str, Any]] = []
        self.heartbeats: list[dict[str, Any]] = []
        #: (channel, event id) of every envelope received, in arrival order (``event/p1`` too).
        self.arrivals: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-acker",
                                  protocol=paho.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.connect("127.0.0.1", port)
        self._connected = threading.Event()
        self.client.loop_start()
        if not self._connected.wait(10):
            raise AssertionError("acker could not connect")

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, _rc: Any, _p: Any = None) -> None:
        client.subscribe(self.topics.up_wildcard("#").replace("+/#", "#"), qos=1)
        self._connected.set()

    def _on_message(self, client: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        _d, node, channel = self.topics.parse(msg.topic)
        data = json.loads(msg.payload)
        with self.lock:
            if channel == "event/p1":  # recorded only: this acker plays a central without the P1 lane
                envs = data["events"] if data.get("kind") == "event_batch" else [data]
                self.arrivals.extend((channel, e["event_id"]) for e in envs)
            elif channel == "event":
                envs = data["events"] if data.get("kind") == "event_batch" else [data]
                self.events.extend(envs)
                self.seen.update(e["event_id"] for e in envs)
                self.arrivals.extend((channel, e["event_id"]) for e in envs)
                if not self.ack:
                    return
                ok = [e["event_id"] for e in envs if not self.reject.get(e["type"])]
                rejected = [{"event_id": e["event_id"], "reason": self.reject[e["type"]]}
                            for e in envs if self.reject.get(e["type"])]
                ack = Ack(node_id=node, event_ids=ok, rejected=rejected, central_time=time.time())
                client.publish(self.topics.down(node, "ack"), encode(ack), qos=1)
            elif channel == "cmd_result":
                self.results.append(data)
            elif channel == "presence":
                self.presence.append(data)
            elif channel == "heartbeat":
                self.heartbeats.append(data)

    def send_command(self, cmd: Command, topic_node: str | None = None) -> None:
        self.client.publish(self.topics.down(topic_node or cmd.node_id, "cmd"), encode(cmd), qos=1)

    def send_raw(self, node: str, payload: bytes) -> None:
        self.client.publish(self.topics.down(node, "cmd"), payload, qos=1)

    def unique_ids(self) -> set[str]:
        with self.lock:
            return set(self.seen)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class LoopThread:
    """An asyncio loop on a background thread, for running a SyncService beside sync test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coro: Any) -> Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@contextmanager
def running_service(svc: Any) -> Iterator[LoopThread]:
    """Run ``svc.run()`` on a background loop; cancel it (and wait) on exit."""
    lt = LoopThread()

    async def start() -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(svc.run())

    task: asyncio.Task[None] = lt.call(start())
    try:
        yield lt
    finally:
        async def stop() -> None:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        lt.call(stop())
        lt.close()


def make_command(node_id: str, action: str = "status", *, ttl: float = 60.0,
                 command_id: str | None = None, issued_at: float | None = None) -> Command:
    now = time.time() if issued_at is None else issued_at
    return Command(command_id=command_id or f"cmd-{time.monotonic_ns()}", node_id=node_id,
                   action=action, params={}, issued_at=now, expires_at=now + ttl)


def decode_result(data: dict[str, Any]) -> Any:
    return decode(json.dumps(data).encode(), expected_kind="command_result")


def plain_post(port: int, outbox: Outbox, **sync: Any) -> SyncService:
    """A post's ``SyncService`` on ``outbox`` (its node id, its clock) against the broker on
    ``port``: no snapshots, no siren state, no commands; ``sync`` overrides the sync settings."""
    return SyncService(node_config(port, outbox.node_id, **sync), outbox, snapshots=None, clock=outbox.clock,
                       status_provider=lambda: {"state": "off"}, command_handler=None)


# ------------------------------------------------------------------ node process (kill -9 tests)

async def _node_main(cfg_path: str, db_path: str) -> None:
    cfg = NodeConfig.model_validate_json(Path(cfg_path).read_text())
    clock = Clock()
    outbox = await asyncio.to_thread(Outbox, Path(db_path), cfg.node.node_id, clock=clock)
    svc = SyncService(cfg, outbox, snapshots=None, clock=clock,
                      status_provider=lambda: {"state": "off"}, command_handler=None)
    print("node-ready", flush=True)
    await svc.run()


if __name__ == "__main__":
    asyncio.run(_node_main(sys.argv[1], sys.argv[2]))
