"""bench/mqtt_lite.py, the load generator's minimal MQTT 5 client: its frame encoder and
incremental decoder, and that anything it does not accept is counted as a protocol error (real
loopback sockets; the "server" is the test writing raw bytes)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

from bench import mqtt_lite as m


def test_varint_round_trips_at_the_length_boundaries() -> None:
    cases = {0: 1, 127: 1, 128: 2, 16383: 2, 16384: 3, 2_097_151: 3, 2_097_152: 4, 268_435_455: 4}
    for value, size in cases.items():
        raw = m.encode_varint(value)
        assert len(raw) == size, value
        assert m.decode_varint(raw, 0) == (value, size)
        assert m.decode_varint(raw[:-1], 0) is None  # cut inside: wait for more
    assert m.encode_varint(128) == b"\x80\x01" and m.encode_varint(16384) == b"\x80\x80\x01"
    with pytest.raises(ValueError):
        m.encode_varint(268_435_456)
    with pytest.raises(m.ProtocolError):
        m.decode_varint(b"\xff\xff\xff\xff\x01", 0)


@pytest.mark.parametrize("size", [0, 1, 121, 122, 127, 128, 16383, 16384, 70_000])
def test_publish_frames_decode_whole_from_any_split(size: int) -> None:
    """Frames of every length class, cut at every point (and several per read), come out whole."""
    topic = m.utf8("kentongan/v1/down/post-00001/ack")
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frames = [b"".join(m.publish_parts(topic, payload, 1, 7)), b"".join(m.publish_parts(topic, payload, 0)),
              m.puback_packet(65535)]
    stream = b"".join(frames)
    cuts = range(1, len(stream)) if len(stream) < 400 else [1, 2, 3, 4, 5, 200, len(stream) // 2, len(stream) - 1]
    for cut in cuts:
        reader = m.FrameReader()
        got = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert [f for f, _b in got] == [0x32, 0x30, 0x40], cut
        assert m.parse_publish(*got[0]) == ("kentongan/v1/down/post-00001/ack", payload, 1, 7)
        assert m.parse_publish(*got[1]) == ("kentongan/v1/down/post-00001/ack", payload, 0, 0)
        assert got[2][1] == b"\xff\xff"
        assert not reader.buf
    one_by_one = m.FrameReader()
    if len(stream) < 2000:
        out = [f for i in range(len(stream)) for f in one_by_one.feed(stream[i:i + 1])]
        assert len(out) == 3


def test_remaining_length_matches_the_frame() -> None:
    for size in (100, 124, 125, 126, 16_000, 16_400):
        raw = b"".join(m.publish_parts(m.utf8("t"), b"x" * size, 1, 1))
        length, start = m.decode_varint(raw, 1) or (0, 0)
        assert start + length == len(raw)


class Recorder:
    def __init__(self) -> None:
        self.connected = 0
        self.messages: list[tuple[str, bytes]] = []
        self.published: list[int] = []

    def mqtt_connected(self, client: m.Client) -> None:
        self.connected += 1

    def mqtt_message(self, client: m.Client, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))

    def mqtt_published(self, client: m.Client, pid: int) -> None:
        self.published.append(pid)


@pytest.fixture
def server() -> Iterator[socket.socket]:
    srv = socket.create_server(("127.0.0.1", 0))
    yield srv
    srv.close()


def _connected(server: socket.socket, username: str | None = None) -> tuple[m.Hub, m.Client, Recorder, socket.socket]:
    hub, rec = m.Hub(), Recorder()
    client = m.Client(hub, "sim-test", rec)
    client.connect("127.0.0.1", server.getsockname()[1], keepalive=30, username=username, password=username)
    hub.flush()
    peer, _ = server.accept()
    peer.settimeout(10)
    return hub, client, rec, peer


def _serve(hub: m.Hub, until: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not until():
        assert time.monotonic() < deadline, what
        hub.flush()
        hub.poll(0.05)


def test_connect_subscribe_publish_and_incoming_qos1(server: socket.socket) -> None:
    hub, client, rec, peer = _connected(server, username="u1")
    connect = peer.recv(1000)
    assert connect[0] == 0x10 and b"MQTT\x05" in connect and b"sim-test" in connect and b"u1" in connect
    assert connect[9] == 0x02 | 0x80 | 0x40  # clean start, username, password
    peer.sendall(b"\x20\x06\x00\x00\x03\x21\x00\x01")  # CONNACK ok, Receive Maximum 1
    _serve(hub, lambda: rec.connected == 1, "CONNACK")
    sub = client.subscribe("down/x/ack", 1)
    first = client.publish(m.utf8("up/x/event"), b"one", 1)
    second = client.publish(m.utf8("up/x/event"), b"two", 1)  # over Receive Maximum 1: held back
    assert [pid for pid, _parts in client.waiting] == [second]
    hub.flush()
    got = m.FrameReader()
    frames: list[tuple[int, bytes]] = []
    while len(frames) < 2:
        frames += got.feed(peer.recv(1000))
    assert frames[0][0] == 0x82 and frames[1][0] == 0x32 and frames[1][1].endswith(b"one")
    peer.sendall(bytes((0x90, 4)) + sub.to_bytes(2, "big") + b"\x00\x01")  # SUBACK granted QoS 1
    peer.sendall(b"\x40\x02" + first.to_bytes(2, "big"))
    _serve(hub, lambda: rec.published == [first], "PUBACK")
    while not frames[2:]:
        hub.flush()
        frames += got.feed(peer.recv(1000))
    assert frames[2][1].endswith(b"two") and not client.waiting  # released by the PUBACK
    peer.sendall(b"".join(m.publish_parts(m.utf8("down/x/ack"), b'{"ok":1}', 1, 42)))
    _serve(hub, lambda: rec.messages == [("down/x/ack", b'{"ok":1}')], "incoming PUBLISH")
    hub.flush_lazy()
    assert got.feed(peer.recv(1000)) == [(0x40, b"\x00\x2a")]  # its PUBACK
    assert hub.errors == 0
    hub.close_all()
    assert peer.recv(100) == m.DISCONNECT
    peer.close()


@pytest.mark.parametrize("reply", [
    b"\x20\xff\xff\xff\xff\x01",  # remaining length over 4 bytes
    b"\x20\x03\x00\x87\x00",  # CONNACK refused (not authorized)
    b"\x40\x02\x00\x09",  # PUBACK for a packet id never sent
    b"\x20\x03\x00\x00\x00\xf0\x00",  # an unknown packet type after the CONNACK
    b"\x20\x03\x00\x00\x01\x7f",  # a CONNACK property this client does not know
])
def test_anything_unexpected_is_a_counted_error(server: socket.socket, reply: bytes) -> None:
    hub, client, _rec, peer = _connected(server)
    peer.recv(1000)
    peer.sendall(reply)
    _serve(hub, lambda: hub.errors == 1, "the protocol error")
    assert client.closed and len(hub.notes) == 1 and "sim-test" in hub.notes[0]
    peer.close()


def test_server_closing_the_connection_is_an_error(server: socket.socket) -> None:
    hub, _client, rec, peer = _connected(server)
    peer.recv(1000)
    peer.sendall(b"\x20\x03\x00\x00\x00")
    _serve(hub, lambda: rec.connected == 1, "CONNACK")
    peer.close()
    _serve(hub, lambda: hub.errors == 1, "the lost connection")
    assert "closed" in hub.notes[0]
