"""Central never dies from one message and one row never sinks a batch (issue 8 item 4), wrong-node
events get a permanent rejection (issue 9 item 3), revocation bites through the key cache.

Real Mosquitto, real SQLite store, raw paho publishers standing in for nodes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central_sync.acks import AckBook
from central_sync.broker import LocalMosquitto
from central_sync.config import CentralConfig
from central_sync.ingest import IngestService
from central_sync.ingest_decode import unstorable
from central_sync.store import CentralStore
from central_sync.verify_cache import CachedEventVerifier, KeyCache
from edge.errors import SecurityError
from edge.signing import EventSigner, NodeKey
from edge.sync.wire import encode
from tests.test_ingest import Node, ServiceThread, _payloads, _topics, batch, ev, make_cfg, module_store, up, wait_until


@pytest.fixture
def central(tmp_path: Path, mosquitto: LocalMosquitto) -> Iterator[tuple[CentralConfig, CentralStore]]:
    # A long batch wait so that the messages below land in ONE commit batch.
    cfg = make_cfg(tmp_path, mosquitto.port, batch_wait_ms=400)
    store = CentralStore(cfg.database)
    yield cfg, store
    store.close()


def _raw(env_kw: dict[str, Any]) -> bytes:
    """An event body with fields pydantic accepts but no database can hold."""
    data = json.loads(encode(ev("node-a")))
    data.update(env_kw)
    return json.dumps(data).encode()  # ensure_ascii: a lone surrogate travels as "\\ud800"


def test_poison_rows_never_stop_central_nor_sink_other_nodes_events(
        central: tuple[CentralConfig, CentralStore], mosquitto: LocalMosquitto) -> None:
    cfg, store = central
    svc = ServiceThread(cfg, store).start()
    nodes = {n: Node(mosquitto.port, n, db=cfg.database) for n in ("node-a", "node-b", "node-c")}
    try:
        big_seq = json.loads(_raw({"seq": 2**63}))
        surrogate_payload = json.loads(_raw({"payload": {"note": "\ud800"}}))
        good_b, good_c, good_a = ev("node-b"), ev("node-c"), ev("node-a")
        nodes["node-b"].publish(up("node-b"), encode(good_b))
        nodes["node-a"].publish(up("node-a"), _raw({"event_id": "lone-\ud800-surrogate-id"}))
        nodes["node-a"].publish(up("node-a"), json.dumps(big_seq).encode())
        nodes["node-a"].publish(up("node-a"), json.dumps(surrogate_payload).encode())
        nodes["node-a"].publish(up("node-a"), batch("node-a", [good_a, {**big_seq, "event_id": "f" * 32}]))
        nodes["node-c"].publish(up("node-c"), encode(good_c))
        wait_until(lambda: good_b.event_id in nodes["node-b"].acked_ids()
                   and good_c.event_id in nodes["node-c"].acked_ids()
                   and good_a.event_id in nodes["node-a"].acked_ids(), what="other nodes' events acked")
        wait_until(lambda: {big_seq["event_id"], surrogate_payload["event_id"], "f" * 32}
                   <= set(nodes["node-a"].rejected()), what="permanent rejections")
        rejected = nodes["node-a"].rejected()
        assert rejected[big_seq["event_id"]] == "out_of_range"
        assert rejected["f" * 32] == "out_of_range"
        assert rejected[surrogate_payload["event_id"]] == "bad_text"
        assert all(all(n.committed_at_ack) for n in nodes.values())
        assert store.count_events() == 3
        s = svc.service.stats
        # The lone-surrogate event id is refused while decoding (pydantic), the others by value checks.
        assert s.rejected == {"bad_field": 1, "bad_text": 1, "out_of_range": 2}
        # Still alive and ingesting.
        again = ev("node-b", seq=5)
        nodes["node-b"].publish(up("node-b"), encode(again))
        wait_until(lambda: again.event_id in nodes["node-b"].acked_ids(), what="ingest continues")
        assert svc.task is not None and not svc.task.done()
    finally:
        for n in nodes.values():
            n.close()
        svc.stop()


def test_wrong_node_events_get_a_permanent_rejection_in_the_topic_nodes_ack(
        central: tuple[CentralConfig, CentralStore], mosquitto: LocalMosquitto) -> None:
    cfg, store = central
    svc = ServiceThread(cfg, store).start()
    post = Node(mosquitto.port, "node-b", db=cfg.database)
    try:
        foreign_single = ev("node-a", seq=1)  # e.g. rows of a cloned SD card's former node id
        foreign_in_batch, own = ev("node-a", seq=2), ev("node-b", seq=3)
        foreign_batch = [ev("node-x", seq=i) for i in range(3)]
        post.publish(up("node-b"), encode(foreign_single))
        post.publish(up("node-b"), batch("node-b", [own, foreign_in_batch]))
        post.publish(up("node-b"), batch("node-x", foreign_batch))  # batch-level node id is foreign
        expected = {foreign_single.event_id, foreign_in_batch.event_id, *(e.event_id for e in foreign_batch)}
        wait_until(lambda: expected <= set(post.rejected()) and own.event_id in post.acked_ids(),
                   what="wrong_node rejections")
        assert {post.rejected()[i] for i in expected} == {"wrong_node"}
        assert store.count_events() == 1 and store.get_event(foreign_single.event_id) is None
        assert svc.service.stats.rejected["wrong_node"] == 5
    finally:
        post.close()
        svc.stop()


def test_hostile_bodies_of_every_kind_are_rejected_as_counted_rejections(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, 1)
    store = CentralStore(cfg.database)
    svc = IngestService(cfg, store)
    deep = b"[" * 100_000 + b"]" * 100_000
    bodies = [
        (up("node-a"), deep),
        (up("node-a", "heartbeat"), json.dumps({"v": 1, "kind": "heartbeat", "node_id": "node-a", "boot_id": "b",
                                                "at": 1.0, "version": "1", "time_quality": "synced",
                                                "outbox": {"ready": 2**70}}).encode()),
        (up("node-a", "presence"), json.dumps({"v": 1, "kind": "presence", "node_id": "node-a",
                                               "state": "online", "display_name": "\ud800"}).encode()),
        (up("node-a", "presence"), b'{"v": 1, "kind": "presence", "node_id": "node-a", "state": "online", '
                                   b'"at": Infinity}'),
        ("kentongan/v1/up/\ud800/event", encode(ev())),
    ]

    async def feed() -> None:
        for topic, body in bodies:
            await svc.handle_message(topic, body)
        good = ev()
        await svc.handle_message(up("node-a"), encode(good))
        await svc.flush()
        assert store.get_event(good.event_id) is not None

    asyncio.run(feed())
    assert svc.stats.rejected_total() == len(bodies)
    assert sum(store.rejection_counts().values()) == len(bodies)
    assert store.list_nodes() == [] or all(n["display_name"] is None for n in store.list_nodes())
    store.close()


def test_unstorable_detects_what_no_backend_can_hold() -> None:
    assert unstorable({"a": [1, "ok", {"b": 2**63 - 1}]}) is None
    assert unstorable({"a": [2**63]}) == ("out_of_range", "integer outside the signed 64-bit range")
    assert unstorable({"\udc80": 1})[0] == "bad_text"  # type: ignore[index]
    assert unstorable(float("nan"))[0] == "out_of_range"  # type: ignore[index]
    nested: Any = 1
    for _ in range(50_000):
        nested = [nested]
    assert unstorable(nested) is None  # iterative: no RecursionError


def test_one_ack_per_node_per_batch_even_for_many_ids() -> None:
    book = AckBook()
    for i in range(12_000):
        book.stored("node-a", f"id-{i}")
    book.reject("node-a", "bad-1", "wrong_node")
    book.stored("node-b", "id-b")
    acks = book.acks(1.0)
    assert [a.node_id for a in acks] == ["node-a", "node-a", "node-a", "node-b"]  # split only at 5,000 ids
    assert sum(len(a.event_ids) for a in acks if a.node_id == "node-a") == 12_000


def test_key_cache_reads_the_registry_once_and_drops_keys_on_revocation() -> None:
    key = Ed25519PrivateKey.generate()
    registry: dict[str, NodeKey] = {"node-a": NodeKey("node-a", key.public_key(), "enrolled")}
    lookups: list[str] = []
    generation = [1]

    def lookup(node_id: str) -> NodeKey | None:
        lookups.append(node_id)
        return registry.get(node_id)

    now = [0.0]
    cache = KeyCache(lookup, lambda: generation[0], check_every_s=1.0, clock=lambda: now[0])
    verifier = CachedEventVerifier(cache)
    signer = EventSigner(key)
    for i in range(50):
        verifier.refresh()
        verifier.verify(signer.sign(ev("node-a", seq=i)))
    assert lookups == ["node-a"]
    with pytest.raises(SecurityError) as unknown:
        verifier.verify(signer.sign(ev("node-z")))
    assert unknown.value.reason == "unknown_node"
    registry["node-a"] = NodeKey("node-a", key.public_key(), "revoked")
    generation[0] = 2
    now[0] = 0.5
    verifier.refresh()  # within check_every_s: not yet re-read
    verifier.verify(signer.sign(ev("node-a", seq=99)))
    now[0] = 1.5
    verifier.refresh()
    with pytest.raises(SecurityError) as revoked:
        verifier.verify(signer.sign(ev("node-a", seq=100)))
    assert revoked.value.reason == "revoked" and cache.invalidations == 1


def test_signature_checked_over_the_received_bytes(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    cache = KeyCache(lambda n: NodeKey(n, key.public_key(), "enrolled"), lambda: 1)
    cfg = make_cfg(tmp_path, 1)
    store = CentralStore(cfg.database)
    svc = IngestService(cfg, store, verify_event=CachedEventVerifier(cache))
    signed = EventSigner(key).sign(ev("node-a"))
    tampered = json.loads(encode(EventSigner(key).sign(ev("node-a", seq=1))))
    tampered["priority"] = 4

    async def feed() -> None:
        await svc.handle_message(up("node-a"), encode(signed))
        await svc.handle_message(up("node-a"), json.dumps(tampered).encode())
        await svc.flush()

    asyncio.run(feed())
    assert store.get_event(signed.event_id) is not None and store.get_event(tampered["event_id"]) is None
    assert svc.stats.rejected == {"bad_signature": 1}
    store.close()


_surrogate_text = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
_poison = st.fixed_dictionaries({"seq": st.integers(min_value=2**63, max_value=2**80)}) | st.fixed_dictionaries(
    {"payload": st.dictionaries(st.text(max_size=5) | _surrogate_text, st.integers(min_value=-(2**70), max_value=2**70)
                                | _surrogate_text | st.floats(allow_nan=True, allow_infinity=True), max_size=3)})


@pytest.fixture(scope="module")
def generated_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CentralConfig, CentralStore]]:
    yield from module_store(tmp_path_factory, "generated")  # as test_ingest's garbage test does


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.lists(st.tuples(_topics, _payloads), min_size=1, max_size=6), poison=st.lists(_poison, max_size=3))
def test_generated_bodies_never_sink_other_nodes_events_in_the_same_batch(
        generated_store: tuple[CentralConfig, CentralStore], garbage: list[tuple[str, bytes]],
        poison: list[dict[str, Any]]) -> None:
    cfg, store = generated_store
    svc = IngestService(cfg, store)
    others = [ev("node-b", seq=1), ev("node-c", seq=2)]

    async def feed() -> None:
        svc.handle(up("node-b"), encode(others[0]), None)
        for topic, body in garbage:
            svc.handle(topic, body, None)
        for fields in poison:
            data = json.loads(encode(ev("node-a")))
            data.update(fields)
            svc.handle(up("node-a"), json.dumps(data).encode(), None)
        svc.handle(up("node-c"), encode(others[1]), None)
        await svc.flush()  # ONE commit batch holds all of the above

    asyncio.run(feed())
    assert all(store.get_event(e.event_id) is not None for e in others)
    s = svc.stats
    assert s.batches == 1 and s.acked >= 2
    assert s.inserted + s.duplicates + s.rejected_total() + s.snapshots + s.updates == s.outcomes_expected()


def test_message_buffer_bounds_qos0_and_keeps_every_qos1() -> None:
    import aiomqtt

    from central_sync.mqtt_central import MessageBuffer

    dropped: list[int] = []

    async def fill() -> MessageBuffer:
        buf = MessageBuffer()
        buf.qos0_limit = 100
        buf.on_drop = lambda: dropped.append(1)
        for i in range(300):
            buf.put_nowait(aiomqtt.Message(up("node-a", "heartbeat"), b"{}", qos=0, retain=False, mid=0,
                                           properties=None))
            buf.put_nowait(aiomqtt.Message(up("node-a"), b"{}", qos=1, retain=False, mid=i + 1, properties=None))
        return buf

    buf = asyncio.run(fill())
    messages = buf.take(10_000)
    assert sum(m.qos == 1 for m in messages) == 300  # held back by the broker's receive maximum instead
    assert sum(m.qos == 0 for m in messages) <= 100 and len(dropped) >= 200


def test_reader_pauses_past_max_pending_events(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, 1, max_pending_events=50, batch_max=20)
    store = CentralStore(cfg.database)
    svc = IngestService(cfg, store)

    async def scenario() -> None:
        for i in range(60):
            svc.handle(up("node-a"), encode(ev(seq=i)), None)
        assert not svc._room.is_set()  # the broker connection stops reading (backpressure)
        await svc._commit_once()
        assert svc._room.is_set()
        await svc.flush()

    asyncio.run(scenario())
    assert store.count_events() == 60
    store.close()


def test_overload_stops_reading_the_socket_and_memory_stays_bounded(tmp_path: Path,
                                                                    mosquitto: LocalMosquitto) -> None:
    """A publisher far faster than the commits: ingest stops reading (TCP backpressure), its
    buffers stay within their limits, and every event is still committed and acknowledged."""
    import paho.mqtt.client as paho

    from central_sync.read_gate import READ_PACKETS

    cfg = make_cfg(tmp_path, mosquitto.port, max_pending_events=300, max_buffered_messages=100, batch_max=50,
                   batch_wait_ms=50)
    store = CentralStore(cfg.database)
    svc = ServiceThread(cfg, store).start()
    acks: set[str] = set()
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-fast-post", protocol=paho.MQTTv5)
    pub.max_inflight_messages_set(5000)
    pub.on_message = lambda _c, _u, m: acks.update(json.loads(m.payload)["event_ids"])
    pub.connect("127.0.0.1", mosquitto.port)
    pub.subscribe("kentongan/v1/down/node-a/ack", qos=1)
    pub.loop_start()
    try:
        envs = [ev(seq=i) for i in range(4000)]
        for e in envs:
            pub.publish(up("node-a"), encode(e), qos=1)
        wait_until(lambda: len(acks) >= len(envs), timeout=120, what="every event acked")
        s = svc.service.stats
        assert s.read_pauses_live > 0
        assert s.buffer_peak <= 100 + READ_PACKETS
        assert store.count_events() == 4000
    finally:
        pub.loop_stop()
        pub.disconnect()
        svc.stop()
        store.close()


def test_two_posts_with_the_same_event_id_in_one_batch_each_get_their_own_ack(
        central: tuple[CentralConfig, CentralStore], mosquitto: LocalMosquitto) -> None:
    """Event ids are unique per post only: the same id from two posts in one commit batch is
    two stored events, and each post's Ack names it (neither Ack goes to the other post)."""
    cfg, store = central
    svc = ServiceThread(cfg, store).start()
    nodes = {n: Node(mosquitto.port, n, db=cfg.database) for n in ("node-a", "node-b")}
    try:
        a = ev("node-a", seq=1)
        b = ev("node-b", seq=1).model_copy(update={"event_id": a.event_id})
        nodes["node-a"].publish(up("node-a"), encode(a))
        nodes["node-b"].publish(up("node-b"), encode(b))
        wait_until(lambda: a.event_id in nodes["node-a"].acked_ids() and a.event_id in nodes["node-b"].acked_ids(),
                   what="both posts acked")
        assert store.count_events() == 2
        assert svc.service.stats.batches == 1  # the two messages landed in one commit batch
    finally:
        for n in nodes.values():
            n.close()
        svc.stop()
