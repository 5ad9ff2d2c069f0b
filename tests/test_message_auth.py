"""Every kind of message from a post is authenticated (issue 10 item 2): snapshots (metadata and
content hash), presence, heartbeats and command results carry the node key's signature; central
drops (and counts, by reason) what is unsigned, badly signed, or from an unknown or revoked node.

In-process cases feed ``IngestService.handle_message`` with a real SQLite store; the post-side
case runs the real ``SyncService`` against a real Mosquitto and a real ingest service; the
revocation case runs real ``kentongan-central`` processes (``run`` and ``revoke``)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import BaseModel

from central_sync.broker import LocalMosquitto
from central_sync.ingest import IngestService
from central_sync.message_auth import MessageAuth
from central_sync.store import CentralStore
from central_sync.verify_cache import KeyCache
from edge.clock import Clock
from edge.outbox import Outbox
from edge.sealing import Sealer, Unsealer
from edge.signing import CommandSigner, CommandVerifier, MessageSigner, NodeKey, load_signing_key
from edge.snapshots import SnapshotStore
from edge.sync.service import SyncService
from edge.sync.wire import (
    Command,
    CommandResult,
    Heartbeat,
    Presence,
    SnapshotEnvelope,
    b64,
    encode,
    signed_bytes,
)
from tests.helpers_central import StateWatcher
from tests.helpers_sync import node_config, running_service
from tests.test_ingest import ServiceThread, make_cfg, up
from tests.test_ingest import wait_until as wait
from tests.waits import wait_for as _wait

ROOT = Path(__file__).resolve().parent.parent
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(256)) * 4
KINDS = ("snapshot", "presence", "heartbeat", "cmd_result")


def _message(kind: str, node: str, i: int) -> BaseModel:
    now = time.time()
    if kind == "snapshot":
        return SnapshotEnvelope(snapshot_id=f"snap-{node}-{i:08d}", node_id=node, taken_at=now, data=b64(JPEG))
    if kind == "presence":
        return Presence(node_id=node, state="online", boot_id="b1", version="1.0", at=now)
    if kind == "heartbeat":
        return Heartbeat(node_id=node, boot_id="b1", at=now, version="1.0", time_quality="synced")
    return CommandResult(command_id=f"cmd-{node}-{i:08d}", node_id=node, ok=True, at=now)


def _applied(store: CentralStore, kind: str, node: str, i: int) -> bool:
    """Whether central stored or applied message ``i`` of ``kind`` from ``node``."""
    if kind == "snapshot":
        return store.get_snapshot(f"snap-{node}-{i:08d}") is not None
    if kind == "cmd_result":
        return any(c["command_id"] == f"cmd-{node}-{i:08d}" for c in store.list_commands(node))
    at = _node_times(store, node)[0 if kind == "presence" else 1]
    return at is not None


def _node_times(store: CentralStore, node: str) -> tuple[float | None, float | None]:
    """(presence_at, heartbeat_at) of ``node``: when central last applied each (receipt time)."""
    conn = sqlite3.connect(store.path, timeout=30)
    try:
        row = conn.execute("SELECT presence_at, heartbeat_at FROM nodes WHERE node_id = ?", (node,)).fetchone()
    finally:
        conn.close()
    return (row[0], row[1]) if row else (None, None)


class Registry:
    """A registry stand-in for the key cache: node -> (key, status), with a generation."""

    def __init__(self) -> None:
        self.keys: dict[str, NodeKey] = {}
        self.generation = 0

    def set(self, node: str, key: Ed25519PrivateKey, status: str = "enrolled") -> None:
        self.keys[node] = NodeKey(node, key.public_key(), status)
        self.generation += 1

    def cache(self) -> KeyCache:
        return KeyCache(self.keys.get, lambda: self.generation, check_every_s=0.0)


class Central:
    """An ``IngestService`` fed directly (no broker) with ``MessageAuth`` over ``registry``."""

    def __init__(self, tmp: Path, registry: Registry, *, require_signed: bool = True) -> None:
        self.cfg = make_cfg(tmp, 1)
        self.store = CentralStore(self.cfg.database)
        self.auth = MessageAuth(registry.cache(), require_signed=require_signed)
        self.svc = IngestService(self.cfg, self.store, authenticate=self.auth)

    def feed(self, items: list[tuple[str, bytes]]) -> None:
        async def run() -> None:
            for topic, body in items:
                await self.svc.handle_message(topic, body)
            await self.svc.flush()

        asyncio.run(run())

    def close(self) -> None:
        self.store.close()


def _body(msg: BaseModel, **change: Any) -> bytes:
    data = json.loads(encode(msg))
    data.update(change)
    return json.dumps(data).encode()


def test_signed_messages_of_every_kind_are_accepted(tmp_path: Path) -> None:
    reg, key = Registry(), Ed25519PrivateKey.generate()
    reg.set("pos-a", key)
    central = Central(tmp_path, reg)
    signer = MessageSigner(key)
    central.feed([(up("pos-a", kind), encode(signer.sign(_message(kind, "pos-a", 1)))) for kind in KINDS])
    assert {kind: _applied(central.store, kind, "pos-a", 1) for kind in KINDS} == dict.fromkeys(KINDS, True)
    assert central.svc.stats.rejected == {} and central.auth.checked == 4
    central.close()


def test_tampered_signature_on_each_kind_is_rejected(tmp_path: Path) -> None:
    reg, key = Registry(), Ed25519PrivateKey.generate()
    reg.set("pos-a", key)
    central = Central(tmp_path, reg)
    signer = MessageSigner(key)
    other = MessageSigner(Ed25519PrivateKey.generate())
    items: list[tuple[str, bytes]] = []
    i = 0
    for kind in KINDS:
        good = signer.sign(_message(kind, "pos-a", i))
        field = {"snapshot": {"taken_at": 1.0}, "presence": {"state": "offline"},
                 "heartbeat": {"version": "6.6.6"}, "cmd_result": {"ok": False}}[kind]
        items.append((up("pos-a", kind), _body(good, **field)))  # a signed field altered
        i += 1
        items.append((up("pos-a", kind), encode(other.sign(_message(kind, "pos-a", i)))))  # foreign key
        i += 1
        sig = good.sig or ""
        items.append((up("pos-a", kind), _body(_message(kind, "pos-a", i), sig=sig[:-4] + "AAA=")))  # garbled
        i += 1
    # the snapshot's content is covered through its hash: other bytes under the same signature
    snap = signer.sign(_message("snapshot", "pos-a", 100))
    assert isinstance(snap, SnapshotEnvelope)
    items.append((up("pos-a", "snapshot"), _body(snap, data=b64(JPEG[:-1] + b"\x01"))))
    central.feed(items)
    assert central.svc.stats.rejected == {"bad_signature": len(items)}
    assert central.auth.rejected == {"bad_signature": len(items)}
    assert not any(_applied(central.store, kind, "pos-a", n) for kind in KINDS for n in (*range(i), 100))
    assert central.store.rejection_counts() == {"bad_signature": len(items)}
    central.close()


def test_unknown_and_revoked_nodes_are_dropped_and_counted_for_every_kind(tmp_path: Path) -> None:
    reg, key, ghost_key = Registry(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    reg.set("pos-a", key)
    central = Central(tmp_path, reg)
    ghost, signer = MessageSigner(ghost_key), MessageSigner(key)
    central.feed([(up("pos-ghost", kind), encode(ghost.sign(_message(kind, "pos-ghost", 1)))) for kind in KINDS])
    assert central.auth.rejected == {"unknown_node": 4}
    reg.set("pos-a", key, "revoked")
    central.feed([(up("pos-a", kind), encode(signer.sign(_message(kind, "pos-a", 2)))) for kind in KINDS])
    assert central.svc.stats.rejected == {"unknown_node": 4, "revoked": 4}
    assert not any(_applied(central.store, k, n, i) for k in KINDS for n, i in (("pos-ghost", 1), ("pos-a", 2)))
    assert central.store.list_nodes() == []  # no presence or heartbeat applied
    rows = {(r["node_id"], r["reason"]): r["count"] for r in central.store.list_rejections()}
    assert rows == {("pos-ghost", "unknown_node"): 4, ("pos-a", "revoked"): 4}
    central.close()


def test_a_signature_never_passes_as_another_node_or_kind(tmp_path: Path) -> None:
    reg, key_a, key_b = Registry(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    reg.set("pos-a", key_a)
    reg.set("pos-b", key_b)
    central = Central(tmp_path, reg)
    hb = MessageSigner(key_a).sign(_message("heartbeat", "pos-a", 1))
    # pos-a's signed heartbeat re-addressed to pos-b (node_id changed to match the topic)
    items = [(up("pos-b", "heartbeat"), _body(hb, node_id="pos-b"))]
    # the same signature moved onto a presence with the same shared fields
    pres = _message("presence", "pos-a", 1)
    items.append((up("pos-a", "presence"), _body(pres, sig=hb.sig)))
    central.feed(items)
    assert central.svc.stats.rejected == {"bad_signature": 2}
    assert central.store.list_nodes() == []
    central.close()


def test_unsigned_status_is_refused_unless_the_transition_setting_allows_it(tmp_path: Path) -> None:
    reg, key = Registry(), Ed25519PrivateKey.generate()
    reg.set("pos-a", key)
    strict = Central(tmp_path / "strict", reg)
    strict.feed([(up("pos-a", kind), encode(_message(kind, "pos-a", 1))) for kind in KINDS])
    assert strict.svc.stats.rejected == {"unsigned": 4}
    assert not any(_applied(strict.store, kind, "pos-a", 1) for kind in KINDS)
    strict.close()
    lenient = Central(tmp_path / "lenient", reg, require_signed=False)
    lenient.feed([(up("pos-a", kind), encode(_message(kind, "pos-a", 1))) for kind in KINDS])
    lenient.feed([(up("pos-ghost", "presence"), encode(_message("presence", "pos-ghost", 1)))])
    lenient.feed([(up("pos-a", "heartbeat"), _body(_message("heartbeat", "pos-a", 2), sig="A" * 88))])
    assert all(_applied(lenient.store, kind, "pos-a", 1) for kind in KINDS)
    assert lenient.svc.stats.rejected == {"unknown_node": 1, "bad_signature": 1}
    lenient.close()


def test_refused_snapshots_are_acknowledged_so_the_post_stops_resending(tmp_path: Path) -> None:
    reg, key = Registry(), Ed25519PrivateKey.generate()
    reg.set("pos-a", key, "revoked")
    central = Central(tmp_path, reg)
    snap = MessageSigner(key).sign(_message("snapshot", "pos-a", 1))
    assert isinstance(snap, SnapshotEnvelope)
    settled: list[str] = []

    async def run() -> None:
        await central.svc.handle_message(up("pos-a", "snapshot"), encode(snap))
        settled.extend(a for acks in [central.svc._acks_due.acks(time.time())] for ack in acks
                       for a in ack.snapshot_ids)

    asyncio.run(run())
    assert settled == [snap.snapshot_id]
    assert central.svc.stats.rejected == {"revoked": 1}
    central.close()


def test_snapshot_signature_covers_metadata_and_content_hash() -> None:
    key = Ed25519PrivateKey.generate()
    snap = MessageSigner(key).sign(_message("snapshot", "pos-a", 1))
    signed = json.loads(signed_bytes(snap))
    assert "data" not in signed and len(signed["data_sha256"]) == 64
    assert {"snapshot_id", "node_id", "taken_at", "content_type", "sealed", "kind", "v"} <= set(signed)
    sealed = MessageSigner(key).sign(SnapshotEnvelope(snapshot_id="snap-sealed-000001", node_id="pos-a",
                                                      taken_at=1.0, sealed=True, content_type="image/jpeg",
                                                      data=b64(b"ciphertext")))
    assert json.loads(signed_bytes(sealed))["data_sha256"] == hashlib.sha256(b"ciphertext").hexdigest()


# -- the real post ------------------------------------------------------------------------------


def test_a_real_post_signs_every_kind_and_central_accepts_them(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    node_key, central_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    reg = Registry()
    reg.set("pos-rt03", node_key)
    cfg = make_cfg(tmp_path, mosquitto.port)
    store = CentralStore(cfg.database)
    auth = MessageAuth(reg.cache())
    central = ServiceThread(cfg, store, authenticate=auth, sign_command=CommandSigner(central_key).sign).start()
    node_cfg = node_config(mosquitto.port, heartbeat_seconds=1)
    clock = Clock(forced_quality="synced")
    outbox = Outbox(tmp_path / "outbox.db", "pos-rt03", clock=clock)
    # sealed to central's key, as an enrolled post does: the content hash covers the sealed box
    seal_key = X25519PrivateKey.generate()
    snaps = SnapshotStore(outbox, tmp_path / "snaps", quota_bytes=10_000_000, retention_seconds=3600,
                          sealer=Sealer(seal_key.public_key()).seal)
    snaps.add(JPEG, event_id=None, priority=2)

    class Handler:
        async def handle(self, cmd: Command) -> tuple[bool, str, dict[str, Any]]:
            return True, "done", {"action": cmd.action}

    post = SyncService(node_cfg, outbox, snapshots=snaps, clock=clock, status_provider=lambda: {"state": "off"},
                       command_handler=Handler(), sign_message=MessageSigner(node_key),
                       verify_command=CommandVerifier(central_key.public_key(), "pos-rt03"))
    try:
        with running_service(post):
            wait(lambda: None not in _node_times(store, "pos-rt03"), what="signed presence and heartbeat applied")
            wait(lambda: len(store.list_snapshots(node_id="pos-rt03")) == 1, what="signed sealed snapshot stored")
            (row,) = store.list_snapshots(node_id="pos-rt03")
            stored = store.get_snapshot(row["snapshot_id"])
            assert stored is not None and stored["sealed"]
            assert Unsealer(seal_key).open(bytes(stored["data"])) == JPEG
            cmd = Command(command_id="cmd-" + uuid.uuid4().hex[:12], node_id="pos-rt03", action="status",
                          issued_at=time.time(), expires_at=time.time() + 300)
            central.call(central.service.send_command(cmd, issued_by="op"))
            wait(lambda: store.list_commands("pos-rt03")[0]["status"] == "ok", what="signed command result")
        assert auth.rejected == {} and central.service.stats.rejected == {}
        assert auth.checked >= 4
    finally:
        central.stop()
        outbox.close()
        store.close()


# -- revocation against real central processes ------------------------------------------------------


def _cli(cfg: Path, *args: str) -> float:
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "central_sync.cli", *args, "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    return t0


class Post:
    """A raw paho client publishing one post's signed messages (QoS 1, heartbeats too)."""

    def __init__(self, port: int, node: str, key: Ed25519PrivateKey) -> None:
        self.node, self.signer = node, MessageSigner(key)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"test-{node}", protocol=paho.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent: list[tuple[str, int, float]] = []  # (kind, index, publish time)

    def send(self, kind: str, i: int) -> None:
        msg = self.signer.sign(_message(kind, self.node, i))
        self.client.publish(f"kentongan/v1/up/{self.node}/{kind}", encode(msg), qos=1).wait_for_publish(10)
        self.sent.append((kind, i, time.time()))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _bundle_key(bundle: Path) -> Ed25519PrivateKey:
    with tarfile.open(bundle) as tar:
        data = tar.extractfile("keys/signing.key").read()  # type: ignore[union-attr]
    path = bundle.with_suffix(".signing.key")
    path.write_bytes(data)
    return load_signing_key(path)


