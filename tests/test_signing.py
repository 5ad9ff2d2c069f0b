"""Signed events (node -> central) and signed commands (central -> node)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.errors import SecurityError
from edge.signing import (
    CommandSigner,
    CommandVerifier,
    EventSigner,
    EventVerifier,
    MemoryDigestLog,
    NodeKey,
)
from edge.sync.wire import Command, EventEnvelope, encode
from edge.sync.wire_decode import decode


def _env(node_id: str = "rt03-tembalang", **kw: object) -> EventEnvelope:
    data: dict[str, object] = dict(
        event_id=uuid.uuid4().hex, node_id=node_id, boot_id="boot-1", seq=1, mono_ns=5,
        wall_time=1_700_000_000.0, time_quality="synced", type="PANIC", priority=1,
        payload={"button": "panic"})
    data.update(kw)
    return EventEnvelope.model_validate(data)


class Keys:
    def __init__(self) -> None:
        self.node = Ed25519PrivateKey.generate()
        self.other = Ed25519PrivateKey.generate()
        self.status = {"rt03-tembalang": "enrolled", "rt04-revoked": "revoked"}

    def lookup(self, node_id: str) -> NodeKey | None:
        if node_id not in self.status:
            return None
        return NodeKey(node_id, self.node.public_key(), self.status[node_id])


@pytest.fixture
def keys() -> Keys:
    return Keys()


def _reason(exc: pytest.ExceptionInfo[SecurityError]) -> str:
    return exc.value.reason


def test_signed_event_verifies_and_survives_the_wire(keys: Keys) -> None:
    env = EventSigner(keys.node).sign(_env())
    assert env.sig
    wired = decode(encode(env), "event")
    assert isinstance(wired, EventEnvelope)
    EventVerifier(keys.lookup)(wired)


def test_identical_resend_is_a_duplicate_not_a_replay(keys: Keys) -> None:
    verify = EventVerifier(keys.lookup)
    env = EventSigner(keys.node).sign(_env())
    verify(env)
    verify(env)  # same bytes: accepted, central's store de-duplicates


@pytest.mark.parametrize("case,reason", [
    ("unsigned", "unsigned"),
    ("forged", "bad_signature"),
    ("altered", "bad_signature"),
    ("garbage_sig", "bad_signature"),
    ("unknown", "unknown_node"),
    ("revoked", "revoked"),
])
def test_event_rejections(keys: Keys, case: str, reason: str) -> None:
    signer = EventSigner(keys.node)
    if case == "unsigned":
        env = _env()
    elif case == "forged":
        env = EventSigner(keys.other).sign(_env())
    elif case == "altered":
        env = signer.sign(_env()).model_copy(update={"payload": {"button": "other"}})
    elif case == "garbage_sig":
        env = _env().model_copy(update={"sig": "AAAA"})
    elif case == "unknown":
        env = signer.sign(_env(node_id="rt99-unknown"))
    else:
        env = signer.sign(_env(node_id="rt04-revoked"))
    with pytest.raises(SecurityError) as exc:
        EventVerifier(keys.lookup)(env)
    assert _reason(exc) == reason


def test_unsigned_accepted_only_when_not_required(keys: Keys) -> None:
    EventVerifier(keys.lookup, require_signed=False)(_env())


def test_different_envelope_reusing_event_id_is_replay(keys: Keys) -> None:
    signer = EventSigner(keys.node)
    verify = EventVerifier(keys.lookup, digests=MemoryDigestLog())
    first = signer.sign(_env(event_id="0190aaaa-bbbb-7ccc-8ddd-eeeeffff0000"))
    verify(first)
    second = signer.sign(_env(event_id="0190aaaa-bbbb-7ccc-8ddd-eeeeffff0000", type="TEST"))
    with pytest.raises(SecurityError) as exc:
        verify(second)
    assert _reason(exc) == "replay"


# -- commands ---------------------------------------------------------------------------------

NOW = 1_800_000_000.0


def _cmd(node_id: str = "rt03-tembalang", issued: float = NOW, ttl: float = 60,
         **kw: object) -> Command:
    data: dict[str, object] = dict(command_id=uuid.uuid4().hex, node_id=node_id, action="sound",
                                   params={"incident": "PANIC"}, issued_at=issued,
                                   expires_at=issued + ttl)
    data.update(kw)
    return Command.model_validate(data)


class Central:
    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.now = NOW

    def verifier(self, **kw: object) -> CommandVerifier:
        return CommandVerifier(self.key.public_key(), "rt03-tembalang", 300,
                               lambda: self.now, **kw)  # type: ignore[arg-type]


def test_valid_command_passes_once_then_replay(tmp_path: Path) -> None:
    c = Central()
    v = c.verifier()
    cmd = CommandSigner(c.key).sign(_cmd())
    v(decode(encode(cmd), "command"))  # type: ignore[arg-type]
    with pytest.raises(SecurityError) as exc:
        v(cmd)
    assert exc.value.reason == "replay"


@pytest.mark.parametrize("case,reason", [
    ("unsigned", "unsigned"),
    ("other_key", "bad_signature"),
    ("altered", "bad_signature"),
    ("other_node", "wrong_node"),
    ("expired", "expired"),
    ("stale", "stale"),
    ("future", "future"),
])
def test_command_rejections(case: str, reason: str) -> None:
    c = Central()
    signer = CommandSigner(c.key)
    if case == "unsigned":
        cmd = _cmd()
    elif case == "other_key":
        cmd = CommandSigner(Ed25519PrivateKey.generate()).sign(_cmd())
    elif case == "altered":
        cmd = signer.sign(_cmd(action="test")).model_copy(update={"action": "sound"})
    elif case == "other_node":
        cmd = signer.sign(_cmd(node_id="rt04-other"))
    elif case == "expired":
        cmd = signer.sign(_cmd(issued=NOW - 120, ttl=60))
    elif case == "stale":
        cmd = signer.sign(_cmd(issued=NOW - 400, ttl=3600))
    else:
        cmd = signer.sign(_cmd(issued=NOW + 600))
    with pytest.raises(SecurityError) as exc:
        c.verifier()(cmd)
    assert exc.value.reason == reason


def test_seen_ids_are_bounded_and_forgotten_after_the_window() -> None:
    c = Central()
    v = c.verifier(capacity=10)
    signer = CommandSigner(c.key)
    for _ in range(50):
        v(signer.sign(_cmd()))
    assert len(v._seen) <= 10
    c.now += 1000
    v(signer.sign(_cmd(issued=c.now)))
    assert len(v._seen) == 1  # the old ones are outside the window and were pruned


def test_replay_protection_survives_restart_with_state_file(tmp_path: Path) -> None:
    c = Central()
    state = tmp_path / "seen-commands.json"
    cmd = CommandSigner(c.key).sign(_cmd())
    c.verifier(state_file=state)(cmd)
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(SecurityError) as exc:
        c.verifier(state_file=state)(cmd)  # a fresh verifier after "restart"
    assert exc.value.reason == "replay"
    c.verifier()(cmd)  # documented gap: without a state file a restart forgets


def test_libsodium_verification_accepts_and_refuses_what_openssl_does() -> None:
    """``verify_bytes`` checks with libsodium (PyNaCl) for speed; it must agree with OpenSSL."""
    import base64
    import os

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edge import signing
    from edge.errors import SecurityError

    assert signing._sodium_open is not None  # the dependency is installed (pyproject)
    key = Ed25519PrivateKey.generate()
    other = Ed25519PrivateKey.generate().public_key()
    for size in (0, 1, 400, 16 * 1024):
        data = os.urandom(size)
        raw = key.sign(data)
        signing.verify_bytes(key.public_key(), data, base64.b64encode(raw).decode())
        flipped = bytes([raw[0] ^ 1]) + raw[1:]
        for pub, msg, sig in ((key.public_key(), data + b"x", raw), (key.public_key(), data, flipped),
                              (other, data, raw)):
            with pytest.raises(InvalidSignature):
                pub.verify(sig, msg)
            with pytest.raises(SecurityError) as exc:
                signing.verify_bytes(pub, msg, base64.b64encode(sig).decode())
            assert exc.value.reason == "bad_signature"
