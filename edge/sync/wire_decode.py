"""Receiving the wire protocol (``edge.sync.wire``): parse one message body, check it against
its topic (channel, node id) and validate it, raising ``WireError`` with a reason code. Shared
by the post (commands, acks, central state) and central (everything a post sends); the protocol
itself (messages, topics, limits, signed bytes) is in ``wire``; docs/protocol.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from edge.errors import WireError
from edge.sync.wire import (
    CHANNEL_EXTRA_KINDS,
    CHANNEL_KIND,
    EVENT_CHANNELS,
    KIND_LIMITS,
    KINDS,
    MAX_BATCH_EVENTS,
    MAX_CONTROL_BYTES,
    MAX_EVENT_BYTES,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    EventBatch,
    EventEnvelope,
    Message,
    Topics,
)


def decode(payload: bytes | bytearray | str, expected_kind: str | tuple[str, ...] | None = None) -> Message:
    """Parse and validate one message body; raise ``WireError`` with a reason code.

    Reasons: ``oversized``, ``not_json``, ``not_object``, ``unknown_version``, ``unknown_kind``,
    ``wrong_kind``, ``bad_field``. An ``event_batch`` validated here is all-or-nothing; receivers
    that must keep the good envelopes of a batch use :func:`decode_event_message`.
    """
    kind, data, _raw = _parse(payload, expected_kind)
    try:
        return KINDS[kind].model_validate(data)  # type: ignore[return-value]
    except ValidationError as exc:
        raise WireError("bad_field", _first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}"[:200]


def _parse(payload: bytes | bytearray | str,
           expected_kind: str | tuple[str, ...] | None) -> tuple[str, dict[str, Any], bytes]:
    """JSON-parse and check size, version and kind; return (kind, data, raw bytes)."""
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    if len(raw) > MAX_MESSAGE_BYTES:
        raise WireError("oversized", f"{len(raw)} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError("not_json", str(exc)[:120]) from None
    except RecursionError:  # "[[[[..." deeper than the parser's stack: not a message either
        raise WireError("not_json", "nested too deeply") from None
    if not isinstance(data, dict):
        raise WireError("not_object", type(data).__name__)
    version = data.get("v")
    if version != PROTOCOL_VERSION:
        raise WireError("unknown_version", repr(version)[:40])
    kind = data.get("kind")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError("unknown_kind", repr(kind)[:40])
    expected = (expected_kind,) if isinstance(expected_kind, str) else expected_kind
    if expected is not None and kind not in expected:
        raise WireError("wrong_kind", f"{kind} where {'/'.join(expected)} expected")
    limit = KIND_LIMITS.get(kind, MAX_CONTROL_BYTES)  # type: ignore[arg-type]
    if len(raw) > limit:
        raise WireError("oversized", f"{kind} of {len(raw)} bytes > {limit}")
    return kind, data, raw  # type: ignore[return-value]


def _channel_kinds(channel: str) -> tuple[str, ...]:
    return (CHANNEL_KIND[channel], *CHANNEL_EXTRA_KINDS.get(channel, ()))


def decode_on_topic(topics: Topics, topic: str, payload: bytes) -> tuple[str, Message]:
    """Decode a message and check it fits its topic (channel and node id); return (node_id, msg)."""
    node_id, msg, _data = decode_on_topic_data(topics, topic, payload)
    return node_id, msg


def decode_on_topic_data(topics: Topics, topic: str,
                         payload: bytes) -> tuple[str, Message, dict[str, Any]]:
    """``decode_on_topic`` that also returns the RECEIVED JSON object, over which a receiver
    checks the signature (``signed_bytes(data)``), as central does for events."""
    _direction, node_id, channel = topics.parse(topic)
    kind, data, _raw = _parse(payload, _channel_kinds(channel))
    try:
        msg: Message = KINDS[kind].model_validate(data)  # type: ignore[assignment]
    except ValidationError as exc:
        raise WireError("bad_field", _first_error(exc)) from None
    if getattr(msg, "node_id", node_id) != node_id:
        raise WireError("wrong_topic", f"node_id {getattr(msg, 'node_id', '?')} on {topic}")
    if isinstance(msg, EventBatch):
        bad = next((e.node_id for e in msg.events if e.node_id != node_id), None)
        if bad is not None:
            raise WireError("wrong_topic", f"node_id {bad} in a batch on {topic}")
    return node_id, msg, data


_ENVELOPES: TypeAdapter[list[EventEnvelope]] = TypeAdapter(list[EventEnvelope])


def validate_envelopes(items: list[Any]) -> list[EventEnvelope]:
    """All of ``items`` as envelopes in one pydantic call (the batch fast path; the single-event
    field rules). ``ValidationError`` when any one fails: the caller then validates them one by
    one (:func:`decode_event_message`) to name the bad ones."""
    return _ENVELOPES.validate_python(items)


@dataclass(frozen=True)
class BadEnvelope:
    """One envelope of a batch that failed validation. ``event_id`` is set only when the item
    names a plausible event id and the topic's node, so a rejection can be acknowledged."""

    index: int
    event_id: str | None
    reason: str
    detail: str


