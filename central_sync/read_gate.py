"""Backpressure on one broker connection: ``ReadGate`` reads its socket only while ingest has room.

Split out of ``central_sync.mqtt_central`` (client construction, subscriptions, presence): this is
the part that drives paho's reads on the event loop, used by every ingest connection
(``central_sync.ingest_connection``) and the P1 lane (``central_sync.ingest_p1``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable

import aiomqtt

from central_sync.mqtt_central import MQTT_LOGGER
from edge.logs import log_event
from edge.sync import transport


class ReadGate:
    """Reads one broker connection's socket only while ingest has room: TCP backpressure.

    Manual PUBACKs and the MQTT 5 receive maximum alone do not bound what the broker sends:
    Mosquitto 2.0.11 exceeds a client's receive maximum once the client PUBACKs at all
    (measured; docs/scale.md). So ``install`` puts this gate's reader in place of aiomqtt's (the
    same public paho ``loop_read``, on the event loop's public ``add_reader``): while ``full()``
    it stops reading (the kernel buffers fill, then the broker keeps the rest in central's
    session), and ``poke()`` reads again once there is room. aiomqtt removes the reader by file
    descriptor when the socket closes, so that path is unchanged. A paused connection reads no
    PINGRESP either, and paho closes a connection that received nothing for a keepalive: so
    while paused the gate makes one paho read every third of the keepalive (a bounded
    overshoot: paho reads as many packets per call as it has messages in flight). Measured
    without it: a reconnecting fleet's backlog kept ingest paused past the keepalive, the
    connection dropped, and a short shared-group session expiry then discarded everything the
    broker had queued for it."""

    def __init__(self, client: aiomqtt.Client, full: Callable[[], bool]) -> None:
        self._paho = transport.paho_client(client)
        self._full = full
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = None
        self._reading = False
        self._timer: asyncio.TimerHandle | None = None
        self.pauses = 0

    def install(self) -> None:
        sock = self._paho.socket()
        if sock is None:
            return
        self._fd = sock.fileno()
        self._loop.remove_reader(self._fd)
        self._loop.add_reader(self._fd, self._read)
        self._reading = True

    def poke(self) -> None:
        """Read again if paused and no longer full."""
        if self._reading or self._fd is None or self._full():
            return
        sock = self._paho.socket()
        if sock is None or sock.fileno() != self._fd:
            return
        self._loop.add_reader(self._fd, self._read)
        self._reading = True

    def _read(self) -> None:
        """Read packets while there is room and data (at most ``READ_PACKETS`` per wake-up):
        paho's ``loop_read`` alone reads one packet per call when nothing is in flight."""
        try:
            for _ in range(READ_PACKETS):
                if self._full():
                    if self._fd is not None:
                        self._loop.remove_reader(self._fd)
                    self._reading = False
                    self.pauses += 1
                    self._arm_keepalive()
                    return
                self._paho.loop_read()
                if not _more_to_read(self._paho.socket()):
                    return
        except Exception as exc:  # a broken socket: end the session, the connection loop reconnects
            log_event(MQTT_LOGGER, "broker_read_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}"[:300])
            self._paho.disconnect()

    def _arm_keepalive(self) -> None:
        keepalive = self._paho.keepalive
        if self._timer is None and keepalive > 0:
            self._timer = self._loop.call_later(keepalive / 3, self._keepalive_read)

    def _keepalive_read(self) -> None:
        """Still paused: read a few packets so the connection does not die of its keepalive."""
        self._timer = None
        sock = self._paho.socket()
        if self._reading or self._fd is None or sock is None or sock.fileno() != self._fd:
            return
        try:
            if _more_to_read(sock):
                self._paho.loop_read()  # as many packets as paho has messages in flight, few
        except Exception:  # a broken socket: end the session, the connection loop reconnects
            self._paho.disconnect()
            return
        self._arm_keepalive()


#: Packets one wake-up of ``ReadGate`` reads at most (then other tasks run).
READ_PACKETS = 200


#: ``MSG_PEEK | MSG_DONTWAIT`` as a plain int: or-ing the ``IntFlag`` members runs the enum
#: machinery in Python (0.7 us) on every read of the socket.
_PEEK = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)


def _more_to_read(sock: object) -> bool:
    """Whether the socket has bytes (or decrypted TLS records) waiting, without blocking."""
    pending = getattr(sock, "pending", None)
    if isinstance(sock, ssl.SSLSocket):
        return callable(pending) and pending() > 0
    if not isinstance(sock, socket.socket):
        return False
    try:
        return bool(sock.recv(1, _PEEK))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True  # let paho see (and handle) the error
