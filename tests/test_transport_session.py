"""Every MQTT connection of the project goes through ``edge.sync.transport.session``, which
leaves no connection behind when the CONNACK wait fails, is cancelled, or the disconnect hangs.

aiomqtt 2.x keeps the socket, its reader and a once-a-second task after a failed connect. Left
there, paho's finaliser later calls into a closed event loop ("Event loop is closed"); in a test
run, the traceback that Python 3.11 formats for it can even break an ``ast.parse`` running at that
moment (CPython gh-106905), which is how a CI run failed."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from central_sync.broker import LocalMosquitto
from edge.sync.transport import ConnectSpec, make_client, on_connack, paho_client, session, subscribe

WAIT = 30.0


class SilentBroker:
    """Accepts TCP connections on loopback and never answers (a broker too busy to CONNACK);
    records when each accepted connection is closed by the client."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.closed_by_client = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.sock.accept()
            self.accepted.set()
            conn.settimeout(WAIT)
            while conn.recv(4096):  # the CONNECT packet, then the end of the stream
                pass
            self.closed_by_client.set()
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent() -> Iterator[SilentBroker]:
    broker = SilentBroker()
    yield broker
    broker.close()


@pytest.fixture
def unraisable() -> Iterator[list[str]]:
    seen: list[str] = []
    previous = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(repr(u.exc_value))
    yield seen
    sys.unraisablehook = previous


def _spec(port: int, timeout: float) -> ConnectSpec:
    # keepalive 600 s: paho's own keepalive check must not be what closes the socket here
    return ConnectSpec(host="127.0.0.1", port=port, client_id="leak-check", keepalive=600, timeout=timeout)


def _run_on_a_loop_that_is_closed_without_cancelling(coro: Any) -> Any:
    """Like the tests' background-thread services: the loop is closed without cancelling its
    leftover tasks (``asyncio.run`` would cancel them and hide the leak)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


@pytest.mark.parametrize("how", ["connack_timeout", "cancelled"])
def test_a_failed_connect_closes_its_connection_at_once(silent: SilentBroker, unraisable: list[str],
                                                        how: str) -> None:
    async def attempt() -> tuple[str, bool]:
        client = make_client(_spec(silent.port, timeout=0.5 if how == "connack_timeout" else WAIT))
        try:
            if how == "cancelled":
                async with asyncio.timeout(0.5):
                    async with session(client):
                        pass
            else:
                async with session(client):
                    pass
        except (aiomqtt.MqttError, TimeoutError) as exc:
            outcome = type(exc).__name__
        else:
            outcome = "connected?"
        return outcome, paho_client(client).socket() is None

    outcome, released = _run_on_a_loop_that_is_closed_without_cancelling(attempt())
    assert outcome == ("MqttError" if how == "connack_timeout" else "TimeoutError")
    assert silent.accepted.is_set()
    assert released, "paho still holds the socket of the failed attempt"
    assert silent.closed_by_client.wait(WAIT), "the broker never saw the abandoned connection end"
    gc.collect()
    assert unraisable == []


def test_without_the_session_aiomqtt_leaves_the_connection_open(silent: SilentBroker,
                                                                unraisable: list[str]) -> None:
    """The failure mode the session exists for, shown on plain ``async with client``."""
    async def attempt() -> bool:
        client = make_client(_spec(silent.port, timeout=0.5))
        with pytest.raises(aiomqtt.MqttError):
            async with client:
                pass
        return paho_client(client).socket() is None

    released = _run_on_a_loop_that_is_closed_without_cancelling(attempt())
    assert not released
    assert not silent.closed_by_client.is_set()
    gc.collect()
    assert any("Event loop is closed" in u for u in unraisable)


ENTERS_A_CLIENT = r"__aenter__|async with (\w+\.)*(make_client|Client)\(|async with (client|mqtt|c)\b:"


def test_every_connection_of_the_project_goes_through_the_session() -> None:
    """No module of the post, central or the tests enters an aiomqtt client itself
    (``async with client`` or ``__aenter__``): they use ``edge.sync.transport.session``."""
    root = Path(__file__).resolve().parent.parent
    offenders = []
    for package in ("central_sync", "edge", "tests"):
        for path in sorted((root / package).rglob("*.py")):
            if path.relative_to(root).as_posix() in ("edge/sync/transport.py", "tests/test_transport_session.py"):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(ENTERS_A_CLIENT, line):
                    offenders.append(f"{path.relative_to(root)}:{n}")
    assert offenders == []


# -- a stop that lands with the broker's answer --------------------------------------------------
# aiomqtt waits for the CONNACK and every SUBACK with ``asyncio.wait_for``; on Python 3.11 that
# returns the answer and drops a cancellation arriving in the same loop iteration. Central's
# ingest stop then hung (its P1 lane, cancelled while its SUBACK came in, consumed on forever
# and the service's TaskGroup waited for it). These tests make the race exact: the stop is
# requested from inside paho's callback for that answer, right where aiomqtt resolves its wait.

async def _stopped(attempt: Any) -> str:
    """Run ``attempt`` as a task; what became of it within ``WAIT`` s."""
    task = asyncio.get_running_loop().create_task(attempt)
    try:
        async with asyncio.timeout(WAIT):
            return str(await task)
    except asyncio.CancelledError:
        return "stopped" if task.cancelled() else "cancelled outside"
    except TimeoutError:
        task.cancel()
        return "never stopped"


def test_a_stop_that_races_the_connack_is_caught_at_the_subscribe(mosquitto: LocalMosquitto) -> None:
    async def attempt() -> str:
        client = make_client(_spec(mosquitto.port, timeout=WAIT))
        me = asyncio.current_task()
        assert me is not None
        on_connack(client, lambda _props: me.cancel())  # called just before aiomqtt's handler
        async with session(client):
            await subscribe(client, "kentongan/v1/up/#", qos=1)
            await asyncio.sleep(2 * WAIT)  # consuming, as ingest does
            return "went on"

    assert asyncio.run(_stopped(attempt())) == "stopped"


def test_a_stop_that_races_the_suback_is_not_lost(mosquitto: LocalMosquitto) -> None:
    async def attempt() -> str:
        client = make_client(_spec(mosquitto.port, timeout=WAIT))
        me = asyncio.current_task()
        assert me is not None
        async with session(client):
            mqtt = paho_client(client)
            aiomqtt_on_subscribe = mqtt.on_subscribe

            def on_subscribe(*args: Any) -> None:
                aiomqtt_on_subscribe(*args)  # resolves aiomqtt's wait for the SUBACK
                me.cancel()

            mqtt.on_subscribe = on_subscribe
            await subscribe(client, "kentongan/v1/up/#", qos=1)
            await asyncio.sleep(2 * WAIT)  # consuming, as ingest does
            return "went on"

    assert asyncio.run(_stopped(attempt())) == "stopped"


def test_every_subscribe_of_central_goes_through_the_transport() -> None:
    """Central subscribes with ``edge.sync.transport.subscribe`` only (a plain
    ``await client.subscribe`` can lose a stop)."""
    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in sorted((root / "central_sync").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"await (\w+\.)+subscribe\(", line):
                offenders.append(f"{path.relative_to(root)}:{n}")
    assert offenders == []
