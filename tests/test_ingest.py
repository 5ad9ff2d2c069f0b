"""Central ingest against a real Mosquitto, with raw paho-mqtt publishers standing in for nodes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from central_sync.broker import LocalMosquitto
from central_sync.config import CentralConfig, parse_central_config
from central_sync.errors import CentralError
from central_sync.ingest import IngestService
from central_sync.mqtt_central import subscriptions, worker_client_ids
from central_sync.store import CentralStore
from edge.errors import SecurityError
from edge.sync.wire import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    Command,
    CommandResult,
    EventEnvelope,
    Heartbeat,
    Presence,
    SnapshotEnvelope,
    b64,
    batch_prefix,
    encode,
    join_batch,
)
from tests.waits import wait_for as wait_until

PREFIX = "kentongan/v1"
WAIT = 30.0


def ev(node: str = "node-a", seq: int = 0, **kw: Any) -> EventEnvelope:
    data: dict[str, Any] = dict(event_id=uuid.uuid4().hex, node_id=node, boot_id="boot-1", seq=seq, mono_ns=seq,
                                wall_time=time.time(), time_quality="synced", type="PANIC", priority=1,
                                payload={"button": "panic"})
    data.update(kw)
    return EventEnvelope.model_validate(data)


def up(node: str, channel: str = "event") -> str:
    return f"{PREFIX}/up/{node}/{channel}"


def make_cfg(tmp: Path, port: int, **ingest: Any) -> CentralConfig:
    return parse_central_config({
        "database": str(tmp / "central.db"),
        "broker": {"port": port, "client_id": "central-test", "reconnect_min_seconds": 0.05,
                   "reconnect_max_seconds": 0.5},
        "ingest": {"batch_wait_ms": 10, **ingest},
    })


class ServiceThread:
    """Runs an IngestService on its own event loop in a background thread."""

    def __init__(self, cfg: CentralConfig, store: CentralStore, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.cfg, self.store, self.kw = cfg, store, kw
        self.service: IngestService
        self.task: asyncio.Task[None] | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.service = IngestService(self.cfg, self.store, **self.kw)
        self.ready.set()
        self.loop.run_forever()

    def start(self, wait_connected: bool = True) -> ServiceThread:
        self.thread.start()
        self.ready.wait(5)
        self.call(self._start_task())
        if wait_connected:
            self.call(asyncio.wait_for(self.service.connected.wait(), WAIT))
        return self

    async def _start_task(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.service.run())

    def call(self, coro: Any, timeout: float = WAIT) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    async def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def stop(self) -> None:
        if self.thread.is_alive():
            self.call(self._cancel())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


class Node:
    """A raw paho-mqtt 2.x client acting as one node: publishes uplink, collects Acks and commands."""

    def __init__(self, port: int, node_id: str = "node-a", db: Path | None = None) -> None:
        self.node_id = node_id
        self.db = db
        self.acks: list[dict[str, Any]] = []
        self.cmds: list[dict[str, Any]] = []
        #: For every Ack: were all its event ids already committed in central's database when it arrived?
        self.committed_at_ack: list[bool] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"test-{node_id}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(20)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(f"{PREFIX}/down/{node_id}/ack", 1), (f"{PREFIX}/down/{node_id}/cmd", 1)])
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        if msg.topic.endswith("/ack"):
            ok = True
            if self.db is not None and body["event_ids"]:
                conn = sqlite3.connect(self.db)
                marks = ",".join("?" * len(body["event_ids"]))
                sql = f"SELECT COUNT(*) FROM events WHERE event_id IN ({marks})"
                n = conn.execute(sql, body["event_ids"]).fetchone()
                conn.close()
                ok = n[0] == len(body["event_ids"])
            with self.lock:
                self.acks.append(body)
                self.committed_at_ack.append(ok)
        else:
            with self.lock:
                self.cmds.append(body)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)

    def acked_ids(self) -> list[str]:
        with self.lock:
            return [i for a in self.acks for i in a["event_ids"]]

    def rejected(self) -> dict[str, str]:
        with self.lock:
            return {r["event_id"]: r["reason"] for a in self.acks for r in a["rejected"]}

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def setup(tmp_path: Path, mosquitto: LocalMosquitto) -> Iterator[tuple[CentralConfig, CentralStore, Node]]:
    cfg = make_cfg(tmp_path, mosquitto.port)
    store = CentralStore(cfg.database)
    node = Node(mosquitto.port, "node-a", db=cfg.database)
    yield cfg, store, node
    node.close()
    store.close()


def test_events_stored_then_acked_after_commit(setup: tuple[CentralConfig, CentralStore, Node]) -> None:
    cfg, store, node = setup
    rows_seen: list[dict[str, Any]] = []
    svc = ServiceThread(cfg, store, on_events=rows_seen.extend).start()
    try:
        envs = [ev(seq=i) for i in range(300)]
        for e in envs:
            node.publish(up("node-a"), encode(e))
        wait_until(lambda: set(node.acked_ids()) >= {e.event_id for e in envs}, what="acks")
        assert all(node.committed_at_ack), "an Ack arrived before its events were committed"
        assert store.count_events("node-a") == 300
        assert sorted(r["event_id"] for r in rows_seen) == sorted(e.event_id for e in envs)
        assert all(isinstance(r["rowid"], int) for r in rows_seen)
        # Batched: far fewer commits and Acks than events.
        assert svc.service.stats.batches < 300 and len(node.acks) < 300
        assert svc.service.stats.inserted == 300
    finally:
        svc.stop()


def test_duplicates_stored_once_and_acked_again(setup: tuple[CentralConfig, CentralStore, Node]) -> None:
    cfg, store, node = setup
    svc = ServiceThread(cfg, store).start()
    try:
        e = ev()
        for n in (1, 2, 3):
            node.publish(up("node-a"), encode(e))
            wait_until(lambda n=n: node.acked_ids().count(e.event_id) == n, what=f"ack {n}")  # type: ignore[misc]
        assert store.count_events() == 1
        assert svc.service.stats.inserted == 1 and svc.service.stats.duplicates == 2
    finally:
        svc.stop()


def test_persistent_session_receives_messages_sent_while_down(setup: tuple[CentralConfig, CentralStore, Node]) -> None:
    cfg, store, node = setup
    first = ServiceThread(cfg, store).start()  # creates the persistent session
    first.stop()
    envs = [ev(seq=i) for i in range(50)]
    for e in envs:
        node.publish(up("node-a"), encode(e))  # central is down: the broker queues them
    assert store.count_events() == 0
    second = ServiceThread(cfg, store).start()
    try:
        wait_until(lambda: set(node.acked_ids()) >= {e.event_id for e in envs}, what="acks after restart")
        assert store.count_events() == 50 and all(node.committed_at_ack)
    finally:
        second.stop()


def test_a_backlog_committed_before_the_suback_is_acked(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    """A resumed session delivers the broker's queue as soon as the CONNACK is in; with no batch
    wait and no linger ingest commits some of it before its SUBACK arrives, and those Acks must go
    out on the connection then (not be counted unsent and left to the posts' resend timeout)."""
    cfg = make_cfg(tmp_path, mosquitto.port, batch_wait_ms=0, linger_ms=0)
    store = CentralStore(cfg.database)
    node = Node(mosquitto.port, "node-a", db=cfg.database)
    try:
        ServiceThread(cfg, store).start().stop()  # creates the persistent session
        envs = [ev(seq=i) for i in range(200)]
        for e in envs:
            node.publish(up("node-a"), encode(e))
        second = ServiceThread(cfg, store).start()
        try:
            wait_until(lambda: set(node.acked_ids()) >= {e.event_id for e in envs}, what="acks after restart")
            assert second.service.stats.acks_unsent == 0
        finally:
            second.stop()
    finally:
        node.close()
        store.close()


def test_reconnects_after_broker_sigkill(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    cfg = make_cfg(tmp_path, mosquitto.port)
    store = CentralStore(cfg.database)
    svc = ServiceThread(cfg, store).start()
    try:
        mosquitto.kill()
        wait_until(lambda: not svc.service.connected.is_set(), what="disconnect noticed")
        mosquitto.start()
        wait_until(svc.service.connected.is_set, what="reconnect")
        node = Node(mosquitto.port, "node-a", db=cfg.database)
        e = ev()
        node.publish(up("node-a"), encode(e))
        wait_until(lambda: e.event_id in node.acked_ids(), what="ack after reconnect")
        assert all(node.committed_at_ack)
        node.close()
    finally:
        svc.stop()
        store.close()


def test_bad_messages_rejected_counted_recorded_and_ingest_continues(
        setup: tuple[CentralConfig, CentralStore, Node]) -> None:
    cfg, store, node = setup
    svc = ServiceThread(cfg, store).start()
    try:
        good = ev(seq=1)
        bad_field = json.loads(encode(ev(seq=2)))
        bad_field["priority"] = 9
        huge = ev(seq=3, payload={"blob": "x" * 20_000}).model_dump(mode="json")
        wrong_version = {**json.loads(encode(ev(seq=4))), "v": 2}
        cases = [
            (up("node-a"), b"{not json"),
            (up("node-a"), encode(ev(seq=5))[:40]),                       # truncated
            (up("node-a"), json.dumps(huge).encode()),                    # oversized
            (up("node-a"), json.dumps(wrong_version).encode()),           # unknown version
            (up("node-b"), encode(ev("node-a", seq=6))),                  # node-a envelope on node-b's topic
            (up("node-a", "snapshot"), encode(ev(seq=7))),                # wrong kind for the channel
            (f"{PREFIX}/up/node-a/bogus", encode(ev(seq=8))),              # channel outside the tree
            (up("node-a"), json.dumps(bad_field).encode()),               # bad field (permanent)
            (up("node-a"), b"[1, 2]"),
        ]
        for topic, payload in cases:
            node.publish(topic, payload)
        node.publish(up("node-a"), encode(good))
        wait_until(lambda: good.event_id in node.acked_ids(), what="ack of the good event")
        wait_until(lambda: svc.service.stats.rejected_total() == len(cases), what="rejections")
        expected = {"not_json": 2, "oversized": 1, "unknown_version": 1, "wrong_topic": 1, "wrong_node": 1,
                    "wrong_kind": 1, "bad_field": 1, "not_object": 1}
        assert svc.service.stats.rejected == expected
        svc.call(svc.service.flush_rejections())
        assert store.rejection_counts() == expected
        assert store.count_events() == 1
        # The permanently bad event is named in an Ack so the node stops resending it.
        wait_until(lambda: bad_field["event_id"] in node.rejected(), what="rejection ack")
        assert node.rejected()[bad_field["event_id"]] == "bad_field"
        assert bad_field["event_id"] not in node.acked_ids()
    finally:
        svc.stop()


def test_verify_hook_rejects_permanently(setup: tuple[CentralConfig, CentralStore, Node]) -> None:
    cfg, store, node = setup

    def verify(env: EventEnvelope) -> None:
        if env.sig is None:
            raise SecurityError("unsigned", "no signature")

    svc = ServiceThread(cfg, store, verify_event=verify).start()
    try:
        signed, unsigned = ev(seq=1, sig="c2ln"), ev(seq=2)
        node.publish(up("node-a"), encode(signed))
        node.publish(up("node-a"), encode(unsigned))
        wait_until(lambda: unsigned.event_id in node.rejected() and signed.event_id in node.acked_ids(),
                   what="ack and rejection")
        assert node.rejected()[unsigned.event_id] == "unsigned"
        assert store.get_event(unsigned.event_id) is None and store.get_event(signed.event_id) is not None
        svc.call(svc.service.flush_rejections())
        assert store.rejection_counts() == {"unsigned": 1}
    finally:
        svc.stop()


def batch(node: str, items: list[Any]) -> bytes:
    """An event_batch body from envelopes (encoded) or raw dicts (malformed on purpose)."""
    return join_batch(batch_prefix(node), [encode(i) if isinstance(i, EventEnvelope)
                                           else json.dumps(i).encode() for i in items])


def test_batch_with_forged_and_malformed_envelopes_stores_the_rest(
        setup: tuple[CentralConfig, CentralStore, Node]) -> None:
    cfg, store, node = setup

    def verify(env: EventEnvelope) -> None:
        if env.sig != "c2ln":
            raise SecurityError("bad_signature", "forged")

    svc = ServiceThread(cfg, store, verify_event=verify).start()
    try:
        good = [ev(seq=i, sig="c2ln") for i in range(5)]
        forged = ev(seq=10, sig="Zm9yZ2Vk")
        malformed = {**json.loads(encode(ev(seq=11, sig="c2ln"))), "type": "lower case"}
        body = batch("node-a", [good[0], forged, good[1], malformed, *good[2:]])
        node.publish(up("node-a"), body)
        wait_until(lambda: {forged.event_id, malformed["event_id"]} <= set(node.rejected())
                   and {g.event_id for g in good} <= set(node.acked_ids()), what="acks and rejections")
        assert node.rejected() == {forged.event_id: "bad_signature", malformed["event_id"]: "bad_field"}
        assert all(node.committed_at_ack)
        assert [store.get_event(g.event_id) is not None for g in good] == [True] * 5
        assert store.get_event(forged.event_id) is None and store.get_event(malformed["event_id"]) is None
        s = svc.service.stats
        assert (s.event_batches, s.batched_events, s.inserted) == (1, 7, 5)
        svc.call(svc.service.flush_rejections())
        assert store.rejection_counts() == {"bad_signature": 1, "bad_field": 1}
        # The same batch again: duplicates acked again, nothing stored twice.
        node.publish(up("node-a"), body)
        wait_until(lambda: s.duplicates == 5, what="duplicates acked")
        assert store.count_events() == 5
    finally:
        svc.stop()


def test_malformed_and_oversized_batches_rejected_with_reason(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, 1)
    store = CentralStore(cfg.database)
    svc = IngestService(cfg, store)
    small = ev(seq=1)
    big_note = "x" * 2000
    too_big = [ev(seq=i, payload={"note": big_note}) for i in range(MAX_BATCH_BYTES // 2000 + 2)]
    cases: dict[str, bytes | list[bytes]] = {
        "oversized": batch("node-a", too_big),
        "bad_batch": [
            json.dumps({"v": 1, "kind": "event_batch", "node_id": "node-a", "events": []}).encode(),
            json.dumps({"v": 1, "kind": "event_batch", "node_id": "node-a", "events": {"a": 1}}).encode(),
            json.dumps({"v": 1, "kind": "event_batch", "node_id": "node-a", "events": [1, 2]}).encode(),
            batch("node-a", [{}] * (MAX_BATCH_EVENTS + 1)),  # real envelopes would pass 64 KiB first
        ],
        "bad_field": json.dumps({"v": 1, "kind": "event_batch", "node_id": "node-a",
                                 "events": [json.loads(encode(small))], "extra": 1}).encode(),
        "wrong_node": batch("node-b", [small]),
        "unknown_version": json.dumps({"v": 2, "kind": "event_batch", "node_id": "node-a",
                                       "events": [json.loads(encode(small))]}).encode(),
    }

    async def feed() -> None:
        for bodies in cases.values():
            for body in bodies if isinstance(bodies, list) else [bodies]:
                await svc.handle_message(up("node-a"), body)
        # An envelope over the single-event limit inside an otherwise fine batch: only it is rejected.
        huge = ev(seq=7, payload={"note": "y" * (17 * 1024)})
        huge_item = huge.model_dump(mode="json", exclude={"sig"})
        await svc.handle_message(up("node-a"), batch("node-a", [small, huge_item]))
        # A batch is not accepted on another channel.
        await svc.handle_message(up("node-a", "heartbeat"), batch("node-a", [small]))
        await svc.flush()
        assert store.get_event(small.event_id) is not None and store.get_event(huge.event_id) is None

    asyncio.run(feed())
    assert svc.stats.rejected == {"oversized": 2, "bad_batch": 4, "bad_field": 1, "wrong_node": 1,
                                  "unknown_version": 1, "wrong_kind": 1}
    assert svc.stats.inserted == 1
    store.close()


def test_snapshot_presence_heartbeat_and_commands(setup: tuple[CentralConfig, CentralStore, Node]) -> None:
    cfg, store, node = setup
    svc = ServiceThread(cfg, store, sign_command=lambda c: c.model_copy(update={"sig": "c2lnbmVk"})).start()
    try:
        data = b"\xff\xd8\xff\xe0" + os.urandom(5000)  # a JPEG's magic: images or nothing
        snap = SnapshotEnvelope(snapshot_id="snap-" + uuid.uuid4().hex, node_id="node-a", taken_at=time.time(),
                                data=b64(data))
        node.publish(up("node-a", "snapshot"), encode(snap))
        node.publish(up("node-a", "presence"), encode(Presence(node_id="node-a", state="online", boot_id="b",
                                                               display_name="Pos RT 03")))
        node.publish(up("node-a", "heartbeat"), encode(Heartbeat(node_id="node-a", boot_id="b", at=time.time(),
                                                                 version="0.1", time_quality="synced",
                                                                 outbox={"ready": 4, "in_flight": 2})))
        wait_until(lambda: any(snap.snapshot_id in a["snapshot_ids"] for a in list(node.acks)), what="snapshot ack")
        got = store.get_snapshot(snap.snapshot_id)
        assert got is not None and got["data"] == data
        wait_until(lambda: bool(store.list_nodes()) and store.list_nodes()[0]["backlog"] == 6, what="heartbeat")
        (n,) = store.list_nodes()
        assert n["online"] and n["display_name"] is None  # never the presence's: the registry's (none here)

        cmd = Command(command_id="cmd-" + uuid.uuid4().hex[:12], node_id="node-a", action="sound",
                      params={"pattern": "2-2-2"}, issued_at=time.time(), expires_at=time.time() + 300)
        svc.call(svc.service.send_command(cmd, issued_by="operator-1"))
        wait_until(lambda: bool(node.cmds), what="command at the node")
        assert node.cmds[0]["command_id"] == cmd.command_id and node.cmds[0]["sig"] == "c2lnbmVk"
        node.publish(up("node-a", "cmd_result"), encode(CommandResult(command_id=cmd.command_id, node_id="node-a",
                                                                      ok=True, at=time.time())))
        wait_until(lambda: store.list_commands("node-a")[0]["status"] == "ok", what="command result")
        assert store.list_commands()[0]["issued_by"] == "operator-1" and store.list_commands()[0]["signed"]
    finally:
        svc.stop()


def test_send_command_when_not_connected_raises(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, 1)
    store = CentralStore(cfg.database)
    svc = IngestService(cfg, store)
    cmd = Command(command_id="cmd-00000001", node_id="node-a", action="stop", issued_at=1.0, expires_at=2.0)
    with pytest.raises(CentralError):
        asyncio.run(svc.send_command(cmd, issued_by="x"))
    assert store.list_commands() == []
    store.close()


def test_shared_subscription_two_workers_store_each_event_once(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    cfg = make_cfg(tmp_path, mosquitto.port, shared_group="ingest")
    assert any(t.startswith("$share/ingest/") for t, _ in subscriptions(cfg))
    assert worker_client_ids(make_cfg(tmp_path, 1, shared_group="g", workers=2)) == ["central-test-w0",
                                                                                     "central-test-w1"]
    stores = [CentralStore(cfg.database), CentralStore(cfg.database)]
    workers = [ServiceThread(cfg, stores[i], client_id=f"central-w{i}").start() for i in range(2)]
    node = Node(mosquitto.port, "node-a", db=cfg.database)
    try:
        envs = [ev(seq=i) for i in range(400)]
        for e in envs:
            node.publish(up("node-a"), encode(e))
        wait_until(lambda: set(node.acked_ids()) >= {e.event_id for e in envs}, what="acks")
        assert stores[0].count_events() == 400
        inserted = [w.service.stats.inserted for w in workers]
        assert sum(inserted) == 400 and all(n > 0 for n in inserted), inserted
        assert sum(w.service.stats.duplicates for w in workers) == 0
        assert sorted(node.acked_ids()) == sorted(e.event_id for e in envs)  # each acked exactly once
    finally:
        for w in workers:
            w.stop()
        node.close()
        for s in stores:
            s.close()


def test_locked_database_is_retried_and_acked_only_after_commit(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, 1)
    store = CentralStore(cfg.database, busy_timeout_s=0.05)
    svc = IngestService(cfg, store)
    blocker = sqlite3.connect(cfg.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    e = ev()

    async def scenario() -> None:
        await svc.handle_message(up("node-a"), encode(e))
        flush = asyncio.create_task(svc.flush())
        await asyncio.sleep(0.5)
        assert not flush.done() and store.count_events() == 0 and svc.stats.acked == 0
        blocker.execute("ROLLBACK")
        await asyncio.wait_for(flush, WAIT)

    asyncio.run(scenario())
    assert store.count_events() == 1 and svc.stats.store_retries > 0 and svc.stats.acked == 1
    blocker.close()
    store.close()


# -- hypothesis: garbage never crashes the service ---------------------------------------------
_VALID = json.loads(encode(ev()))
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json_values = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=3)
                            | st.dictionaries(st.text(max_size=8), kids, max_size=3), max_leaves=8)


@st.composite
def mutated_envelope(draw: st.DrawFn) -> bytes:
    data = dict(_VALID)
    data["event_id"] = uuid.uuid4().hex
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=3)):
        if draw(st.booleans()):
            data.pop(key, None)
        else:
            data[key] = draw(_json_values)
    if draw(st.booleans()):
        data[draw(st.text(max_size=10))] = draw(_json_values)
    return json.dumps(data).encode()


_topics = st.one_of(
    st.sampled_from([up("node-a"), up("node-a", "snapshot"), up("node-a", "presence"), up("node-a", "heartbeat"),
                     up("node-a", "cmd_result"), up("node-b"), f"{PREFIX}/down/node-a/ack", "other/x", ""]),
    st.text(max_size=40),
)


@st.composite
def mutated_batch(draw: st.DrawFn) -> bytes:
    items: list[Any] = [json.loads(draw(mutated_envelope())) if draw(st.booleans())
                        else {**_VALID, "event_id": uuid.uuid4().hex} for _ in range(draw(st.integers(0, 4)))]
    if draw(st.booleans()):
        items.append(draw(_json_values))
    data: dict[str, Any] = {"v": 1, "kind": "event_batch", "node_id": "node-a", "events": items}
    for key in draw(st.lists(st.sampled_from(sorted(data)), max_size=2)):
        data[key] = draw(_json_values)
    return json.dumps(data).encode()


_payloads = st.one_of(st.binary(max_size=200), mutated_envelope(), mutated_batch(),
                      _json_values.map(lambda v: json.dumps(v).encode()))


def module_store(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[tuple[CentralConfig, CentralStore]]:
    """One SQLite store for every generated example of a test (a fresh store and its migrations
    each cost most of such a test's time); each example checks its own service's counts, the
    rejections it added and its own events (ids of its own)."""
    cfg = make_cfg(tmp_path_factory.mktemp(name), 1)
    store = CentralStore(cfg.database)
    try:
        yield cfg, store
    finally:
        store.close()


@pytest.fixture(scope="module")
def garbage_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CentralConfig, CentralStore]]:
    yield from module_store(tmp_path_factory, "garbage")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(st.tuples(_topics, _payloads), min_size=1, max_size=8))