def decode_event_message(topics: Topics, topic: str,
                         payload: bytes) -> tuple[str, list[EventEnvelope], list[BadEnvelope], bool]:
    """Decode what arrives on an ``event`` topic: one envelope or an ``event_batch``.

    Returns (node_id, good envelopes, bad envelopes, whether it was a batch). The batch itself (size, version, kind,
    ``node_id``, ``events`` a list of 1..``MAX_BATCH_EVENTS`` objects, no other keys) must be
    well formed, else ``WireError`` (reasons as :func:`decode`, plus ``bad_batch``). Each envelope
    is then validated on its own with the single-event rules (fields, 16 KiB, node id = topic's):
    one bad envelope does not spoil the rest. A single envelope raises ``WireError`` as before.
    """
    _direction, node_id, channel = topics.parse(topic)
    if channel not in EVENT_CHANNELS:
        raise WireError("wrong_kind", f"{channel} is not an event channel")
    kind, data, raw = _parse(payload, _channel_kinds(channel))
    if kind == "event":
        try:
            env = EventEnvelope.model_validate(data)
        except ValidationError as exc:
            raise WireError("bad_field", _first_error(exc)) from None
        if env.node_id != node_id:
            raise WireError("wrong_topic", f"node_id {env.node_id} on {topic}")
        return node_id, [env], [], False
    extra = set(data) - {"v", "kind", "node_id", "events", "sig"}
    if extra:
        raise WireError("bad_field", f"unknown batch keys {sorted(extra)[:3]}"[:200])
    sig = data.get("sig")
    if sig is not None and (not isinstance(sig, str) or not 0 < len(sig) <= 200):
        raise WireError("bad_field", "sig: the batch signature must be a base64 string")
    if data.get("node_id") != node_id:
        raise WireError("wrong_topic", f"batch node_id {str(data.get('node_id'))[:64]} on {topic}")
    items = data.get("events")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_BATCH_EVENTS:
        raise WireError("bad_batch", f"events must be a list of 1..{MAX_BATCH_EVENTS} envelopes")
    if not all(isinstance(item, dict) for item in items):
        raise WireError("bad_batch", "events must hold JSON objects")
    bad: list[BadEnvelope] = []
    if len(raw) > MAX_EVENT_BYTES:  # only then can one envelope exceed the single-event limit
        keep = []
        for i, item in enumerate(items):
            size = len(json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode())
            if size > MAX_EVENT_BYTES:
                bad.append(BadEnvelope(i, _item_event_id(item, node_id), "oversized",
                                       f"event of {size} bytes > {MAX_EVENT_BYTES}"))
            else:
                keep.append((i, item))
    else:
        keep = list(enumerate(items))
    try:  # fast path: the whole batch in one call
        envs = _ENVELOPES.validate_python([item for _i, item in keep])
        good = list(zip((i for i, _item in keep), envs, strict=True))
    except ValidationError:
        good = []
        for i, item in keep:
            try:
                good.append((i, EventEnvelope.model_validate(item)))
            except ValidationError as exc:
                bad.append(BadEnvelope(i, _item_event_id(item, node_id), "bad_field",
                                       _first_error(exc)))
    out: list[EventEnvelope] = []
    for i, env in good:
        if env.node_id != node_id:
            bad.append(BadEnvelope(i, None, "wrong_topic", f"node_id {env.node_id} on {topic}"))
        else:
            out.append(env)
    bad.sort(key=lambda b: b.index)
    return node_id, out, bad, True


def _item_event_id(item: dict[str, Any], topic_node: str) -> str | None:
    event_id = item.get("event_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 64 or item.get("node_id") != topic_node:
        return None
    return event_id
