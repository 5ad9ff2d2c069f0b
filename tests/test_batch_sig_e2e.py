"""End to end, one signature per batch: a real post (Outbox + SyncService signing with the node
key) drains a backlog through a real Mosquitto into a real central (IngestService with the
key-cached verifier, CentralStore), which stores and acknowledges everything checking about one
Ed25519 signature per batch message; every stored event keeps its own signature, verifiable later
on its own. An old-style post (envelope signatures only) is still accepted, envelope by envelope;
a batch signed with another node's key is refused whole, every event told."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers_sync import node_config, running_service, wait_until

from central_sync.broker import LocalMosquitto
from central_sync.config import CentralConfig
from central_sync.store import CentralStore
from central_sync.verify_cache import CachedEventVerifier, KeyCache
from edge.clock import Clock
from edge.outbox import EventDraft, Outbox
from edge.signing import EventSigner, MessageSigner, NodeKey, verify_bytes
from edge.sync.service import SyncService
from edge.sync.wire import EventEnvelope, canonical_bytes, encode
from edge.sync.wire_batch import canonical_batch, sign_batch
from tests.helpers_central import IngestInThread
from tests.test_ingest import Node, ev, up

NODE = "pos-rt03"
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
BACKLOG = 1500


class Central(IngestInThread):
    def __init__(self, db: Path, port: int) -> None:
        cfg = CentralConfig.model_validate({
            "database": str(db), "broker": {"host": "127.0.0.1", "port": port, "client_id": "central-bsig",
                                            "reconnect_max_seconds": 1.0}})
        keys = {NODE: NodeKey(NODE, KEY.public_key(), "enrolled"),
                "node-a": NodeKey("node-a", KEY.public_key(), "enrolled")}
        self.verifier = CachedEventVerifier(KeyCache(keys.get, lambda: 1))
        super().__init__(cfg, CentralStore(db), self.verifier)
        self.start()
        self.wait_connected(20)


@pytest.fixture
def central(tmp_path: Path, mosquitto: LocalMosquitto) -> Iterator[Central]:
    c = Central(tmp_path / "central.db", mosquitto.port)
    yield c
    c.close()


def _drain(tmp_path: Path, port: int, central: Central, sign_event: Any, **sync: Any) -> list[dict[str, Any]]:
    ob = Outbox(tmp_path / "outbox.db", NODE, clock=Clock(forced_quality="synced"))
    try:
        ids = {ob.submit(EventDraft("PATROLI", 3, {"i": i})).result(10).event_id for i in range(BACKLOG)}
        svc = SyncService(node_config(port, NODE, **sync), ob, snapshots=None, clock=ob.clock,
                          status_provider=lambda: {"state": "off"}, command_handler=None, sign_event=sign_event,
                          sign_message=MessageSigner(KEY))
        with running_service(svc):
            wait_until(lambda: ob.counts()["acked"] == BACKLOG, 120, what="backlog acked at the edge")
    finally:
        ob.close()
    rows = central.store.list_events(node_id=NODE, limit=BACKLOG + 10)
    assert {r["event_id"] for r in rows} == ids and len(rows) == BACKLOG
    return rows


def _stored_signature_verifies(row: dict[str, Any]) -> None:
    """The evidence central keeps per event: the envelope and its own ``sig``."""
    fields = {k: row[k] for k in EventEnvelope.model_fields if k not in ("v", "kind", "sig") and k in row}
    if isinstance(fields.get("payload"), str):
        fields["payload"] = json.loads(fields["payload"])
    env = EventEnvelope.model_validate(fields)
    verify_bytes(KEY.public_key(), canonical_bytes(env), row["sig"])


def test_a_post_drains_its_backlog_with_one_signature_check_per_batch(
        tmp_path: Path, mosquitto: LocalMosquitto, central: Central) -> None:
    rows = _drain(tmp_path, mosquitto.port, central, EventSigner(KEY).sign)
    assert central.ingest is not None and central.ingest.stats.event_batches >= 3
    # About two checks per batch message (its signature, one envelope's), far below one per event.
    assert central.verifier.verifications <= 2 * central.ingest.stats.event_batches + 20 < BACKLOG // 2
    for row in rows[:: BACKLOG // 50]:
        _stored_signature_verifies(row)


@pytest.mark.parametrize("how", ["plain_signer", "config_off"])
def test_an_old_style_post_with_envelope_signatures_only_is_still_accepted(
        tmp_path: Path, mosquitto: LocalMosquitto, central: Central, how: str) -> None:
    signer = EventSigner(KEY)
    if how == "plain_signer":  # a signer without sign_raw: no batch signature
        rows = _drain(tmp_path, mosquitto.port, central, lambda env: signer.sign(env))
    else:  # sync.sign_batches = false (a central not yet updated)
        rows = _drain(tmp_path, mosquitto.port, central, signer.sign, sign_batches=False)
    assert central.ingest is not None and central.ingest.stats.event_batches >= 3
    assert central.verifier.verifications >= BACKLOG  # every envelope checked on its own
    _stored_signature_verifies(rows[0])


def test_a_batch_signed_with_another_nodes_key_is_refused_whole(
        tmp_path: Path, mosquitto: LocalMosquitto, central: Central) -> None:
    node = Node(mosquitto.port, "node-a")
    try:
        envs = [EventSigner(KEY)(ev(seq=i)) for i in range(4)]
        forged = sign_batch(canonical_batch("node-a", [encode(e) for e in envs]), MessageSigner(OTHER).sign_raw)
        node.publish(up("node-a"), forged)
        wait_until(lambda: len(node.rejected()) == 4, 30, what="every event told")
        assert set(node.rejected().values()) == {"bad_signature"}
        assert all(central.store.get_event(e.event_id) is None for e in envs)
        good = sign_batch(canonical_batch("node-a", [encode(e) for e in envs]), MessageSigner(KEY).sign_raw)
        node.publish(up("node-a"), good)
        wait_until(lambda: {e.event_id for e in envs} <= set(node.acked_ids()), 30, what="the genuine batch acked")
    finally:
        node.close()
