"""The post's event-batch builder (``edge.sync.uplink_envelope.next_message`` over outbox
events, ``edge.sync.wire_batch``): what the uplink publishes on ``event`` and ``event/p1``.

Real keys (Ed25519), real outbox records (``StoredEvent``), central's real decoder and verifier
(``central_sync.ingest_decode``, ``central_sync.verify_cache``): the batch signature covers
exactly the canonical bytes; messages fill up to the wire limit and split there, in claim
order, nothing lost or repeated; an envelope that does not share a batch goes alone; one past
the single-event limit is skipped (never blocking the others) and reported; central verifies what the post built and
refuses the whole batch when one envelope is tampered with.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_sync.ingest_decode import decode_events
from central_sync.verify_cache import CachedEventVerifier, KeyCache
from edge.clock import Clock
from edge.errors import SecurityError
from edge.outbox import StoredEvent
from edge.signing import EventSigner, MessageSigner, NodeKey
from edge.sync.uplink_envelope import envelope_for, next_message
from edge.sync.wire import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    Topics,
    batch_prefix,
    canonical_bytes,
    encode,
)
from edge.sync.wire_batch import canonical_batch, received_batch_signed_bytes

NODE = "node-a"
BOOT = "boot-1"
KEY = Ed25519PrivateKey.generate()
TOPICS = Topics("kentongan/v1")
TOPIC = f"kentongan/v1/up/{NODE}/event"
PREFIX = batch_prefix(NODE)


def stored(seq: int, pad: int = 0, priority: int = 3) -> StoredEvent:
    """An outbox record as the uplink claims it (``pad``: payload filler characters)."""
    return StoredEvent(rowid=seq + 1, event_id=uuid.uuid4().hex, node_id=NODE, boot_id=BOOT, seq=seq,
                       mono_ns=seq * 1000, wall_time=1_700_000_000.0 + seq, time_quality="synced",
                       type="PANIC", priority=priority, incident_id=None,
                       payload={"button": "panic", "pad": "x" * pad}, status="in_flight", attempts=0)


class RecordingSigner:
    """The node key's raw signer, keeping every byte string it was asked to sign."""

    def __init__(self, key: Ed25519PrivateKey = KEY) -> None:
        self._sign = MessageSigner(key).sign_raw
        self.signed: list[bytes] = []

    def __call__(self, data: bytes) -> str:
        self.signed.append(data)
        return self._sign(data)


def build_all(events: list[StoredEvent], *, signed: bool = True) -> list[tuple[bytes, int]]:
    """Every message the uplink would publish for one claim, in order."""
    clock = Clock()
    sign = EventSigner(KEY) if signed else None
    raw = RecordingSigner() if signed else None
    out: list[tuple[bytes, int]] = []
    start = 0
    while start < len(events):
        body, count = next_message(events, start, clock, BOOT, sign, PREFIX, raw)
        assert count >= 1
        out.append((body, count))
        start += count
    return out


def event_ids(body: bytes) -> list[str]:
    data = json.loads(body)
    return [e["event_id"] for e in data["events"]] if data["kind"] == "event_batch" else [data["event_id"]]


def verify_at_central(body: bytes) -> list[str | None]:
    """Decode and verify like central's ingest: per envelope None (accepted) or the reason."""
    keys = {NODE: NodeKey(NODE, KEY.public_key(), "enrolled")}
    verifier = CachedEventVerifier(KeyCache(keys.get, lambda: 1))
    decoded = decode_events(TOPICS, TOPIC, body)
    assert decoded.batch is not None and not decoded.bad
    try:
        return [None if e is None else e.reason for e in verifier.verify_batch(NODE, decoded.batch, decoded.good)]
    except SecurityError as exc:
        return [exc.reason] * len(decoded.good)


def test_the_batch_signature_covers_exactly_the_canonical_bytes() -> None:
    events = [stored(i) for i in range(5)]
    raw = RecordingSigner()
    body, count = next_message(events, 0, Clock(), BOOT, EventSigner(KEY), PREFIX, raw)
    assert count == 5 and len(raw.signed) == 1  # ONE signature for the batch
    data = json.loads(body)
    assert data["kind"] == "event_batch" and all("sig" in e for e in data["events"])  # envelopes keep theirs
    signed = raw.signed[0]
    # The canonical JSON of the batch object without its top-level sig, byte for byte ...
    assert signed == canonical_bytes({k: v for k, v in data.items() if k != "sig"})
    # ... which is the join of the envelopes' own canonical forms (each with its sig) ...
    bodies = [encode(envelope_for(ev, Clock(), BOOT, EventSigner(KEY))) for ev in events]
    assert signed == canonical_batch(NODE, bodies)
    # ... what central cuts out of the received bytes, and what the signature verifies over.
    assert received_batch_signed_bytes(body, data["sig"], 5) == signed
    KEY.public_key().verify(base64.b64decode(data["sig"]), signed)
    assert body.endswith(b',"sig":"' + data["sig"].encode() + b'","v":1}')


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("pad", [0, 700, 3000, 9000])
def test_messages_fill_up_to_the_wire_limit_and_split_there(signed: bool, pad: int) -> None:
    # Sizes vary inside a claim (pad .. pad + 250), so splits fall at many different offsets.
    events = [stored(i, pad + (i * 37) % 251) for i in range(120)]
    messages = build_all(events, signed=signed)
    sent = [eid for body, _n in messages for eid in event_ids(body)]
    assert sent == [e.event_id for e in events]  # claim order, nothing lost, nothing twice
    sizes = {e.event_id: len(encode(envelope_for(e, Clock(), BOOT, EventSigner(KEY) if signed else None)))
             for e in events}
    for i, (body, count) in enumerate(messages):
        assert len(body) <= MAX_BATCH_BYTES
        assert len(event_ids(body)) == count <= MAX_BATCH_EVENTS
        if i + 1 < len(messages) and count < MAX_BATCH_EVENTS:
            nxt = event_ids(messages[i + 1][0])[0]
            # Full: the next envelope (and its comma) would not have fitted (the builder keeps
            # at most one byte of the limit unused).
            assert len(body) + 1 + sizes[nxt] > MAX_BATCH_BYTES - 1, (i, len(body), sizes[nxt])
    if pad >= 700:
        assert len(messages) > 1  # the claim really was split


