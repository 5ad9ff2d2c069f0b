"""The one MQTT/TLS client factory of the project (protocol surface: the post and central use it).

Everything that opens a connection to the broker builds it here: the post's sync service
(``edge.sync.mqtt``), its self-test (``edge.selftest``), central's ingest workers
(``central_sync.mqtt_central``) and central's one-shot command sender. So there is one place that

* loads private keys through systemd credentials (:func:`edge.credentials.credential_path`): a
  service running as an unprivileged user with ``LoadCredential=`` reads its copy of the key in
  ``$CREDENTIALS_DIRECTORY``, never the root-only original;
* turns every failure to build the TLS context into a :class:`TransportError` with a short
  machine-readable ``reason`` and a human ``detail`` (``key_unreadable: permission denied reading
  /etc/kentongan/keys/node.key as uid 998 ...``), instead of a bare ``PermissionError``;
* sets the connection options both sides share: MQTT 5, ``TCP_NODELAY`` on the client socket
  (Nagle + delayed ACK cost ~40 ms per publish->Ack round trip; the broker configs set
  ``set_tcp_nodelay true`` for the same reason), the CONNACK timeout and the session expiry.

The caller owns the reconnect loop (aiomqtt 2.x has none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from aiomqtt.types import SubscribeTopic
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.credentials import credential_path, describe_unreadable
from edge.errors import SyncError
from edge.logs import log_event

__all__ = [
    "NODELAY",
    "ConnectSpec",
    "TlsFiles",
    "TransportError",
    "make_client",
    "make_paho_client",
    "on_connack",
    "paho_client",
    "raise_if_cancelling",
    "session",
    "subscribe",
    "tls_context",
]

log = logging.getLogger(__name__)

#: Socket options of every client socket: no Nagle delay on small publishes and acks.
NODELAY: tuple[tuple[int, int, int], ...] = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


class TransportError(SyncError):
    """The connection cannot even be attempted (unreadable key, broken CA file, ...).

    ``reason``: ``key_unreadable``, ``cert_unreadable``, ``ca_unreadable``, ``crl_unreadable`` or
    ``tls_mismatch``; ``detail``: one line naming the file and the remedy."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TlsFiles:
    """Mutual TLS material. ``key_file`` is resolved through systemd credentials."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    crl_file: Path | None = None


@dataclass(frozen=True)
class ConnectSpec:
    """What a client connects to and as whom (MQTT 5, persistent session unless ``clean_start``)."""

    host: str
    port: int
    client_id: str
    tls: TlsFiles | None = None
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    session_expiry_s: int = 24 * 3600
    clean_start: bool = False
    will: aiomqtt.Will | None = None
    #: MQTT 5 Receive Maximum announced to the broker (None: the broker's default).
    receive_maximum: int | None = None
    #: paho's own in-flight limit for our publishes.
    max_inflight: int = 32
    #: Bound on the CONNACK wait (a broker dying mid-handshake otherwise hangs the attempt).
    timeout: float = 5.0
    socket_options: tuple[tuple[int, int, int], ...] = field(default=NODELAY)


def raise_if_cancelling(cause: BaseException | None = None) -> None:
    """Re-raise a cancellation that was swallowed on the way (post and central alike).

    Python 3.11's ``asyncio.wait_for`` (which aiomqtt uses for every publish) returns the result
    and drops the cancellation when both happen at once; and leaving ``async with client`` while
    cancelled, aiomqtt's disconnect can raise ``MqttError`` over the ``CancelledError``. A loop
    that goes on after that (reconnecting, claiming) never lets its task finish: call this after
    such awaits and in ``except MqttError`` of a reconnect loop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from cause


async def subscribe(client: aiomqtt.Client, topic: SubscribeTopic, *, qos: int = 0,
                    properties: Properties | None = None) -> tuple[int, ...] | list[ReasonCode]:
    """``client.subscribe`` that cannot swallow a stop (central's connection tasks use it).

    aiomqtt waits for the CONNACK and the SUBACK with ``asyncio.wait_for``, which on Python 3.11
    returns the answer and drops a cancellation landing in the same loop iteration; the task
    then consumed its session forever while being cancelled, and whatever waited for it (the
    service's ``TaskGroup``, a stop, systemd) hung. The task's cancellation count stays raised,
    so the check after the SUBACK also catches a stop lost at the CONNACK just before.

    Only for a task whose count is not raised otherwise: the post's sync loop is not one (a
    Python 3.11 ``TaskGroup`` whose child fails while it is exiting cancels its parent and never
    uncancels it), so ``edge.sync.service`` keeps plain subscribes."""
    granted = await client.subscribe(topic, qos=qos, properties=properties)
    raise_if_cancelling()
    return granted


def _read_error(reason: str, path: Path, exc: OSError) -> TransportError:
    return TransportError(reason, describe_unreadable(path, exc))


