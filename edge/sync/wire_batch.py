"""The signed ``event_batch`` (docs/protocol.md, "Signatures", "One signature per batch").

A post signs a batch ONCE: the top-level ``sig`` of the ``event_batch`` is the node key's
Ed25519 signature over the batch's canonical bytes (``wire.canonical_bytes``: sorted keys,
compact, the top-level ``sig`` left out), which are::

    {"events":[<env 1>,...,<env n>],"kind":"event_batch","node_id":"<node>","v":1}

with every envelope in its own canonical form INCLUDING its own ``sig``: the envelopes keep
their signatures, so what central stores per event (the envelope and its ``sig``) stays
verifiable on its own later, exactly as for a single ``event``, while central checks one Ed25519
signature per message (the batch's) instead of one per envelope. The batch's ``sig`` sits in its
sorted place, between ``node_id`` and ``v``, so the message ends with ``,"sig":"<b64>","v":1}``.

Receiving: :func:`received_batch_signed_bytes` cuts that member out of the RECEIVED bytes when
that is provably the top-level member (else the receiver rebuilds ``canonical_bytes`` of the
parsed object; :func:`batch_canonical_bytes`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from edge.errors import WireError
from edge.sync.wire import MAX_BATCH_BYTES, PROTOCOL_VERSION, canonical_bytes

#: Signs bytes with the node key, returning base64 (``edge.signing.MessageSigner.sign_raw``).
RawSigner = Callable[[bytes], str]

_HEAD = b'{"events":['
_TAIL_V = b',"v":' + str(PROTOCOL_VERSION).encode() + b"}"
_SIG_KEY = b'"sig"'
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]+={0,2}")
#: Bytes a batch signature adds to a batch body: ``,"sig":"`` + 88 base64 characters + ``"``.
SIG_MEMBER_BYTES = len(b',"sig":""') + 88


def canonical_batch(node_id: str, bodies: list[bytes]) -> bytes:
    """The canonical (signed) bytes of a batch of already canonical envelope bodies
    (``wire.envelope_json`` / ``wire.encode``, each with its own ``sig``): equal to
    ``canonical_bytes`` of the batch object, built by joining, without re-encoding."""
    tail = json.dumps({"kind": "event_batch", "node_id": node_id, "v": PROTOCOL_VERSION},
                      separators=(",", ":"), ensure_ascii=False)[1:].encode()
    return _HEAD + b",".join(bodies) + b"]," + tail


def sign_batch(signed: bytes, sign: RawSigner) -> bytes:
    """The message body of a signed batch: ``signed`` (``canonical_batch``) with the top-level
    ``sig`` over it inserted in its sorted place (before ``"v"``). ``oversized`` past
    ``MAX_BATCH_BYTES``."""
    if not signed.endswith(_TAIL_V):
        raise WireError("bad_field", "not a canonical event_batch")
    sig = sign(signed)
    body = signed[:-len(_TAIL_V)] + b',"sig":"' + sig.encode("ascii") + b'"' + _TAIL_V
    if len(body) > MAX_BATCH_BYTES:
        raise WireError("oversized", f"event_batch of {len(body)} bytes > {MAX_BATCH_BYTES}")
    return body


def received_batch_signed_bytes(payload: bytes, sig: str | None, signed_envelopes: int) -> bytes | None:
    """The bytes a batch signature covers, cut from the RECEIVED batch ``payload`` whose parsed
    top-level ``sig`` is ``sig`` and whose parsed ``events`` hold ``signed_envelopes`` objects
    with a ``sig`` key; None when the cut is not provably the top-level member (the receiver then
    verifies ``batch_canonical_bytes`` of the parsed object). Conditions:

    * no backslash anywhere in the payload: every ``"`` is then a string delimiter, so each
      occurrence of the bytes ``"sig"`` is a string token ``sig`` (a key or a value, at any
      depth; ``"x"sig"`` is not JSON), and no key is spelled with escapes;
    * the payload ends with ``,"sig":"<sig>","v":1}`` (``sig`` plain base64). The payload being
      valid JSON, its last ``}`` closes the top-level object; with no backslash the quotes pair
      up in order and the suffix holds an even number of them, so ``"sig"``, ``"<sig>"`` and
      ``"v"`` there are whole string tokens at the top level: the member cut is a top-level one;
    * the payload holds exactly ``signed_envelopes + 1`` tokens ``"sig"``: one per envelope
      ``sig`` key (at depth two) and the cut one, so there is no second top-level ``sig``
      (duplicate keys: JSON parsers keep the last), and no ``sig`` key or value nested anywhere
      else (an envelope's ``payload``), which could otherwise be mistaken for it.

    Cutting one whole top-level member out of valid JSON leaves valid JSON whose parse is the
    received object without its ``sig``: what is verified is exactly what is stored.
    """
    if sig is None or not 0 < len(sig) <= 200 or not _BASE64_TEXT.fullmatch(sig):
        return None
    suffix = b',"sig":"' + sig.encode("ascii") + b'"' + _TAIL_V
    if not payload.endswith(suffix) or b"\\" in payload:
        return None
    if payload.count(_SIG_KEY) != signed_envelopes + 1:
        return None
    return payload[:-len(suffix)] + _TAIL_V


def batch_canonical_bytes(data: dict[str, Any]) -> bytes:
    """The bytes a batch signature covers, rebuilt from the RECEIVED (parsed) batch object: its
    canonical JSON without the top-level ``sig`` (envelopes keep theirs)."""
    return canonical_bytes(data)
