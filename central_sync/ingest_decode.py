"""Decoding of uplink event messages for ingest, keeping what verification and Acks need.

``edge.sync.wire_decode.decode_event_message`` validates; on top of it ``decode_events`` keeps, for
every good envelope, what its signature check needs: for a single envelope in canonical form the
received bytes with the ``sig`` member cut out (no re-encoding at all), else the RECEIVED JSON
object, whose canonical bytes are built only when needed (never from the pydantic model). It
turns envelopes naming another node than their topic's into ``wrong_node`` rejections that carry
the event id, so the topic's node gets a PERMANENT rejection in its Ack and stops resending them
(issue 9 item 3).

``unstorable(value)`` tells whether a decoded value can be held by every store backend: integers
within signed 64 bits, finite floats, text without lone UTF-16 surrogates (JSON's ``\\ud800``
escapes decode to such strings, which UTF-8 databases and our log lines cannot encode).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from edge.errors import WireError
from edge.sync.wire import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES,
    EventEnvelope,
    Topics,
    canonical_bytes,
    received_signed_bytes,
)
from edge.sync.wire_batch import batch_canonical_bytes, received_batch_signed_bytes
from edge.sync.wire_decode import decode_event_message, validate_envelopes

_INT64 = (-(2**63), 2**63 - 1)
#: What the JSON text of an unstorable value must contain: a surrogate escape, a run of 19+
#: digits, NaN/Infinity, or a 3-digit exponent. A body without any is storable as a whole.
#: Searched one by one (``payload_suspect``): one alternation of them all took 40 us on a
#: 440-byte heartbeat, the separate searches 5 us.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_BIG_EXPONENT = re.compile(rb"[eE][+-]?[0-9]{3}")
#: Fields of an envelope besides ``sig``: a received object with all of them is canonical as is.
_FIELDS = len(EventEnvelope.model_fields) - 1


@dataclass(slots=True)
class GoodEnvelope:
    """A valid envelope and what its signature check needs: ``received``, the RECEIVED bytes with
    the ``sig`` member cut out (``edge.sync.wire.received_signed_bytes``; None when the message
    is not in the form that allows it, or is a batch), tried first; ``item``, the received JSON
    object, from which ``canonical()`` rebuilds the signed bytes only when the cut is missing or
    does not verify (an older post's wire form). Not ``frozen`` (one is built per event, and a
    frozen dataclass sets every field through ``object.__setattr__``: 1.2 us against 0.4);
    nothing assigns its fields after construction."""

    env: EventEnvelope
    item: dict[str, Any] | None = None
    received: bytes | None = None

    def canonical(self) -> bytes | None:
        """Canonical bytes of the received object; None: build from the model (the sender omitted
        default fields)."""
        return _canonical(self.item)


@dataclass(frozen=True)
class BadItem:
    event_id: str | None  # set when it can be named in the topic node's Ack
    reason: str
    detail: str
    permanent: bool


@dataclass(frozen=True, slots=True)
class BatchSig:
    """The top-level signature of a signed ``event_batch`` (``edge.sync.wire_batch``) and what it
    covers: ``received``, the RECEIVED bytes with the top-level ``sig`` member cut out (None when
    the cut is not provably safe), tried first; else ``canonical()``, rebuilt from the received
    JSON object."""

    sig: str
    data: dict[str, Any]
    received: bytes | None = None

    def canonical(self) -> bytes:
        return batch_canonical_bytes(self.data)


@dataclass
class DecodedEvents:
    node_id: str
    good: list[GoodEnvelope]
    bad: list[BadItem]
    is_batch: bool
    batch: BatchSig | None = None  # a signed batch: verify this one signature for all of ``good``


def _batch_sig(payload: bytes, data: dict[str, Any], items: list[Any]) -> BatchSig | None:
    sig = data.get("sig")
    if not isinstance(sig, str):
        return None
    signed = sum(1 for item in items if isinstance(item, dict) and "sig" in item)
    return BatchSig(sig, data, received_batch_signed_bytes(payload, sig, signed))


#: Wire reasons of one envelope after which resending the same bytes can never succeed.
PERMANENT_ENVELOPE_REASONS = frozenset({"bad_field", "oversized", "wrong_node", "bad_text", "out_of_range"})


def _items(payload: bytes) -> list[Any]:
    return _parsed_items(payload)[1]


def _parsed_items(payload: bytes) -> tuple[Any, list[Any]]:
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        return None, []
    if isinstance(data, dict) and data.get("kind") == "event_batch":
        items = data.get("events")
        return data, items if isinstance(items, list) else []
    return data, [data]


def _named_id(item: Any) -> str | None:
    event_id = item.get("event_id") if isinstance(item, dict) else None
    if isinstance(event_id, str) and 0 < len(event_id) <= 64 and unstorable(event_id) is None:
        return event_id
    return None


def _canonical(item: dict[str, Any] | None) -> bytes | None:
    if not isinstance(item, dict) or len(item) - ("sig" in item) != _FIELDS:
        return None
    return canonical_bytes(item)


class _Unstorable(ValueError):
    """A number the stores cannot hold, met while parsing (the full path then names it)."""


def _int64(text: str) -> int:
    value = int(text)
    if not _INT64[0] <= value <= _INT64[1]:
        raise _Unstorable(text[:40])
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Unstorable(text[:40])
    return value


def _constant(text: str) -> float:
    raise _Unstorable(text)


#: The fast path's parser: the C scanner, with every number checked as it is parsed (ints within
#: signed 64 bits, finite floats, no NaN/Infinity), so no regex or walk over the body is needed.
_CHECKED = json.JSONDecoder(parse_int=_int64, parse_float=_finite, parse_constant=_constant)


def _fast(node_id: str, payload: bytes) -> DecodedEvents | None:
    """ONE checked JSON parse, then the fast path of its kind (a single envelope or a batch);
    None when anything is off (the full path then says exactly what). The kind is read from the
    parsed object, not guessed from the first bytes: posts send sorted keys, so a batch starts
    with its ``events``. Strict UTF-8 (no encoded surrogates); numbers are range-checked by
    ``_CHECKED``; a lone surrogate can then only come from a ``\\u`` escape, so only a body with
    one is walked."""
    if len(payload) > MAX_BATCH_BYTES:
        return None
    try:
        text = payload.decode("utf-8")
        data = _CHECKED.decode(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError, JSONDecodeError, _Unstorable
        return None
    if type(data) is not dict or data.get("v") != 1 or data.get("node_id") != node_id:
        return None
    kind = data.get("kind")
    if kind == "event":
        return _single_fast(node_id, payload, text, data)
    if kind == "event_batch":
        return _batch_fast(node_id, payload, text, data)
    return None


def _single_fast(node_id: str, payload: bytes, text: str, data: dict[str, Any]) -> DecodedEvents | None:
    """The common case, one well-formed, storable envelope for the topic's node."""
    if len(payload) > MAX_EVENT_BYTES:
        return None
    if "\\u" in text and unstorable(data) is not None:
        return None
    try:
        env = EventEnvelope.model_validate(data)
    except ValidationError:
        return None
    return DecodedEvents(node_id, [GoodEnvelope(env, data, received_signed_bytes(payload, env.sig))], [], False)