def tls_context(tls: TlsFiles) -> ssl.SSLContext:
    """A client-side TLS context (server verified against ``ca_file``, our certificate and key
    when given, the CRL checked for the broker's certificate when given).

    Raises :class:`TransportError` naming the file that cannot be used and why."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
    except ssl.SSLError as exc:  # (an OSError subclass: test it first)
        raise TransportError("ca_unreadable", f"{tls.ca_file} is not a CA certificate: {exc}") from None
    except OSError as exc:
        raise _read_error("ca_unreadable", tls.ca_file, exc) from None
    if tls.cert_file is not None and tls.key_file is not None:
        key = credential_path(tls.key_file)
        for path, reason in ((tls.cert_file, "cert_unreadable"), (key, "key_unreadable")):
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise _read_error(reason, tls.key_file if reason == "key_unreadable" else path,
                                  exc) from None
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(key))
        except ssl.SSLError as exc:
            raise TransportError("tls_mismatch", f"{tls.cert_file} and {tls.key_file} do not "
                                 f"form a certificate/key pair: {exc}") from None
        except OSError as exc:
            raise _read_error("key_unreadable", tls.key_file, exc) from None
    if tls.crl_file is not None:
        try:
            ctx.load_verify_locations(str(tls.crl_file))
        except (OSError, ssl.SSLError) as exc:
            raise TransportError("crl_unreadable", f"{tls.crl_file}: {exc}") from None
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def _connect_properties(spec: ConnectSpec) -> Properties:
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = spec.session_expiry_s
    if spec.receive_maximum is not None:
        props.ReceiveMaximum = spec.receive_maximum
    return props


def make_client(spec: ConnectSpec, *, logger: logging.Logger | None = None,
                queue_type: Callable[..., Any] | None = None,
                max_queued_incoming: int = 0,
                pending_calls_threshold: int = 1_000_000) -> aiomqtt.Client:
    """An aiomqtt 2.x client for ``spec`` (not connected yet: use it as ``async with``).

    Raises :class:`TransportError` when the TLS material cannot be loaded."""
    ctx = tls_context(spec.tls) if spec.tls is not None else None
    kwargs: dict[str, Any] = {}
    if queue_type is not None:
        kwargs["queue_type"] = queue_type
    if logger is not None:
        kwargs["logger"] = logger
    client = aiomqtt.Client(
        spec.host, spec.port,
        identifier=spec.client_id,
        username=spec.username,
        password=spec.password,
        protocol=aiomqtt.ProtocolVersion.V5,
        clean_start=spec.clean_start,
        properties=_connect_properties(spec),
        will=spec.will,
        keepalive=spec.keepalive,
        timeout=spec.timeout,
        max_inflight_messages=spec.max_inflight,
        max_queued_incoming_messages=max_queued_incoming,
        tls_context=ctx,
        socket_options=spec.socket_options,
        **kwargs,
    )
    client.pending_calls_threshold = pending_calls_threshold
    return client


def paho_client(client: aiomqtt.Client) -> paho.Client:
    """The paho client an aiomqtt client drives: the project's ONE access to it.

    aiomqtt 2.x (pinned ``<3``) builds its paho client itself in ``Client.__init__`` (it cannot
    be handed one) and has no public accessor, while the project needs paho API that aiomqtt does
    not wrap: manual PUBACKs, per-filter message callbacks and the socket for read backpressure
    (central's ingest), publishes without an awaited future and a PUBACK hook (the post's
    uplink), the CONNACK properties (``on_connack``) and the socket of a disconnect that hangs.
    Every module goes through this function, so an aiomqtt upgrade that moves it fails here,
    loudly (``TransportError("aiomqtt_incompatible")``), and in ``tests/test_transport.py``."""
    inner = getattr(client, "_client", None)  # the one private access (see above)
    if not isinstance(inner, paho.Client):
        raise TransportError("aiomqtt_incompatible",
                             "this aiomqtt does not hold a paho client where 2.x does; install aiomqtt>=2.3,<3")
    return inner


def on_connack(client: aiomqtt.Client, callback: Callable[[Properties | None], None]) -> None:
    """Also call ``callback(properties)`` with every CONNACK's MQTT 5 properties (the broker's
    capabilities: aiomqtt 2.x reads only the reason code), before aiomqtt's own handler
    completes the connect: so they are known when ``async with client`` enters. Install before
    connecting."""
    mqtt = paho_client(client)
    inner: Callable[..., object] | None = mqtt.on_connect  # aiomqtt's, kept

    def chained(c: paho.Client, userdata: Any, flags: Any, reason: Any, props: Properties | None = None) -> None:
        callback(props)
        if inner is not None:
            inner(c, userdata, flags, reason, props)

    mqtt.on_connect = chained


def make_paho_client(spec: ConnectSpec) -> paho.Client:
    """A plain paho (threaded) MQTT 5 client for one-shot tools (self-test, command sender);
    same TLS loading and errors as :func:`make_client`. Connect with
    ``client.connect(spec.host, spec.port, spec.keepalive, clean_start=..., properties=...)`` or
    simply :func:`paho_connect`."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=spec.client_id,
                         protocol=paho.MQTTv5)
    if spec.tls is not None:
        client.tls_set_context(tls_context(spec.tls))
    if spec.username:
        client.username_pw_set(spec.username, spec.password)
    if spec.will is not None:
        client.will_set(spec.will.topic, spec.will.payload, spec.will.qos, spec.will.retain)
    client.max_inflight_messages_set(spec.max_inflight)
    return client