def _rejections(db: Path) -> dict[tuple[str, str], int]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return {(n, r): int(c) for n, r, c in conn.execute(
            "SELECT node_id, reason, SUM(count) FROM rejections GROUP BY node_id, reason")}
    finally:
        conn.close()


def test_revoked_connected_post_is_dropped_for_every_kind_within_5s(tmp_path: Path,
                                                                     mosquitto: LocalMosquitto) -> None:
    """``revoke`` without the broker's dynamic-security plugin (plain development broker): the
    post's session stays open and it keeps publishing; central alone must drop everything."""
    db = tmp_path / "central.db"
    cfg = tmp_path / "central.toml"
    cfg.write_text(f'database = "{db}"\nlog_level = "INFO"\n[broker]\nport = {mosquitto.port}\n'
                   'client_id = "central"\nreconnect_min_seconds = 0.1\nreconnect_max_seconds = 1.0\n'
                   f'[ingest]\nrejection_interval_s = 0.5\n[pki]\ndir = "{tmp_path / "pki"}"\n')
    _cli(cfg, "ca", "init")
    keys = {}
    for node in ("pos-a-01", "pos-b-01"):
        _cli(cfg, "enrol", node, "--kelurahan", "33.74.10.1005", "--rw", "1", "--rt", "2", "--name", node,
             "--out", str(tmp_path / f"{node}.bundle"))
        keys[node] = _bundle_key(tmp_path / f"{node}.bundle")
    watcher = StateWatcher(mosquitto.port)
    log = (tmp_path / "central.log").open("ab")
    central = subprocess.Popen([sys.executable, "-m", "central_sync.cli", "run", "--config", str(cfg)],
                               cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)})
    a = Post(mosquitto.port, "pos-a-01", keys["pos-a-01"])
    b = Post(mosquitto.port, "pos-b-01", keys["pos-b-01"])
    ghost = Post(mosquitto.port, "pos-ghost-01", Ed25519PrivateKey.generate())  # unenrolled
    store = CentralStore(db)
    try:
        watcher.wait_online({"central"})
        for kind in KINDS:
            a.send(kind, 0)
            ghost.send(kind, 0)
        _wait(lambda: all(_applied(store, k, "pos-a-01", 0) for k in KINDS), 60, "enrolled post accepted")
        _wait(lambda: _rejections(db).get(("pos-ghost-01", "unknown_node"), 0) == 4, 60, "unknown node counted")
        assert not any(_applied(store, k, "pos-ghost-01", 0) for k in KINDS)

        stop = threading.Event()

        def keep_publishing() -> None:
            i = 1
            while not stop.is_set():
                for kind in KINDS:
                    a.send(kind, i)
                    b.send(kind, i)
                i += 1
                stop.wait(0.2)

        publisher = threading.Thread(target=keep_publishing, daemon=True)
        publisher.start()
        started = _cli(cfg, "revoke", "pos-a-01")
        revoked_at = time.time()  # the command has returned: the registry says revoked
        cutoff = revoked_at + 5.0
        _wait(lambda: time.time() > cutoff + 3.0, 60, "publishing past the cutoff")
        stop.set()
        publisher.join(30)
        after = [(k, i) for k, i, t in a.sent if t > cutoff]
        assert len(after) >= 8  # both sides of the cutoff were exercised
        last_b = max(i for k, i, _t in b.sent)
        _wait(lambda: all(_applied(store, k, "pos-b-01", last_b) for k in ("snapshot", "cmd_result")), 60,
              "the other post's messages still accepted")
        dropped = sum(1 for k, i, _t in a.sent if k in ("snapshot", "cmd_result") and i > 0
                      and not _applied(store, k, "pos-a-01", i))
        status_after = sum(1 for k, _i, t in a.sent if k in ("presence", "heartbeat") and t > cutoff)
        _wait(lambda: _rejections(db).get(("pos-a-01", "revoked"), 0) >= dropped + status_after, 60,
              "every dropped message counted")
        accepted = [t for k, i, t in a.sent if k in ("snapshot", "cmd_result") and i > 0
                    and _applied(store, k, "pos-a-01", i)]
        print(f"revoke took {revoked_at - started:.2f} s; last message accepted "
              f"{(max(accepted) - revoked_at) if accepted else float('-inf'):.2f} s after it returned")
        # nothing published 5 s after the revoke was stored or applied
        assert not [(k, i) for k, i in after if k in ("snapshot", "cmd_result") and _applied(store, k, "pos-a-01", i)]
        presence_at, heartbeat_at = _node_times(store, "pos-a-01")
        assert presence_at is not None and presence_at < cutoff and heartbeat_at is not None and heartbeat_at < cutoff
        counts = _rejections(db)
        assert counts[("pos-a-01", "revoked")] <= sum(1 for _k, i, _t in a.sent if i > 0)
        assert ("pos-b-01", "revoked") not in counts and not any(r == "bad_signature" for _n, r in counts)
        assert central.poll() is None
    finally:
        store.close()
        for p in (a, b, ghost):
            p.close()
        watcher.close()
        central.terminate()
        central.wait(30)