@pytest.mark.parametrize("signed", [True, False])
def test_big_envelopes_split_the_claim_and_the_one_left_goes_as_a_plain_event(signed: bool) -> None:
    # Every envelope within the single-event limit fits a batch (16 KiB < 64 KiB), so an envelope
    # never has to go alone for its size: four of these fill a batch, the fifth (the claim's
    # last) goes alone, as a plain ``event`` carrying its own signature.
    big = MAX_EVENT_BYTES - 600
    events = [stored(i, big) for i in range(5)]
    messages = build_all(events, signed=signed)
    assert [n for _b, n in messages] == [4, 1]
    assert json.loads(messages[0][0])["kind"] == "event_batch" and len(messages[0][0]) <= MAX_BATCH_BYTES
    last = json.loads(messages[1][0])
    assert last["kind"] == "event" and last["event_id"] == events[-1].event_id
    assert len(messages[1][0]) <= MAX_EVENT_BYTES
    assert ("sig" in last) is signed


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("where", [0, 3, 6])
def test_an_envelope_past_the_single_event_limit_is_skipped_and_never_blocks_the_others(
        signed: bool, where: int) -> None:
    # No batch can carry it (central refuses such an envelope inside a batch too): the builder
    # never sends it, and sends everything else of the claim, in claim order; the record is
    # reported as unsendable (the uplink moves it to ``rejected_local``).
    events = [stored(i, 300) for i in range(7)]
    events[where] = stored(where, MAX_EVENT_BYTES)
    unsendable: dict[str, str] = {}
    sign = EventSigner(KEY) if signed else None
    raw = RecordingSigner() if signed else None
    sent: list[str] = []
    start = 0
    while start < len(events):
        body, count = next_message(events, start, Clock(), BOOT, sign, PREFIX, raw, unsendable)
        assert count >= 1
        if body is not None:
            assert len(body) <= MAX_BATCH_BYTES
            sent.extend(event_ids(body))
            if signed:
                assert verify_at_central(body) == [None] * len(event_ids(body))
        start += count
    assert sent == [e.event_id for i, e in enumerate(events) if i != where]
    assert list(unsendable) == [events[where].event_id]
    assert unsendable[events[where].event_id].startswith("oversized")


def test_a_claim_of_only_unsendable_records_builds_no_message() -> None:
    events = [stored(0, MAX_EVENT_BYTES)]
    unsendable: dict[str, str] = {}
    assert next_message(events, 0, Clock(), BOOT, EventSigner(KEY), PREFIX, RecordingSigner(),
                        unsendable) == (None, 1)
    assert list(unsendable) == [events[0].event_id]


def test_central_verifies_the_batch_the_post_built() -> None:
    messages = build_all([stored(i, 400) for i in range(300)])
    assert len(messages) > 1
    for body, count in messages:
        assert verify_at_central(body) == [None] * count


def _tamper_one_envelope(body: bytes, index: int) -> bytes:
    """Change one payload character of envelope ``index`` (same length, JSON still valid)."""
    data = json.loads(body)
    needle = json.dumps(data["events"][index]["event_id"]).encode()
    at = body.index(needle)
    pad = body.index(b'"pad":"x', at) + len(b'"pad":"')
    return body[:pad] + b"y" + body[pad + 1:]


@pytest.mark.parametrize("index", [0, 7, -1])
def test_tampering_with_one_envelope_refuses_the_whole_batch(index: int) -> None:
    body, count = build_all([stored(i, 50) for i in range(20)])[0]
    assert count == 20
    tampered = _tamper_one_envelope(body, index if index >= 0 else count - 1)
    assert tampered != body and len(tampered) == len(body)
    assert verify_at_central(tampered) == ["bad_signature"] * count


def test_a_batch_signed_by_another_key_is_refused() -> None:
    events = [stored(i) for i in range(4)]
    forged = RecordingSigner(Ed25519PrivateKey.generate())
    body, count = next_message(events, 0, Clock(), BOOT, EventSigner(KEY), PREFIX, forged)
    assert count == 4
    assert verify_at_central(body) == ["bad_signature"] * 4


