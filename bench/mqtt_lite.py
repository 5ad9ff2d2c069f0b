"""A minimal MQTT 5 client for the fleet LOAD GENERATOR only (``bench/fleet_sim.py``); not product code.

Why: with one paho client per simulated post, paho's Python packet handling (a ``Properties``
object and an ``MQTTMessageInfo`` per publish, one ``send`` per packet, its ``loop_*`` calls) cost
~120 us of CPU per offered event, so on a 2-core box the load generator took a third of the CPU
of a "how far does central scale" run and bounded the knee itself. Posts, central, the broker and
the echo baseline keep using paho; only the simulator uses this.

What it does, and no more: CONNECT (clean start, session expiry, optional credentials,
keepalive) and the CONNACK check; SUBSCRIBE/SUBACK; PUBLISH QoS 0/1 out (topics pre-encoded,
no properties; the server's Receive Maximum is honoured); PUBACK in; PUBLISH in (QoS 1 answered
with PUBACK); PINGREQ/PINGRESP; DISCONNECT. All sockets are non-blocking on one selector
(``Hub``, epoll); what a loop turn queues for a socket goes out in one ``send``; frames are
parsed incrementally from each socket's receive buffer. The PUBACK answering an incoming QoS 1
message (a post's Ack) rides with that socket's next send, or goes out at the next
``Hub.flush_lazy`` (the simulator calls it once a second): one send per event instead of two.
MQTT sets no time limit for it and the broker allows 1,000 in flight per client, so nothing waits
on it; central never sees it. No reconnect, no QoS 2, no topic aliases.

Strict: anything unexpected (a malformed frame, a refused CONNACK/SUBACK/PUBACK reason code, an
unknown packet id, the server closing or disconnecting) is a protocol error: counted in
``Hub.errors`` (with a note in ``Hub.notes``) and the client is closed, never ignored; the
simulator reports the count and bench/fleet.py fails the run on any.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections import deque
from typing import Protocol

MAX_REMAINING = 268_435_455  # 4 bytes of varint
PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGRESP, DISCONNECT_T = 1, 2, 3, 4, 8, 9, 13, 14


class ProtocolError(Exception):
    """The peer sent something this client does not accept."""


def encode_varint(n: int) -> bytes:
    """MQTT's Variable Byte Integer (remaining length, property lengths)."""
    if not 0 <= n <= MAX_REMAINING:
        raise ValueError(f"varint out of range: {n}")
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def decode_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None if ``buf`` ends inside it; ProtocolError past 4 bytes."""
    value, shift = 0, 0
    for i in range(4):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ProtocolError("malformed variable byte integer (more than 4 bytes)")


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def connect_packet(client_id: str, keepalive: int, *, clean_start: bool = True, session_expiry: int = 0,
                   username: str | None = None, password: str | None = None) -> bytes:
    flags = (0x02 if clean_start else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    props = b"\x11" + session_expiry.to_bytes(4, "big")  # Session Expiry Interval, explicit as paho sends it
    body = b"\x00\x04MQTT\x05" + bytes((flags,)) + keepalive.to_bytes(2, "big") + encode_varint(len(props)) + props
    body += utf8(client_id) + (utf8(username) if username is not None else b"")
    body += utf8(password) if password is not None else b""
    return frame(CONNECT << 4, body)


def subscribe_packet(pid: int, topic: str, qos: int) -> bytes:
    return frame(SUBSCRIBE << 4 | 0x02, pid.to_bytes(2, "big") + b"\x00" + utf8(topic) + bytes((qos,)))


def publish_parts(topic: bytes, payload: bytes, qos: int, pid: int = 0, retain: bool = False) -> tuple[bytes, ...]:
    """One PUBLISH as parts to join (``topic`` pre-encoded by ``utf8``; no properties)."""
    first = PUBLISH << 4 | qos << 1 | (1 if retain else 0)
    if qos:
        n = len(topic) + 3 + len(payload)
        head = bytes((first, n & 0x7F | 0x80, n >> 7)) if 128 <= n < 16384 else bytes((first,)) + encode_varint(n)
        return head, topic, bytes((pid >> 8, pid & 0xFF, 0)), payload
    return bytes((first,)) + encode_varint(len(topic) + 1 + len(payload)), topic, b"\x00", payload


def puback_packet(pid: int) -> bytes:
    return b"\x40\x02" + pid.to_bytes(2, "big")


class FrameReader:
    """Incremental frame parser: bytes in as they arrive, whole (first byte, body) frames out."""

    def __init__(self, max_size: int = MAX_REMAINING) -> None:
        self.buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf: bytes | bytearray = data
        if self.buf:  # a frame was split across reads
            self.buf += data
            buf = self.buf
        out: list[tuple[int, bytes]] = []
        pos, size = 0, len(buf)
        while size - pos >= 2:
            length = buf[pos + 1]
            start = pos + 2
            if length & 0x80:
                got = decode_varint(buf, pos + 1)
                if got is None:
                    break
                length, start = got
                if length > self.max_size:
                    raise ProtocolError(f"frame of {length} bytes exceeds {self.max_size}")
            end = start + length
            if end > size:
                break
            out.append((buf[pos], bytes(buf[start:end])))
            pos = end
        if buf is data:
            if pos < size:
                self.buf = bytearray(data[pos:])
        else:
            del self.buf[:pos]
        return out


def parse_publish(first: int, body: bytes) -> tuple[str, bytes, int, int]:
    """(topic, payload, qos, packet id) of an incoming PUBLISH."""
    qos = first >> 1 & 3
    if qos == 3 or len(body) < 2:
        raise ProtocolError("malformed PUBLISH")
    tlen = int.from_bytes(body[:2], "big")
    pos = 2 + tlen
    topic = body[2:pos].decode()
    pid = 0
    if qos:
        pid = int.from_bytes(body[pos:pos + 2], "big")
        pos += 2
    got = decode_varint(body, pos)
    if got is None or got[0] + got[1] > len(body):
        raise ProtocolError("malformed PUBLISH properties")
    return topic, body[got[0] + got[1]:], qos, pid


def _props(body: bytes, pos: int) -> dict[int, int]:
    """The integer properties of a CONNACK (the others are skipped by their known sizes)."""
    got = decode_varint(body, pos)
    if got is None:
        raise ProtocolError("malformed properties")
    length, pos = got
    end, out = pos + length, {}
    sizes = {0x11: 4, 0x21: 2, 0x22: 2, 0x24: 1, 0x25: 1, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1, 0x13: 2}
    while pos < end:
        pid = body[pos]
        pos += 1
        if pid in sizes:
            out[pid] = int.from_bytes(body[pos:pos + sizes[pid]], "big")
            pos += sizes[pid]
        elif pid in (0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x26):  # strings / binary (0x26: a pair)
            for _ in range(2 if pid == 0x26 else 1):
                pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
        else:
            raise ProtocolError(f"unknown CONNACK property 0x{pid:02x}")
    if pos != end:
        raise ProtocolError("malformed properties")
    return out


class Session(Protocol):
    """What a client reports to (a simulated post)."""

    def mqtt_connected(self, client: Client) -> None: ...
    def mqtt_message(self, client: Client, topic: str, payload: bytes) -> None: ...
    def mqtt_published(self, client: Client, pid: int) -> None: ...


class Hub:
    """The epoll all clients of a process share, and their protocol error count."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.by_fd: dict[int, Client] = {}
        self.dirty: set[Client] = set()
        self.lazy: set[Client] = set()  # only PUBACKs queued (``flush_lazy``)
        self.clients: list[Client] = []
        self.errors = 0
        self.notes: list[str] = []

    def error(self, client: Client, text: str) -> None:
        self.errors += 1
        if len(self.notes) < 20:
            self.notes.append(f"{client.client_id}: {text}")
        client.close(send_disconnect=False)

    def flush(self) -> None:
        """Everything queued this loop turn: one send per socket."""
        dirty, self.dirty = self.dirty, set()
        for client in dirty:
            client.flush()

    def flush_lazy(self) -> None:
        lazy, self.lazy = self.lazy, set()
        for client in lazy:
            client.flush()

    def poll(self, timeout: float) -> int:
        """Wait up to ``timeout`` for sockets; serve them; how many were ready."""
        by_fd = self.by_fd
        ready = self.epoll.poll(timeout)
        for fd, events in ready:
            client = by_fd.get(fd)
            if client is None:
                continue
            if events & select.EPOLLOUT:
                client.flush()
            if events & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                client.read()
        return len(ready)

    def tick(self, now: float) -> None:
        """Keepalive: PINGREQ after ``keepalive`` seconds without sending; no PINGRESP in time is an error."""
        for client in self.clients:
            client.tick(now)

    def close_all(self) -> None:
        for client in self.clients:
            client.close(send_disconnect=True)
        self.epoll.close()