# -- the rejection budget: a post that keeps being refused stops costing central ----------------


def test_a_node_refused_past_its_budget_is_shed_and_other_posts_are_unaffected(tmp_path: Path) -> None:
    from central_sync.reject_budget import RejectBudget

    reg, key, evil_key = Registry(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    reg.set("pos-a", key)
    reg.set("pos-evil", evil_key)
    central = Central(tmp_path, reg)
    now = [0.0]
    central.svc.budget = RejectBudget(burst=10, rate_per_s=2.0, clock=lambda: now[0])
    forger, signer = MessageSigner(Ed25519PrivateKey.generate()), MessageSigner(key)
    evil = [(up("pos-evil", "heartbeat"), encode(forger.sign(_message("heartbeat", "pos-evil", i))))
            for i in range(100)]
    good = [(up("pos-a", kind), encode(signer.sign(_message(kind, "pos-a", 1)))) for kind in KINDS]
    central.feed(evil[:50] + good + evil[50:])
    # 10 refusals verified (the burst), the other 90 shed undecoded; every one counted
    assert central.svc.stats.rejected == {"bad_signature": 10, "shed": 90}
    assert central.auth.checked == 10 + len(good)
    assert all(_applied(central.store, kind, "pos-a", 1) for kind in KINDS)
    rows = {(r["node_id"], r["reason"]): r["count"] for r in central.store.list_rejections()}
    assert rows == {("pos-evil", "bad_signature"): 10, ("pos-evil", "shed"): 90}
    # the budget refills: the node's (now valid) messages are processed again
    now[0] = 10.0
    presence = MessageSigner(evil_key).sign(_message("presence", "pos-evil", 1))
    central.feed([(up("pos-evil", "presence"), encode(presence))])
    assert _applied(central.store, "presence", "pos-evil", 1)
    central.close()


def test_reject_budget_refills_and_forgets_full_buckets() -> None:
    from central_sync.reject_budget import RejectBudget

    now = [0.0]
    budget = RejectBudget(burst=3, rate_per_s=1.0, clock=lambda: now[0])
    assert not budget.active and not budget.exhausted("pos-a")
    for _ in range(3):
        budget.charge("pos-a")
    assert budget.exhausted("pos-a") and not budget.exhausted("pos-b")
    now[0] = 1.0  # one token back
    assert not budget.exhausted("pos-a")
    budget.charge("pos-a")
    assert budget.exhausted("pos-a")
    now[0] = 10.0
    assert not budget.exhausted("pos-a") and not budget.active  # full again: forgotten
    assert budget.shed == 2
