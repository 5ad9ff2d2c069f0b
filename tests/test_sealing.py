"""Snapshots sealed at rest to central's X25519 key."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.errors import SecurityError
from edge.sealing import MAGIC, OVERHEAD, Sealer, Unsealer, is_sealed


@pytest.fixture
def central() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def test_round_trip_and_no_plaintext_leaks(central: X25519PrivateKey) -> None:
    jpeg = b"\xff\xd8\xff\xe0" + b"JFIF face of a thief " * 500
    sealed = Sealer(central.public_key()).seal(jpeg)
    assert is_sealed(sealed) and sealed.startswith(MAGIC)
    assert len(sealed) == len(jpeg) + OVERHEAD
    assert b"face of a thief" not in sealed
    assert Unsealer(central).open(sealed) == jpeg


def test_each_seal_is_fresh(central: X25519PrivateKey) -> None:
    s = Sealer(central.public_key())
    a, b = s.seal(b"x" * 100), s.seal(b"x" * 100)
    assert a != b and a[6:38] != b[6:38]  # new ephemeral key each time


@pytest.mark.parametrize("where", [0, 5, 10, 40, 60, -1])
def test_tampering_anywhere_is_detected(central: X25519PrivateKey, where: int) -> None:
    sealed = bytearray(Sealer(central.public_key()).seal(os.urandom(300)))
    sealed[where] ^= 0x01
    with pytest.raises(SecurityError) as exc:
        Unsealer(central).open(bytes(sealed))
    assert exc.value.reason in {"bad_seal", "not_sealed", "unknown_seal_version"}


def test_wrong_key_and_truncation(central: X25519PrivateKey) -> None:
    sealed = Sealer(central.public_key()).seal(b"snapshot")
    with pytest.raises(SecurityError, match="bad_seal"):
        Unsealer(X25519PrivateKey.generate()).open(sealed)
    with pytest.raises(SecurityError, match="bad_seal"):
        Unsealer(central).open(sealed[:30])
    with pytest.raises(SecurityError, match="not_sealed"):
        Unsealer(central).open(b"\xff\xd8plain jpeg")
