"""Ed25519 signatures on everything a post sends (node -> central) and commands (central -> node).

A signature covers ``edge.sync.wire.signed_bytes(msg)`` (the message without ``sig``, sorted
keys, compact JSON; a snapshot's content replaced by its SHA-256) and travels base64-encoded in
the message's ``sig`` field.

* ``MessageSigner`` (node; ``EventSigner`` is the same) signs every event, snapshot, presence,
  heartbeat and command result with the node's key; central checks the non-event kinds in
  ``central_sync.message_auth``.
* ``EventVerifier`` (central, ``IngestService(verify_event=...)``) checks node status, signature
  and event-id reuse. Replay rule: the *identical* envelope re-sent is a duplicate (accepted here,
  de-duplicated by central's store); a *different* envelope reusing an ``event_id`` already seen is
  rejected with ``replay``.
* ``CommandSigner`` (central, ``IngestService(sign_command=...)``) signs downlink commands.
* ``CommandVerifier`` (node, ``SyncService(verify_command=...)``) checks signature, target node,
  expiry, the issued-at replay window and command-id reuse BEFORE the command is acted upon.

Every rejection raises ``edge.errors.SecurityError`` with a reason code (docs/security.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel

from edge.errors import SecurityError
from edge.keys import load_pem_key
from edge.sync.wire import Command, EventEnvelope, canonical_bytes, signed_bytes

_sodium_open: Callable[[bytes, bytes], bytes] | None
_SodiumBadSignature: type[Exception]
try:  # libsodium: the faster Ed25519 verification (verify_bytes)
    from nacl.bindings import crypto_sign_open as _sodium_open
    from nacl.exceptions import BadSignatureError as _SodiumBadSignature
except ImportError:  # pragma: no cover - cryptography alone still verifies
    _sodium_open = None
    _SodiumBadSignature = InvalidSignature

_M = TypeVar("_M", bound=BaseModel)

# -- keys -------------------------------------------------------------------------------------


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key (PKCS#8 PEM, unencrypted)."""
    return load_pem_key(path, Ed25519PrivateKey, private=True)


def load_verify_key(path: str | Path) -> Ed25519PublicKey:
    """Read an Ed25519 public key (SubjectPublicKeyInfo PEM)."""
    try:
        return public_key_from_pem(Path(path).read_bytes())
    except OSError as exc:
        raise SecurityError("bad_key", f"cannot read public key {path}: {exc.strerror}") from None


