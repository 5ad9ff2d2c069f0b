"""One signature per ``event_batch`` (``edge.sync.wire_batch``): the post signs the canonical
batch once, central verifies that one signature (over the received bytes with the top-level
``sig`` cut where that is provably safe, else the rebuilt canonical bytes) plus one envelope
signature picked at random. Hostile variants must never verify content that was not signed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_sync.ingest_decode import DecodedEvents, decode_events
from central_sync.verify_cache import CachedEventVerifier, KeyCache
from edge.errors import SecurityError, WireError
from edge.signing import EventSigner, MessageSigner, NodeKey
from edge.sync.wire import EventEnvelope, Topics, batch_prefix, canonical_bytes, encode, join_batch
from edge.sync.wire_batch import canonical_batch, received_batch_signed_bytes, sign_batch
from tests.test_ingest import ev

TOPICS = Topics("kentongan/v1")
TOPIC = "kentongan/v1/up/node-a/event"
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def _verifier(status: str = "enrolled") -> CachedEventVerifier:
    keys = {"node-a": NodeKey("node-a", KEY.public_key(), status),
            "node-b": NodeKey("node-b", OTHER.public_key(), "enrolled")}
    return CachedEventVerifier(KeyCache(keys.get, lambda: 1))


def _envs(n: int = 5, key: Ed25519PrivateKey = KEY, **kw: Any) -> list[EventEnvelope]:
    return [EventSigner(key)(ev(seq=i, **kw)) for i in range(n)]


def _signed_batch(envs: list[EventEnvelope], key: Ed25519PrivateKey = KEY, node: str = "node-a") -> bytes:
    return sign_batch(canonical_batch(node, [encode(e) for e in envs]), MessageSigner(key).sign_raw)


def _check(payload: bytes, verifier: CachedEventVerifier | None = None) -> tuple[DecodedEvents, list[Any]]:
    """Decode and verify like ingest; the per-envelope outcome (None: accepted) or the batch's
    ``SecurityError`` reason for every envelope."""
    decoded = decode_events(TOPICS, TOPIC, payload)
    assert decoded.batch is not None
    verifier = verifier or _verifier()
    try:
        return decoded, [None if e is None else e.reason
                         for e in verifier.verify_batch("node-a", decoded.batch, decoded.good)]
    except SecurityError as exc:
        return decoded, [exc.reason] * len(decoded.good)


def test_the_post_signs_the_canonical_batch_once_and_central_cuts_the_received_bytes() -> None:
    envs = _envs()
    body = _signed_batch(envs)
    data = json.loads(body)
    assert list(data) == sorted(data) and list(data)[-2:] == ["sig", "v"]
    assert all("sig" in item for item in data["events"])  # envelopes keep their signatures
    signed = canonical_bytes(data)
    assert received_batch_signed_bytes(body, data["sig"], len(envs)) == signed
    verifier = _verifier()
    decoded, outcome = _check(body, verifier)
    assert decoded.batch is not None and decoded.batch.received == signed
    assert outcome == [None] * 5
    assert verifier.verifications == 2  # the batch's signature and one envelope's, not five
    assert _check(body, verifier)[1] == [None] * 5  # the identical batch again: duplicates
    assert verifier.verifications == 2  # a resend costs hashes, no Ed25519


def test_the_batch_signature_of_another_nodes_key_refuses_the_whole_batch() -> None:
    body = _signed_batch(_envs(), key=OTHER)  # node-b's key, node-a's topic and envelopes
    assert _check(body)[1] == ["bad_signature"] * 5


def test_tampered_content_under_a_batch_signature_is_refused_whole() -> None:
    body = _signed_batch(_envs())
    forged = body.replace(b'"seq":3', b'"seq":9', 1)
    assert forged != body
    assert _check(forged)[1] == ["bad_signature"] * 5


def test_an_envelope_of_another_node_inside_a_signed_batch_is_refused() -> None:
    envs = [*_envs(3), EventSigner(KEY)(ev(node="node-b", seq=7))]
    decoded, outcome = _check(_signed_batch(envs))
    assert [b.reason for b in decoded.bad] == ["wrong_node"] and len(decoded.good) == 3
    assert outcome == [None] * 3


def test_nested_sig_members_leave_the_received_cut_and_still_verify_by_rebuilding() -> None:
    sig_like = MessageSigner(KEY).sign_raw(b"x")
    envs = _envs(3, payload={"sig": sig_like, "note": '"sig":"' + sig_like + '","v":1}'})
    body = _signed_batch(envs)
    decoded, outcome = _check(body)
    assert decoded.batch is not None and decoded.batch.received is None  # escapes and extra "sig"s
    assert outcome == [None] * 3


def test_a_sig_looking_value_ending_the_payload_is_not_cut() -> None:
    """No backslash, but a string value ``sig`` and an extra token: the count rule refuses the cut."""
    envs = _envs(2, payload={"k": "sig"})
    body = _signed_batch(envs)
    data = json.loads(body)
    assert received_batch_signed_bytes(body, data["sig"], 2) is None
    assert _check(body)[1] == [None, None]


def test_two_top_level_sigs_never_verify_unsigned_content() -> None:
    envs = _envs(3)
    body = _signed_batch(envs)
    real = json.loads(body)["sig"]
    fake = MessageSigner(OTHER).sign_raw(b"y")
    # A second sig before the real one: the parse keeps the last (the real one); the cut is
    # refused (one "sig" too many) and the rebuilt canonical bytes are what was signed.
    first = b'{"sig":"' + fake.encode() + b'",' + body[1:]
    decoded, outcome = _check(first)
    assert decoded.batch is not None and decoded.batch.received is None and outcome == [None] * 3
    # The real one first and a forged one last: the parse keeps the forged one.
    last = body.replace(b',"sig":"' + real.encode() + b'","v":1}',
                        b',"sig":"' + real.encode() + b'","sig":"' + fake.encode() + b'","v":1}')
    assert _check(last)[1] == ["bad_signature"] * 3


def test_escaped_keys_and_reordered_keys_fall_back_to_the_canonical_bytes() -> None:
    envs = _envs(3)
    body = _signed_batch(envs)
    escaped = body.replace(b',"sig":"', b',"\\u0073ig":"', body.count(b',"sig":"'))
    decoded, outcome = _check(escaped)
    assert decoded.batch is not None and decoded.batch.received is None and outcome == [None] * 3
    data = json.loads(body)
    reordered = json.dumps({"v": 1, "sig": data["sig"], "node_id": "node-a", "kind": "event_batch",
                            "events": data["events"]}).encode()
    decoded, outcome = _check(reordered)
    assert decoded.batch is not None and decoded.batch.received is None and outcome == [None] * 3


def test_bad_envelope_signatures_under_a_good_batch_signature_are_caught_by_the_spot_check() -> None:
    envs = [e.model_copy(update={"sig": MessageSigner(KEY).sign_raw(b"other")}) for e in _envs(4)]
    assert _check(_signed_batch(envs))[1] == ["bad_signature"] * 4


def test_unsigned_envelopes_in_a_signed_batch_are_refused_one_by_one() -> None:
    envs = [*_envs(2), ev(seq=5)]
    assert _check(_signed_batch(envs))[1] == [None, None, "unsigned"]


def test_a_replayed_event_id_with_other_content_is_refused() -> None:
    verifier = _verifier()
    envs = _envs(2)
    assert _check(_signed_batch(envs), verifier)[1] == [None, None]
    changed = EventSigner(KEY)(envs[1].model_copy(update={"payload": {"button": "other"}, "sig": None}))
    assert _check(_signed_batch([envs[0], changed]), verifier)[1] == [None, "replay"]


@pytest.mark.parametrize("status,reason", [("revoked", "revoked")])
def test_a_revoked_node_batch_is_refused(status: str, reason: str) -> None:
    assert _check(_signed_batch(_envs(2)), _verifier(status))[1] == [reason, reason]


def test_an_old_style_batch_has_no_batch_signature_and_keeps_the_per_envelope_path() -> None:
    envs = _envs(3)
    decoded = decode_events(TOPICS, TOPIC, join_batch(batch_prefix("node-a"), [encode(e) for e in envs]))
    assert decoded.is_batch and decoded.batch is None and len(decoded.good) == 3
    verifier = _verifier()
    for g in decoded.good:
        verifier(g.env, g.canonical, g.received)
    assert verifier.verifications == 3


def test_a_batch_sig_that_is_not_a_string_is_a_bad_field() -> None:
    body = json.dumps({"events": [json.loads(encode(e)) for e in _envs(2)], "kind": "event_batch",
                       "node_id": "node-a", "sig": 5, "v": 1}).encode()
    with pytest.raises(WireError) as exc:
        decode_events(TOPICS, TOPIC, body)
    assert exc.value.reason == "bad_field"