#: ``,"sig":`` around the signature in an envelope's compact JSON (``_batch_fast`` sizes).
_SIG_MEMBER = len(',"sig":')


def _member_size(sig: Any) -> int:
    """Bytes of ``,"sig":<value>`` in compact JSON (``ensure_ascii=False``, as the size check)."""
    if type(sig) is str and sig.isascii() and sig.isprintable() and '"' not in sig and "\\" not in sig:
        return _SIG_MEMBER + len(sig) + 2  # base64: nothing to escape
    return _SIG_MEMBER + len(canonical_bytes({"s": sig})) - len('{"s":}')


def _batch_fast(node_id: str, payload: bytes, text: str, data: dict[str, Any]) -> DecodedEvents | None:
    """An ``event_batch`` whose envelopes are all good, with ONE JSON parse (checked numbers, as
    ``_single_fast``) and ONE pydantic call; None when anything is off, and the full path then
    names each bad envelope. The checks are the full path's: batch keys, size and count; every
    envelope's fields and node; each envelope's compact JSON within ``MAX_EVENT_BYTES`` (its
    length is the canonical bytes' plus the ``sig`` member's: same encoder settings, key order
    does not change a length); storable values. The full path parsed the body twice, scanned it
    with regexes (which nearly every batch of hex ids and base64 signatures matched, so it then
    walked every envelope) and encoded every envelope once more to measure it."""
    if len(data) != 4 + ("sig" in data) or not isinstance(data.get("sig", ""), str):
        return None
    items = data.get("events")
    if type(items) is not list or not 0 < len(items) <= MAX_BATCH_EVENTS:
        return None
    if "\\u" in text and unstorable(data) is not None:
        return None
    canonical: list[bytes] = []
    for item in items:
        canon = _canonical(item)
        if canon is None:
            return None
        size = len(canon) + (_member_size(item["sig"]) if "sig" in item else 0)
        if size > MAX_EVENT_BYTES:
            return None
        canonical.append(canon)
    try:
        envs = validate_envelopes(items)
    except ValidationError:
        return None
    if any(env.node_id != node_id for env in envs):
        return None
    # The canonical bytes built for the size check are the bytes to verify first (no second
    # encoding); a mismatch falls back to ``canonical()``, which gives the same bytes, so a
    # forgery still costs one check.
    return DecodedEvents(node_id, [GoodEnvelope(e, item, c) for e, item, c in zip(envs, items, canonical, strict=True)],
                         [], True, _batch_sig(payload, data, items))