def public_key_from_pem(pem: bytes | str) -> Ed25519PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SecurityError("bad_key", f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SecurityError("bad_key", "not an Ed25519 public key")
    return key


def public_key_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def key_fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Short printable fingerprint: SHA-256 of the raw public key, first 16 bytes, hex in 4s."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashlib.sha256(raw).hexdigest()[:32]
    return ":".join(digest[i:i + 4] for i in range(0, 32, 4))


def _b64sig(sig: str) -> bytes:
    try:
        raw = base64.b64decode(sig.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SecurityError("bad_signature", "signature is not base64") from None
    if len(raw) != 64:
        raise SecurityError("bad_signature", "signature has the wrong length")
    return raw


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode("ascii")


def verify_bytes(key: Ed25519PublicKey, data: bytes, sig: str) -> None:
    """Raise ``SecurityError('bad_signature')`` unless ``sig`` is ``key``'s signature of ``data``.

    Verified by libsodium (PyNaCl) when it is installed, else by ``cryptography`` (OpenSSL):
    central verifies every event, and libsodium's Ed25519 verification took 55-62 us of CPU where
    OpenSSL's (cryptography 50) took 107-113 us on the same machine (20 interleaved rounds of 500,
    400-byte messages; docs/scale.md). Both reject a non-canonical ``s``; libsodium also rejects
    small-order keys and ``R`` values, which no honest signer produces."""
    raw = _b64sig(sig)
    if _sodium_open is not None:
        try:
            _sodium_open(raw + data, key.public_bytes_raw())
        except _SodiumBadSignature:
            raise SecurityError("bad_signature", "signature does not verify") from None
        return
    try:
        key.verify(raw, data)
    except InvalidSignature:
        raise SecurityError("bad_signature", "signature does not verify") from None


# -- events -----------------------------------------------------------------------------------


class MessageSigner:
    """Node side: ``sign(msg)`` returns a copy of ``msg`` (any uplink kind: event, snapshot,
    presence, heartbeat, command result) with ``sig`` set over ``signed_bytes(msg)``, the one
    signing scheme of the protocol. Also callable."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        return cls(load_signing_key(path))

    def sign(self, msg: _M) -> _M:
        return msg.model_copy(update={"sig": sign_bytes(self._key, signed_bytes(msg))})

    def sign_raw(self, data: bytes) -> str:
        """base64 signature of ``data`` as is (a batch's canonical bytes, ``wire_batch``)."""
        return sign_bytes(self._key, data)

    __call__ = sign


class EventSigner(MessageSigner):
    """The node's signer under its first name (events were the first kind it signed)."""


@dataclass(frozen=True)
class NodeKey:
    """What central knows about a node: its event-verification key and registry status."""

    node_id: str
    public_key: Ed25519PublicKey
    status: str  # "enrolled" | "revoked"


class DigestLog(Protocol):
    """Remembers the digest of the first envelope seen for each event id."""

    def check_and_record(self, node_id: str, event_id: str, digest: bytes) -> bytes | None:
        """Record ``digest`` for ``event_id`` if new; return the digest recorded earlier, or None."""
        ...


class MemoryDigestLog:
    """Bounded in-memory ``DigestLog`` (oldest entries forgotten past ``capacity``)."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def check_and_record(self, node_id: str, event_id: str, digest: bytes) -> bytes | None:
        key = f"{node_id}/{event_id}"
        with self._lock:
            old = self._seen.get(key)
            if old is None:
                self._seen[key] = digest
                while len(self._seen) > self.capacity:
                    self._seen.popitem(last=False)
            return old


class EventVerifier:
    """Central side: ``verifier(env)`` returns None when the envelope is acceptable, else raises
    ``SecurityError`` with reason ``unknown_node``, ``revoked``, ``unsigned``, ``bad_signature``
    or ``replay``. ``lookup(node_id)`` returns the node's ``NodeKey`` or None."""

    #: Exact (node, content, signature) triples whose signature verified, remembered so that a
    #: resend (a post resends whatever has no Ack yet, and an overloaded central gets many) costs
    #: a hash, not another Ed25519 verification. 32-byte keys: ~6 MiB at capacity.
    VERIFIED_CAPACITY = 65_536

    def __init__(self, lookup: Callable[[str], NodeKey | None], *, require_signed: bool = True,
                 digests: DigestLog | None = None) -> None:
        self._lookup = lookup
        self.require_signed = require_signed
        self._digests: DigestLog = digests if digests is not None else MemoryDigestLog()
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._verified_lock = threading.Lock()
        self.verifications = 0  # Ed25519 verifications done (resends of verified bytes skip them)

    def __call__(self, env: EventEnvelope, canonical: bytes | Callable[[], bytes | None] | None = None,
                 received: bytes | None = None) -> None:
        """``canonical``: the signed bytes rebuilt from the received JSON object (or a callable
        building them only when needed; None: rebuilt from ``env``). ``received``: the RECEIVED
        bytes with the ``sig`` member cut out (``edge.sync.wire.received_signed_bytes``), tried
        first; when they do not verify, the canonical bytes are (an older post's non-canonical
        wire form). Either way the signature covers exactly what ``env`` was parsed from. A
        forgery in canonical form costs one Ed25519 check, not two: when the rebuilt bytes are
        the cut bytes, their failure stands."""
        node = self._lookup(env.node_id)
        if node is None:
            raise SecurityError("unknown_node", f"{env.node_id} is not enrolled")
        if node.status != "enrolled":
            raise SecurityError("revoked", f"{env.node_id} is {node.status}")
        digest: bytes | None = None
        if env.sig is None:
            if self.require_signed:
                raise SecurityError("unsigned", f"event {env.event_id} carries no signature")
        elif received is not None:
            digest = self._signature(node.public_key, env.node_id, env.sig, received, strict=False)
        if digest is None:
            body = canonical() if callable(canonical) else canonical
            if body is None:
                body = canonical_bytes(env)
            if env.sig is None:
                digest = hashlib.sha256(body).digest()
            elif body == received:  # the same bytes failed already: no second Ed25519 check
                raise SecurityError("bad_signature", "signature does not verify")
            else:
                digest = self._signature(node.public_key, env.node_id, env.sig, body, strict=True)
        assert digest is not None
        earlier = self._digests.check_and_record(env.node_id, env.event_id, digest)
        if earlier is not None and earlier != digest:
            raise SecurityError("replay", f"event_id {env.event_id} reused with other content")

    def _signature(self, key: Ed25519PublicKey, node_id: str, sig: str | None, body: bytes, *,
                   strict: bool) -> bytes | None:
        """The SHA-256 of ``body`` when ``sig`` is the node's signature of it (a resend of
        verified bytes costs a hash, not an Ed25519 verification); else ``bad_signature`` when
        ``strict``, None when not. (An envelope's or a whole batch's signature.)"""
        assert sig is not None
        h = hashlib.sha256(body)
        digest = h.digest()
        h.update(b"\0" + node_id.encode() + b"\0" + sig.encode())
        seen = h.digest()
        with self._verified_lock:
            known = seen in self._verified
        if not known:
            self.verifications += 1
            try:
                verify_bytes(key, body, sig)
            except SecurityError:
                if strict:
                    raise
                return None
            with self._verified_lock:
                self._verified[seen] = None
                while len(self._verified) > self.VERIFIED_CAPACITY:
                    self._verified.popitem(last=False)
        return digest

    verify = __call__


# -- commands ---------------------------------------------------------------------------------


class CommandSigner:
    """Central side: ``sign(cmd)`` returns a copy of ``cmd`` with ``sig`` set. Also callable."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def from_file(cls, path: str | Path) -> CommandSigner:
        return cls(load_signing_key(path))

    def sign(self, cmd: Command) -> Command:
        return cmd.model_copy(update={"sig": sign_bytes(self._key, canonical_bytes(cmd))})

    __call__ = sign


class CommandVerifier:
    """Node side: raise ``SecurityError`` unless ``cmd`` is fresh, for us, and signed by central.

    Reasons, checked in this order: ``unsigned``, ``bad_signature``, ``wrong_node``, ``expired``
    (``expires_at`` passed), ``stale`` (``issued_at`` older than ``max_age_seconds``), ``future``
    (``issued_at`` more than ``max_skew_seconds`` ahead), ``replay`` (``command_id`` seen before).

    Seen command ids are kept until their replay window closes (bounded by ``capacity``; when
    full, the oldest are dropped, which is safe only while they are outside the window, so
    ``capacity`` must exceed the commands one node gets per window). With ``state_file`` the ids
    survive a restart (small JSON file, rewritten atomically on each accepted command); without
    it a restart forgets them and a captured command could be replayed once within its window.
    """

    def __init__(self, central_key: Ed25519PublicKey, node_id: str, max_age_seconds: float = 300,
                 clock: Callable[[], float] = time.time, *, require_signed: bool = True,
                 max_skew_seconds: float = 60.0, capacity: int = 4096,
                 state_file: Path | None = None) -> None:
        self._key = central_key
        self.node_id = node_id
        self.max_age = max_age_seconds
        self.max_skew = max_skew_seconds
        self.require_signed = require_signed
        self.capacity = capacity
        self._clock = clock
        self._state_file = state_file
        self._seen: OrderedDict[str, float] = OrderedDict()  # command_id -> forget after
        self._lock = threading.Lock()
        self._load()

    def __call__(self, cmd: Command) -> None:
        if cmd.sig is None:
            if self.require_signed:
                raise SecurityError("unsigned", f"command {cmd.command_id} carries no signature")
        else:
            verify_bytes(self._key, canonical_bytes(cmd), cmd.sig)
        if cmd.node_id != self.node_id:
            raise SecurityError("wrong_node", f"command for {cmd.node_id}, this is {self.node_id}")
        now = self._clock()
        if cmd.expires_at <= now:
            raise SecurityError("expired", f"command {cmd.command_id} expired")
        if cmd.issued_at < now - self.max_age:
            raise SecurityError("stale", f"command {cmd.command_id} issued "
                                f"{now - cmd.issued_at:.0f}s ago (> {self.max_age:.0f}s)")
        if cmd.issued_at > now + self.max_skew:
            raise SecurityError("future", f"command {cmd.command_id} issued in the future")
        forget_after = max(cmd.expires_at, cmd.issued_at + self.max_age) + self.max_skew
        with self._lock:
            self._prune(now)
            if cmd.command_id in self._seen:
                raise SecurityError("replay", f"command {cmd.command_id} already seen")
            self._seen[cmd.command_id] = forget_after
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
            self._save()

    verify = __call__

    def _prune(self, now: float) -> None:
        for cid in [c for c, t in self._seen.items() if t < now]:
            del self._seen[cid]

    def _load(self) -> None:
        if self._state_file is None or not self._state_file.exists():
            return
        try:
            data = json.loads(self._state_file.read_text())
            items = sorted(((str(k), float(v)) for k, v in data.items()), key=lambda kv: kv[1])
        except (OSError, ValueError, AttributeError):
            return  # a corrupt file only weakens replay protection inside the window
        self._seen.update(items)
        self._prune(self._clock())

    def _save(self) -> None:
        if self._state_file is None:
            return
        tmp = self._state_file.with_name(self._state_file.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(self._seen), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._state_file)