def test_garbage_never_crashes(garbage_store: tuple[CentralConfig, CentralStore],
                               messages: list[tuple[str, bytes]]) -> None:
    cfg, store = garbage_store
    rejections_before = sum(store.rejection_counts().values())
    svc = IngestService(cfg, store)

    async def feed() -> None:
        for topic, payload in messages:
            await svc.handle_message(topic, payload)
        await svc.flush()
        good = ev(seq=99)
        await svc.handle_message(up("node-a"), encode(good))  # still ingests afterwards
        await svc.flush()
        assert store.get_event(good.event_id) is not None

    asyncio.run(feed())
    s = svc.stats
    assert s.received == len(messages) + 1
    assert s.inserted + s.duplicates + s.rejected_total() + s.snapshots + s.updates == s.outcomes_expected()
    assert sum(store.rejection_counts().values()) - rejections_before == s.rejected_total()


@pytest.mark.slow
def test_bulk_drain_end_to_end(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    """A node drains a large backlog; every event is stored once and acked (no speed assertion)."""
    total = 100_000 if os.environ.get("KENTONGAN_SOAK") else 20_000
    cfg = make_cfg(tmp_path, mosquitto.port)
    store = CentralStore(cfg.database)
    svc = ServiceThread(cfg, store).start()
    node = Node(mosquitto.port, "node-a")
    try:
        bodies = [encode(ev(seq=i)) for i in range(total)]
        t0 = time.monotonic()
        for b in bodies:
            node.client.publish(up("node-a"), b, qos=1)
        wait_until(lambda: len(node.acked_ids()) >= total, timeout=240, what="all acks")
        rate = total / (time.monotonic() - t0)
        print(f"drained {total} events end to end at {rate:.0f} events/s")
        assert store.count_events() == total and len(set(node.acked_ids())) == total
    finally:
        svc.stop()
        node.close()
        store.close()
