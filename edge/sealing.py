"""Snapshots sealed at rest to central's X25519 key: a stolen post or SD card does not reveal them.

Format (version 1)::

    b"KSEAL" | 0x01 | ephemeral X25519 public key (32) | nonce (12) | ChaCha20-Poly1305 ciphertext

key = HKDF-SHA256(X25519(ephemeral, central), salt = ephemeral_pub || central_pub,
info = b"kentongan-seal-v1", 32 bytes). The 38-byte header (magic, version, ephemeral key) is the
associated data, so any change to header or ciphertext fails authentication. The node keeps no
private key: once sealed, only central (holding the X25519 private key) can open a snapshot.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.errors import SecurityError
from edge.keys import load_pem_key

MAGIC = b"KSEAL"
VERSION = 1
_INFO = b"kentongan-seal-v1"
_HEADER_LEN = len(MAGIC) + 1 + 32
_NONCE_LEN = 12
OVERHEAD = _HEADER_LEN + _NONCE_LEN + 16


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _derive(shared: bytes, eph_pub: bytes, recipient_pub: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + recipient_pub,
                info=_INFO).derive(shared)


def is_sealed(blob: bytes) -> bool:
    return blob[:len(MAGIC)] == MAGIC


def load_seal_public_key(path: str | Path) -> X25519PublicKey:
    return load_pem_key(path, X25519PublicKey, private=False)


def load_seal_private_key(path: str | Path) -> X25519PrivateKey:
    return load_pem_key(path, X25519PrivateKey, private=True)


class Sealer:
    """``seal(data) -> sealed bytes`` for central's X25519 public key. Also callable (the
    ``SnapshotStore(sealer=...)`` hook)."""

    def __init__(self, recipient: X25519PublicKey) -> None:
        self._recipient = recipient
        self._recipient_raw = _raw(recipient)

    @classmethod
    def from_file(cls, path: str | Path) -> Sealer:
        return cls(load_seal_public_key(path))

    def seal(self, data: bytes) -> bytes:
        eph = X25519PrivateKey.generate()
        eph_pub = _raw(eph.public_key())
        key = _derive(eph.exchange(self._recipient), eph_pub, self._recipient_raw)
        header = MAGIC + bytes([VERSION]) + eph_pub
        nonce = os.urandom(_NONCE_LEN)
        return header + nonce + ChaCha20Poly1305(key).encrypt(nonce, data, header)

    __call__ = seal


class Unsealer:
    """Central side: ``open(sealed) -> plaintext``; raises ``SecurityError`` (``not_sealed``,
    ``unknown_seal_version``, ``bad_seal``) on foreign, truncated or tampered input."""

    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._key = private_key
        self._pub_raw = _raw(private_key.public_key())

    @classmethod
    def from_file(cls, path: str | Path) -> Unsealer:
        return cls(load_seal_private_key(path))

    def open(self, blob: bytes) -> bytes:
        if not is_sealed(blob):
            raise SecurityError("not_sealed", "missing KSEAL header")
        if len(blob) < OVERHEAD:
            raise SecurityError("bad_seal", "truncated")
        if blob[len(MAGIC)] != VERSION:
            raise SecurityError("unknown_seal_version", str(blob[len(MAGIC)]))
        header = blob[:_HEADER_LEN]
        eph_pub = header[len(MAGIC) + 1:]
        nonce = blob[_HEADER_LEN:_HEADER_LEN + _NONCE_LEN]
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
            key = _derive(shared, eph_pub, self._pub_raw)
            return ChaCha20Poly1305(key).decrypt(nonce, blob[_HEADER_LEN + _NONCE_LEN:], header)
        except (InvalidTag, ValueError):
            raise SecurityError("bad_seal", "authentication failed (tampered or wrong key)") \
                from None

    __call__ = open
