"""Ingest's fast decode path (one checked JSON parse, no regex over the body) and the Ack bodies
built without pydantic: same results as the full path and as ``encode(Ack)``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from central_sync.acks import ACK_IDS_MAX, AckBook
from central_sync.ingest_decode import _fast, decode_events, unstorable
from edge.sync.wire import Topics, canonical_bytes, encode
from tests.test_ingest import ev

TOPICS = Topics("kentongan/v1")
TOPIC = "kentongan/v1/up/node-a/event"


def _body(**changes: Any) -> dict[str, Any]:
    data = json.loads(encode(ev()))
    data.update(changes)
    return data


def test_ordinary_envelopes_take_the_fast_path_with_their_received_canonical_bytes() -> None:
    # Hex ids with "e" + digits once sent half of all envelopes through a walk of the whole body.
    for event_id in ("1e123abc" + "0" * 24, "e999" + "f" * 28, "0" * 32):
        data = _body(event_id=event_id, wall_time=1.5e9, payload={"n": -(2**63), "m": 2**63 - 1, "f": 1e308})
        fast = _fast("node-a", json.dumps(data).encode())
        assert fast is not None, event_id
        assert fast.good[0].env.event_id == event_id
        assert fast.good[0].canonical() == canonical_bytes(data)


@pytest.mark.parametrize(("raw", "reason"), [
    (b'"seq":9223372036854775808', "out_of_range"),
    (b'"payload":{"x":-9223372036854775809}', "out_of_range"),
    (b'"payload":{"x":1e400}', "out_of_range"),
    (b'"payload":{"x":NaN}', "out_of_range"),
    (b'"payload":{"x":-Infinity}', "out_of_range"),
    (b'"payload":{"x":"\\ud800"}', "bad_text"),
    (b'"payload":{"x":"\xed\xa0\x80"}', "bad_text"),  # a surrogate encoded as raw UTF-8 bytes
])
def test_unstorable_values_leave_the_fast_path_and_are_rejected_by_name(raw: bytes, reason: str) -> None:
    data = _body()
    key = raw.split(b":")[0].decode().strip('"')
    text = json.dumps({k: v for k, v in data.items() if k != key}, separators=(",", ":")).encode()
    payload = text[:-1] + b"," + raw + b"}"
    assert _fast("node-a", payload) is None
    decoded = decode_events(TOPICS, TOPIC, payload)
    assert not decoded.good
    assert [(b.event_id, b.reason, b.permanent) for b in decoded.bad] == [(data["event_id"], reason, True)]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=4), _json_values, max_size=4), seq=st.integers(0, 2**65))
def test_fast_path_only_accepts_what_every_store_can_hold(payload: dict[str, Any], seq: int) -> None:
    data = _body(payload=payload, seq=seq)
    body = json.dumps(data).encode()
    fast = _fast("node-a", body)
    full = decode_events(TOPICS, TOPIC, body)
    if fast is not None:
        assert unstorable(json.loads(body)) is None
        assert [g.env for g in fast.good] == [g.env for g in full.good]
    else:
        assert unstorable(json.loads(body)) is not None or not full.good


def test_ack_bodies_are_the_bytes_encode_writes_split_past_the_wire_limit() -> None:
    book = AckBook()
    for i in range(ACK_IDS_MAX + 3):
        book.stored("node-a", f"id-{i}")
    book.stored("node-a", "id-0")  # a duplicate inside one batch is acknowledged once
    book.reject("node-b", "bad-1", "bad_signature")
    book.snapshot("node-b", "snap-1")
    book.stored("node-c", "only")
    bodies = book.bodies(1234.5)
    assert [(n, k, b) for n, k, b in bodies] == [(a.node_id, len(a.event_ids), encode(a)) for a in book.acks(1234.5)]
    assert [(n, k) for n, k, _b in bodies] == [("node-a", ACK_IDS_MAX), ("node-a", 3), ("node-b", 0), ("node-c", 1)]


def test_a_resend_of_verified_bytes_skips_ed25519_but_nothing_else() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge.errors import SecurityError
    from edge.signing import EventSigner, EventVerifier, NodeKey

    key = Ed25519PrivateKey.generate()
    registry = {"node-a": NodeKey("node-a", key.public_key(), "enrolled")}
    verifier = EventVerifier(registry.get)
    signed = EventSigner(key)(ev())
    verifier(signed)
    verifier(signed)  # the post resent it: a duplicate, not a second verification
    assert verifier.verifications == 1
    forged = signed.model_copy(update={"sig": EventSigner(Ed25519PrivateKey.generate())(ev()).sig})
    with pytest.raises(SecurityError) as exc:
        verifier(forged)  # same content, another signature: checked, and refused
    assert exc.value.reason == "bad_signature" and verifier.verifications == 2
    with pytest.raises(SecurityError) as exc:
        verifier(signed.model_copy(update={"sig": None}))
    assert exc.value.reason == "unsigned"
    other = EventSigner(key)(ev(event_id=signed.event_id, seq=99))
    with pytest.raises(SecurityError) as exc:
        verifier(other)  # the same event id with other content: a replay
    assert exc.value.reason == "replay"
    registry["node-a"] = NodeKey("node-a", key.public_key(), "revoked")
    with pytest.raises(SecurityError) as exc:
        verifier(signed)  # revocation bites even for bytes verified before
    assert exc.value.reason == "revoked"


def _batch(items: list[bytes]) -> bytes:
    from edge.sync.wire import batch_prefix, join_batch

    return join_batch(batch_prefix("node-a"), items)


def _envelope(**changes: Any) -> bytes:
    fixed: dict[str, Any] = {"wall_time": 1.5e9, "mono_ns": 1, **changes}  # lengths that do not vary
    return json.dumps(_body(**fixed), separators=(",", ":"), ensure_ascii=False).encode()


def test_a_good_batch_takes_the_batch_fast_path_with_received_canonical_bytes() -> None:
    items = [_body(event_id=f"{i:032x}", sig="A" * 86 + "==", payload={"f": 1e308, "t": "\u00e9"})
             for i in range(100)]
    payload = _batch([json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode() for d in items])
    fast = _fast("node-a", payload)
    assert fast is not None and fast.is_batch and not fast.bad
    assert [g.env.event_id for g in fast.good] == [d["event_id"] for d in items]
    assert [g.canonical() for g in fast.good] == [canonical_bytes(d) for d in items]
    assert decode_events(TOPICS, TOPIC, payload) == fast


@pytest.mark.parametrize("bad", [
    {"seq": -1},  # a field rule
    {"node_id": "node-b"},  # another node inside the batch
    {"payload": {"x": 2**63}},  # unstorable number
    {"payload": {"x": "\ud800"}},  # lone surrogate (sent as an escape)
    {"payload": {"x": "y" * (16 * 1024)}},  # past the single-event limit
    {"extra": 1},  # unknown key
])
def test_one_bad_envelope_leaves_the_batch_fast_path_and_only_it_is_rejected(bad: dict[str, Any]) -> None:
    good = [_envelope(event_id=f"{i:032x}") for i in range(3)]
    odd = json.dumps(_body(event_id="f" * 32, **bad), separators=(",", ":")).encode()
    payload = _batch([good[0], odd, good[1], good[2]])
    assert _fast("node-a", payload) is None
    decoded = decode_events(TOPICS, TOPIC, payload)
    assert [g.env.event_id for g in decoded.good] == [f"{i:032x}" for i in range(3)]
    assert len(decoded.bad) == 1 and decoded.bad[0].permanent


def test_an_envelope_just_within_the_limit_stays_on_the_batch_fast_path_one_byte_more_does_not() -> None:
    from edge.sync.wire import MAX_EVENT_BYTES

    base = _envelope(sig="S" * 88, payload={"x": ""})
    fill = MAX_EVENT_BYTES - len(base)
    at_limit = _envelope(sig="S" * 88, payload={"x": "y" * fill})
    assert len(at_limit) == MAX_EVENT_BYTES
    assert _fast("node-a", _batch([at_limit, _envelope(event_id="e" * 32)])) is not None
    over = _envelope(sig="S" * 88, payload={"x": "y" * (fill + 1)})
    assert _fast("node-a", _batch([over, _envelope(event_id="e" * 32)])) is None
    decoded = decode_events(TOPICS, TOPIC, _batch([over, _envelope(event_id="e" * 32)]))
    assert [b.reason for b in decoded.bad] == ["oversized"]


def test_a_batch_as_the_post_encodes_it_sorted_keys_takes_the_fast_path() -> None:
    """Posts send sorted keys, so a batch's text starts with ``{"events":[``: the fast path must
    find the kind in the parsed object, not in the first bytes."""
    from edge.sync.wire import EventBatch

    envs = [ev().model_copy(update={"event_id": f"{i:032x}", "seq": i}) for i in range(5)]
    payload = encode(EventBatch(node_id="node-a", events=envs))
    assert payload.startswith(b'{"events":[')
    fast = _fast("node-a", payload)
    assert fast is not None and fast.is_batch and [g.env for g in fast.good] == envs
    assert [g.received for g in fast.good] == [canonical_bytes(e) for e in envs]