def paho_connect(client: paho.Client, spec: ConnectSpec) -> None:
    """Connect a :func:`make_paho_client` client (``OSError``/``ssl.SSLError`` as paho raises
    them) and set ``TCP_NODELAY`` on its socket."""
    client.connect(spec.host, spec.port, keepalive=spec.keepalive,
                   clean_start=spec.clean_start, properties=_connect_properties(spec))
    sock = client.socket()
    if isinstance(sock, socket.socket):
        for opt in spec.socket_options:
            sock.setsockopt(*opt)


DISCONNECT_TIMEOUT_S = 5.0


def _shutdown(sock: object) -> None:
    if isinstance(sock, socket.socket):  # an ssl.SSLSocket is one too
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def drop_connection(client: aiomqtt.Client) -> None:
    """Close ``client``'s socket now, through paho, on the loop thread.

    The socket is shut down and paho reads the end of stream itself, so paho closes it and
    aiomqtt's close callback removes its reader and stops its once-a-second task while the
    loop still runs. (Closing the bare socket instead leaves paho holding it: its finaliser
    later calls into aiomqtt's loop, which may be closed by then.) A no-op when the socket is
    already closed."""
    mqtt = paho_client(client)
    for _ in range(16):  # each read handles what the broker had already sent, then the end
        sock = mqtt.socket()
        if sock is None:
            return
        _shutdown(sock)
        try:
            mqtt.loop_read()
        except Exception as exc:  # paho turns socket errors into codes; anything else is a bug
            log_event(log, "mqtt_drop_failed", logging.WARNING, error=repr(exc)[:200])
            break
    sock = mqtt.socket()
    if isinstance(sock, socket.socket):  # paho would not let go: close it ourselves
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            loop.remove_reader(sock)
            loop.remove_writer(sock)
        with contextlib.suppress(OSError):
            sock.close()


async def connect(client: aiomqtt.Client) -> None:
    """``client.__aenter__()`` (connect and wait for the CONNACK) that never leaves a
    connection behind when it fails or is cancelled.

    aiomqtt 2.x keeps the socket open when the CONNACK wait times out or is cancelled (a broker
    that accepted TCP but is too busy to answer, a reconnect storm): the socket, its reader and a
    once-a-second task would stay until paho's keepalive check closes them, and a CONNECT the
    broker processes late could even take the client id's session over from the next attempt.
    So on any failure the connection is dropped at once (:func:`drop_connection`); a connect
    still running in aiomqtt's executor thread when the wait is cancelled shuts its socket down
    as soon as it opens."""
    mqtt = paho_client(client)
    aiomqtt_open = mqtt.on_socket_open
    abandoned = False

    def on_socket_open(c: paho.Client, userdata: Any, sock: Any) -> None:
        if aiomqtt_open is not None:
            aiomqtt_open(c, userdata, sock)
        if abandoned:  # the attempt was given up while this thread was still connecting
            _shutdown(sock)

    mqtt.on_socket_open = on_socket_open
    try:
        await client.__aenter__()
    except BaseException:
        abandoned = True
        drop_connection(client)
        raise
    mqtt.on_socket_open = aiomqtt_open


@contextlib.asynccontextmanager
async def session(client: aiomqtt.Client,
                  disconnect_timeout: float = DISCONNECT_TIMEOUT_S) -> AsyncIterator[aiomqtt.Client]:
    """``async with client`` for every connection of the project (post and central): connects
    with :func:`connect`, and its exit cannot hang and leaves no socket behind. aiomqtt waits
    without a limit for the broker to confirm a graceful DISCONNECT (seen to hang under load when
    the session is torn down by cancellation); after ``disconnect_timeout`` the connection is
    dropped instead, and the broker treats it as a lost connection (the last will fires, the
    session stays)."""
    await connect(client)
    try:
        yield client
    finally:
        try:
            async with asyncio.timeout(disconnect_timeout):
                await client.__aexit__(None, None, None)
        except TimeoutError:
            log_event(log, "mqtt_disconnect_timeout", logging.WARNING, client_id=client.identifier)
        finally:
            drop_connection(client)
