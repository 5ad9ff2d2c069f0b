"""Event signatures checked over the RECEIVED bytes with the ``sig`` member cut out
(``edge.sync.wire.received_signed_bytes``), and the fallback to re-encoding for everything else:
hostile variants must never verify content that was not signed, and old-style (non-canonical)
but correctly signed messages must keep verifying."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from central_sync.ingest_decode import GoodEnvelope, decode_events
from central_sync.message_auth import MessageAuth
from central_sync.verify_cache import KeyCache
from edge.errors import SecurityError
from edge.signing import EventSigner, EventVerifier, MessageSigner, NodeKey, sign_bytes
from edge.sync.wire import (
    CommandResult,
    EventEnvelope,
    Heartbeat,
    Presence,
    Topics,
    canonical_bytes,
    encode,
    envelope_json,
    received_signed_bytes,
    sig_successor,
    signed_bytes,
)
from tests.test_ingest import ev

TOPICS = Topics("kentongan/v1")
TOPIC = "kentongan/v1/up/node-a/event"
KEY = Ed25519PrivateKey.generate()


def _verifier() -> EventVerifier:
    return EventVerifier({"node-a": NodeKey("node-a", KEY.public_key(), "enrolled")}.get)


def _signed(**kw: Any) -> EventEnvelope:
    return EventSigner(KEY)(ev(**kw))


def _one(payload: bytes) -> GoodEnvelope:
    decoded = decode_events(TOPICS, TOPIC, payload)
    assert not decoded.bad and len(decoded.good) == 1, decoded.bad
    return decoded.good[0]


def _check(verifier: EventVerifier, g: GoodEnvelope) -> None:
    verifier(g.env, g.canonical, g.received)


def _no_rebuild() -> bytes | None:
    raise AssertionError("the signed bytes were rebuilt although the received ones verify")


def test_a_post_sends_canonical_bytes_with_sig_in_its_sorted_place() -> None:
    env = _signed(payload={"b": 1, "a": "ü"})
    body = encode(env)
    assert list(json.loads(body)) == sorted(json.loads(body))
    assert received_signed_bytes(body, env.sig) == canonical_bytes(env)
    data = env.model_dump(mode="json")
    assert envelope_json(data) == body  # the unsigned path writes the same form


def test_central_verifies_the_received_bytes_without_re_encoding() -> None:
    env = _signed()
    g = _one(encode(env))
    assert g.received == canonical_bytes(env)
    verifier = _verifier()
    verifier(g.env, _no_rebuild, g.received)
    assert verifier.verifications == 1
    verifier(g.env, _no_rebuild, g.received)  # a resend: a hash, no second verification
    assert verifier.verifications == 1


def test_a_forged_message_is_rejected() -> None:
    env = _signed()
    payload = encode(env).replace(b'"type":"PANIC"', b'"type":"TEST"')
    g = _one(payload)
    assert g.received is not None  # the cut applies; the re-encoded form is the same bytes
    verifier = _verifier()
    with pytest.raises(SecurityError) as exc:
        _check(verifier, g)
    assert exc.value.reason == "bad_signature"
    assert verifier.verifications == 1  # a forgery costs one Ed25519 check, not two


def test_a_sig_member_nested_in_the_payload_is_never_cut_out() -> None:
    env = _signed()
    body = encode(env)
    # The signed content, its sig written with a \u escape at the top, and a raw copy of the sig
    # member slipped into the payload: cutting the raw one would "verify" a payload never signed.
    escaped = body.replace(b',"sig":', b',"\\u0073ig":')
    hostile = escaped.replace(b'"payload":{', b'"payload":{"sig":"' + env.sig.encode() + b'",')  # type: ignore[union-attr]
    g = _one(hostile)
    assert g.env.payload["sig"] == env.sig and g.received is None
    with pytest.raises(SecurityError) as exc:
        _check(_verifier(), g)
    assert exc.value.reason == "bad_signature"
    # Without the escape the payload's copy makes "sig" appear twice: no cut either.
    twice = body.replace(b'"payload":{', b'"payload":{"sig":"' + env.sig.encode() + b'",')  # type: ignore[union-attr]
    g = _one(twice)
    assert g.received is None
    with pytest.raises(SecurityError):
        _check(_verifier(), g)


def test_a_post_may_sign_a_payload_with_its_own_sig_key() -> None:
    env = _signed(payload={"sig": "not ours", "n": 1})
    g = _one(encode(env))
    assert g.received is None  # "sig" twice: re-encoded, and that verifies
    _check(_verifier(), g)


def test_a_top_level_key_written_with_escapes_falls_back_and_verifies() -> None:
    env = _signed()
    payload = encode(env).replace(b'"sig":', b'"\\u0073ig":').replace(b'"type":', b'"\\u0074ype":')
    g = _one(payload)
    assert g.received is None and g.env == env
    _check(_verifier(), g)


def test_two_sig_members_are_not_cut() -> None:
    env = _signed()
    forged_sig = sign_bytes(Ed25519PrivateKey.generate(), canonical_bytes(env))
    body = encode(env)
    # JSON's last member wins: the first is the attacker's, the second the post's.
    two = body.replace(b'{"boot_id"', b'{"sig":"' + forged_sig.encode() + b'","boot_id"')
    g = _one(two)
    assert g.env.sig == env.sig and g.received is None
    _check(_verifier(), g)  # what is checked is the parsed object re-encoded: exactly the signed content
    reverse = body.replace(b'{"boot_id"', b'{"sig":"' + env.sig.encode() + b'","boot_id"')  # type: ignore[union-attr]
    reverse = reverse.replace(env.sig.encode(), forged_sig.encode()).replace(  # type: ignore[union-attr]
        b'{"sig":"' + forged_sig.encode(), b'{"sig":"' + env.sig.encode(), 1)  # type: ignore[union-attr]
    g = _one(reverse)
    assert g.env.sig == forged_sig and g.received is None
    with pytest.raises(SecurityError):
        _check(_verifier(), g)


def test_old_style_messages_still_verify_through_the_fallback() -> None:
    env = _signed(payload={"b": 1, "a": 2})
    data = env.model_dump(mode="json")
    old = json.dumps(data, separators=(",", ":")).encode()  # an older post: model order, sig after v
    assert old.startswith(b'{"v":1,"sig":')
    g = _one(old)
    assert g.received is None
    verifier = _verifier()
    _check(verifier, g)
    assert verifier.verifications == 1  # the cut was not tried
    # sig in its sorted place but the payload's keys unsorted: the cut is tried, fails, and the
    # re-encoded form verifies.
    spaced = encode(env).replace(b'"payload":{"a":2,"b":1}', b'"payload":{"b":1,"a":2}')
    assert spaced != encode(env)
    g = _one(spaced)
    assert g.received is not None
    verifier = _verifier()
    _check(verifier, g)
    assert verifier.verifications == 2
    # Pretty-printed (whitespace everywhere): no cut, fallback verifies.
    g = _one(json.dumps(data, indent=2).encode())
    assert g.received is None
    _check(_verifier(), g)


def test_the_same_event_verified_either_way_is_one_content_not_a_replay() -> None:
    env = _signed()
    verifier = _verifier()
    _check(verifier, _one(encode(env)))
    old = json.dumps(env.model_dump(mode="json"), separators=(",", ":")).encode()
    _check(verifier, _one(old))  # the digest log sees the same signed bytes both times
    other = _signed(event_id=env.event_id, seq=99)
    with pytest.raises(SecurityError) as exc:
        _check(verifier, _one(encode(other)))
    assert exc.value.reason == "replay"


@pytest.mark.parametrize("sig", [None, "", "a\"b", "abc\\u0041", "x" * 201])
def test_the_cut_refuses_odd_signatures(sig: str | None) -> None:
    assert received_signed_bytes(b'{"seq":1,"sig":"x","time_quality":"synced"}', sig) is None


# -- non-event kinds: ``MessageAuth`` given the received payload ---------------------------------


def _auth() -> MessageAuth:
    return MessageAuth(KeyCache({"node-a": NodeKey("node-a", KEY.public_key(), "enrolled")}.get, lambda: 1))


def _kinds() -> list[BaseModel]:
    return [Heartbeat(node_id="node-a", boot_id="b1", at=1.5, version="1.0", time_quality="synced",
                      outbox={"ready": 3}, siren={"state": "idle"}, extra={"acked": 2}),
            Presence(node_id="node-a", state="online", boot_id="b1", version="1.0", at=2.5, rw=3, rt=4),
            CommandResult(command_id="c" * 16, node_id="node-a", ok=True, detail="done", at=3.5, data={"x": 1})]


@pytest.mark.parametrize("msg", _kinds(), ids=lambda m: type(m).__name__)
def test_non_event_kinds_are_verified_over_the_received_bytes(msg: BaseModel) -> None:
    signed = MessageSigner(KEY).sign(msg)
    body = encode(signed)
    data = json.loads(body)
    assert received_signed_bytes(body, data["sig"], sig_successor(type(msg))) == signed_bytes(data)
    auth = _auth()
    auth.check("node-a", data, body)
    # An older post's form (not canonical: the cut does not verify): re-encoded, still accepted.
    pretty = json.dumps(data, indent=1).encode()
    auth.check("node-a", json.loads(pretty), pretty)
    swapped = json.dumps(dict(reversed(list(data.items()))), separators=(",", ":")).encode()
    auth.check("node-a", json.loads(swapped), swapped)


@pytest.mark.parametrize("msg", _kinds(), ids=lambda m: type(m).__name__)
def test_a_forged_non_event_message_is_refused_with_the_cut(msg: BaseModel) -> None:
    signed = MessageSigner(KEY).sign(msg)
    other = MessageSigner(Ed25519PrivateKey.generate()).sign(msg)
    body = encode(signed).replace(signed.sig.encode(), other.sig.encode())  # type: ignore[attr-defined]
    data = json.loads(body)
    with pytest.raises(SecurityError) as exc:
        _auth().check("node-a", data, body)
    assert exc.value.reason == "bad_signature"
    # Content changed after signing, in canonical form: the cut bytes are not what was signed.
    tampered = encode(signed).replace(b'.5,', b'.25,', 1)  # its "at"
    assert tampered != encode(signed)
    with pytest.raises(SecurityError):
        _auth().check("node-a", json.loads(tampered), tampered)