def decode_events(topics: Topics, topic: str, payload: bytes, *, node: str | None = None) -> DecodedEvents:
    """Decode one message of an ``event`` topic. A malformed message raises ``WireError``; a whole
    message for another node (single envelope or batch) becomes ``wrong_node`` items. ``node``:
    the topic's node when the caller has parsed ``topic`` already (the dispatcher: one parse)."""
    if node is None:
        node = topics.parse(topic)[1]
    fast = _fast(node, payload)
    if fast is not None:
        return fast
    try:
        node_id, envs, bad, is_batch = decode_event_message(topics, topic, payload)
    except WireError as exc:
        if exc.reason != "wrong_topic":
            raise
        node = topics.parse(topic)[1]
        named = [BadItem(eid, "wrong_node", exc.detail[:200], True)
                 for eid in dict.fromkeys(_named_id(i) for i in _items(payload)) if eid]
        if not named:
            raise
        return DecodedEvents(node, [], named, True)
    data, items = _parsed_items(payload)
    batch = _batch_sig(payload, data, items) if is_batch and isinstance(data, dict) else None
    suspect = payload_suspect(payload)
    bad_index = {b.index for b in bad}
    good_items = [item for i, item in enumerate(items) if i not in bad_index]
    if len(good_items) != len(envs):  # cannot happen for what decode_event_message accepted
        good_items = [None] * len(envs)
    good: list[GoodEnvelope] = []
    out_bad: list[BadItem] = []
    for env, item in zip(envs, good_items, strict=True):
        problem = unstorable(item if item is not None else env.model_dump(mode="python")) if suspect else None
        if problem is not None:
            reason, detail = problem
            out_bad.append(BadItem(_named_id(item) if item is not None else None, reason, detail, True))
            continue
        good.append(GoodEnvelope(env, item if isinstance(item, dict) else None))
    for b in bad:
        if b.reason == "wrong_topic":
            item = items[b.index] if b.index < len(items) else None
            out_bad.append(BadItem(_named_id(item), "wrong_node", b.detail, True))
        else:
            out_bad.append(BadItem(b.event_id if b.event_id and unstorable(b.event_id) is None else None,
                                   b.reason, f"events[{b.index}]: {b.detail}",
                                   b.reason in PERMANENT_ENVELOPE_REASONS))
    return DecodedEvents(node_id, good, out_bad, is_batch, batch)


def payload_suspect(payload: bytes) -> bool:
    """False when the JSON text cannot hold an unstorable value (fast pre-check of ``unstorable``):
    no suspect escape or number, and strict UTF-8 (``json.loads`` decodes bytes with
    ``surrogatepass``, so a surrogate encoded as raw bytes would become a lone surrogate)."""
    if (b"NaN" in payload or b"Infinity" in payload or _SURROGATE_ESCAPE.search(payload) is not None
            or _LONG_DIGITS.search(payload) is not None or _BIG_EXPONENT.search(payload) is not None):
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def unstorable(value: Any) -> tuple[str, str] | None:
    """(reason, detail) when ``value`` holds something no store backend can keep, else None.
    Iterative, so a deeply nested value cannot exhaust the stack."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return "bad_text", "text with a lone UTF-16 surrogate"
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, int):
            if not _INT64[0] <= v <= _INT64[1]:
                return "out_of_range", "integer outside the signed 64-bit range"
        elif isinstance(v, float):
            if not math.isfinite(v):
                return "out_of_range", "number that is not finite"
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return None