class Client:
    __slots__ = ("client_id", "closed", "connected", "hub", "inflight", "keepalive", "last_out", "next_pid",
                 "out", "ping_at", "reader", "receive_max", "session", "sock", "subs", "waiting", "writing")

    def __init__(self, hub: Hub, client_id: str, session: Session) -> None:
        self.hub, self.client_id, self.session = hub, client_id, session
        self.sock: socket.socket | None = None
        self.reader = FrameReader()
        self.out: list[bytes] = []
        self.writing = False  # registered for EVENT_WRITE (a send left bytes over)
        self.connected = self.closed = False
        self.inflight: set[int] = set()  # QoS 1 packet ids not yet PUBACKed
        self.subs: set[int] = set()  # SUBSCRIBE packet ids not yet SUBACKed
        self.waiting: deque[tuple[int, tuple[bytes, ...]]] = deque()  # over the server's Receive Maximum
        self.receive_max = 65535
        self.next_pid = 0
        self.keepalive = 60
        self.last_out = self.ping_at = 0.0
        hub.clients.append(self)

    def connect(self, host: str, port: int, *, keepalive: int = 60, clean_start: bool = True,
                session_expiry: int = 0, username: str | None = None, password: str | None = None) -> None:
        """TCP connect (blocking, raises OSError as ``socket.create_connection``), then CONNECT queued."""
        sock = socket.create_connection((host, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self.sock, self.keepalive = sock, keepalive
        self.hub.by_fd[sock.fileno()] = self
        self.hub.epoll.register(sock.fileno(), select.EPOLLIN)
        self._queue(connect_packet(self.client_id, keepalive, clean_start=clean_start, session_expiry=session_expiry,
                                   username=username, password=password))

    def _queue(self, *parts: bytes) -> None:
        self.out.extend(parts)
        self.hub.dirty.add(self)

    def _pid(self) -> int:
        pid = self.next_pid
        while True:
            pid = pid % 65535 + 1
            if pid not in self.inflight and pid not in self.subs:
                self.next_pid = pid
                return pid

    def subscribe(self, topic: str, qos: int) -> int:
        pid = self._pid()
        self.subs.add(pid)
        self._queue(subscribe_packet(pid, topic, qos))
        return pid

    def publish(self, topic: bytes, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        """Queue a PUBLISH (``topic`` from ``utf8``); its packet id (0 for QoS 0)."""
        if not qos:
            self._queue(*publish_parts(topic, payload, 0, 0, retain))
            return 0
        pid = self._pid()
        self.inflight.add(pid)
        parts = publish_parts(topic, payload, qos, pid, retain)
        if len(self.inflight) - len(self.waiting) > self.receive_max:
            self.waiting.append((pid, parts))
        else:
            self._queue(*parts)
        return pid

    def flush(self) -> None:
        if self.closed or self.sock is None or not self.out:
            return
        data = b"".join(self.out)
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.hub.error(self, f"send: {exc}")
            return
        self.last_out = time.monotonic()
        self.out = [data[sent:]] if sent < len(data) else []
        if bool(self.out) != self.writing:
            self.writing = bool(self.out)
            self.hub.epoll.modify(self.sock.fileno(), select.EPOLLIN | (select.EPOLLOUT if self.writing else 0))

    def read(self) -> None:
        if self.closed or self.sock is None:
            return
        try:
            data = self.sock.recv(262_144)
        except BlockingIOError:
            return
        except OSError as exc:
            self.hub.error(self, f"recv: {exc}")
            return
        if not data:
            self.hub.error(self, "connection closed by the server")
            return
        try:
            for first, body in self.reader.feed(data):
                self._handle(first, body)
                if self.closed:
                    return
        except (ProtocolError, UnicodeDecodeError, IndexError) as exc:
            self.hub.error(self, f"protocol: {exc}")

    def _handle(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PUBACK:
            pid = body[0] << 8 | body[1] if len(body) >= 2 else -1
            if pid not in self.inflight:
                raise ProtocolError(f"PUBACK for unknown packet id {pid}")
            if len(body) > 2 and body[2] >= 0x80:
                raise ProtocolError(f"PUBACK reason 0x{body[2]:02x}")
            self.inflight.discard(pid)
            if self.waiting:
                self._queue(*self.waiting.popleft()[1])
            self.session.mqtt_published(self, pid)
        elif kind == PUBLISH:
            topic, payload, qos, pid = parse_publish(first, body)
            if qos == 2:
                raise ProtocolError("QoS 2 PUBLISH (never subscribed at QoS 2)")
            if qos:  # rides with the next send (module docstring)
                self.out.append(puback_packet(pid))
                self.hub.lazy.add(self)
            self.session.mqtt_message(self, topic, payload)
        elif kind == CONNACK:
            self._connack(body)
        elif kind == SUBACK:
            pid = int.from_bytes(body[:2], "big")
            got = decode_varint(body, 2)
            if pid not in self.subs or got is None:
                raise ProtocolError(f"SUBACK for unknown packet id {pid}")
            codes = body[got[0] + got[1]:]
            if not codes or any(c >= 0x80 for c in codes):
                raise ProtocolError(f"SUBACK refused: {codes.hex()}")
            self.subs.discard(pid)
        elif kind == PINGRESP:
            self.ping_at = 0.0
        elif kind == DISCONNECT_T:
            raise ProtocolError(f"DISCONNECT from the server, reason 0x{body[0] if body else 0:02x}")
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    def _connack(self, body: bytes) -> None:
        if self.connected or len(body) < 2:
            raise ProtocolError("unexpected CONNACK")
        if body[1] != 0:
            raise ProtocolError(f"CONNACK refused, reason 0x{body[1]:02x}")
        props = _props(body, 2)
        self.receive_max = props.get(0x21, 65535)
        self.keepalive = props.get(0x13, self.keepalive)  # Server Keep Alive overrides ours
        self.connected = True
        self.session.mqtt_connected(self)

    def tick(self, now: float) -> None:
        if self.closed or not self.connected or not self.keepalive:
            return
        if self.ping_at and now - self.ping_at > self.keepalive:
            self.hub.error(self, "no PINGRESP within the keepalive")
        elif not self.ping_at and now - self.last_out >= self.keepalive:
            self.ping_at = now
            self._queue(PINGREQ)

    def close(self, *, send_disconnect: bool) -> None:
        if self.closed or self.sock is None:
            return
        self.closed = True
        if send_disconnect:
            self.out.append(DISCONNECT)
            self.sock.setblocking(True)
            self.sock.settimeout(2)
            with contextlib.suppress(OSError):
                self.sock.sendall(b"".join(self.out))
        self.hub.by_fd.pop(self.sock.fileno(), None)
        with contextlib.suppress(OSError, ValueError):
            self.hub.epoll.unregister(self.sock.fileno())
        self.sock.close()

