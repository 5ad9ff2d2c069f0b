"""The wire form of an outbox event as the event uplink (``edge.sync.uplink``) sends it, and the
batch builder (``next_message``, bound to one lane by ``MessageBuilder``), which never lets one
unencodable record block a claim."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge.clock import Clock
from edge.errors import WireError
from edge.outbox import StoredEvent
from edge.sync.wire import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    EventEnvelope,
    batch_prefix,
    encode,
    envelope_json,
    join_batch,
)
from edge.sync.wire_batch import SIG_MEMBER_BYTES, RawSigner, canonical_batch, sign_batch

__all__ = ["EventSign", "MessageBuilder", "envelope_dict", "envelope_for", "next_message"]

#: Signs one envelope with the node key (``edge.signing.EventSigner``), or a plain callable.
EventSign = Callable[[EventEnvelope], EventEnvelope]


def envelope_for(ev: StoredEvent, clock: Clock, boot_id: str,
                 sign: Callable[[EventEnvelope], EventEnvelope] | None) -> EventEnvelope:
    """Wire form of ``ev``: events recorded ``unsynced`` in this boot are sent on central's time
    line (quality ``corrected``) once an offset is known, placed by their monotonic stamp so a
    wall-clock step in between does not move them (``Clock.anchor``); then signed."""
    env = ev.envelope()
    anchor = clock.anchor()
    if ev.time_quality == "unsynced" and ev.boot_id == boot_id and anchor is not None:
        env = env.model_copy(update={"wall_time": max(0.0, anchor + ev.mono_ns / 1e9),
                                     "time_quality": "corrected"})
    return sign(env) if sign is not None else env


def envelope_dict(ev: StoredEvent, anchor: float | None, boot_id: str) -> dict[str, Any]:
    """The unsigned wire form of ``ev`` as a dict, equal to
    ``envelope_for(ev, clock, boot_id, None).model_dump(mode="json")`` without ``sig`` (built
    directly: the outbox holds validated events, and central validates every envelope anyway).
    ``anchor``: ``clock.anchor()``."""
    wall, quality = max(ev.wall_time, 0.0), ev.time_quality
    if quality == "unsynced" and ev.boot_id == boot_id and anchor is not None:
        wall, quality = max(0.0, anchor + ev.mono_ns / 1e9), "corrected"
    return {"v": 1, "kind": "event", "event_id": ev.event_id, "node_id": ev.node_id,
            "boot_id": ev.boot_id, "seq": ev.seq, "mono_ns": ev.mono_ns, "wall_time": wall,
            "time_quality": quality, "type": ev.type, "priority": ev.priority,
            "incident_id": ev.incident_id, "payload": ev.payload}


def _body(ev: StoredEvent, clock: Clock, boot_id: str, anchor: float | None,
          sign: Callable[[EventEnvelope], EventEnvelope] | None) -> bytes | str:
    """The canonical body of ``ev``, or why it cannot be sent (``oversized``, ``invalid``)."""
    try:
        return (encode(envelope_for(ev, clock, boot_id, sign)) if sign is not None
                else envelope_json(envelope_dict(ev, anchor, boot_id)))
    except WireError as exc:
        return f"{exc.reason}: {exc}"
    except ValueError as exc:  # pydantic's ValidationError, a lone surrogate (UnicodeEncodeError)
        return f"invalid: {type(exc).__name__}: {str(exc)[:200]}"


def next_message(events: list[StoredEvent], start: int, clock: Clock, boot_id: str,
                 sign: Callable[[EventEnvelope], EventEnvelope] | None, prefix: bytes,
                 sign_raw: RawSigner | None = None,
                 unsendable: dict[str, str] | None = None) -> tuple[bytes | None, int]:
    """The next message from ``events[start:]`` and how many events it consumed: as many
    envelopes as fit one batch (``prefix``: ``wire.batch_prefix(node)``; in claim order, so P1s
    first), or a plain envelope when only one fits or is left. With ``sign_raw`` (the node key's
    raw signer) a batch is signed once more as a whole (``wire_batch``: central then verifies one
    signature for it); its envelopes keep their own ``sig`` (evidence per event).

    An event that cannot be encoded (over ``MAX_EVENT_BYTES``, or not a valid envelope: a
    record from before record-time bounding, or a bug) never blocks the others: it is skipped,
    consumed, and reported in ``unsendable`` (event id -> reason; the uplink moves it to the
    outbox's terminal ``rejected_local`` status). The message is None when every event it
    consumed was skipped."""
    anchor = clock.anchor()
    signed = sign is not None and sign_raw is not None
    budget = MAX_BATCH_BYTES - len(prefix) - 2 - (SIG_MEMBER_BYTES if signed else 0)
    bodies: list[bytes] = []
    size = 0
    consumed = 0
    for ev in events[start:start + MAX_BATCH_EVENTS]:
        body = _body(ev, clock, boot_id, anchor, sign)
        if isinstance(body, str):
            if unsendable is not None:
                unsendable[ev.event_id] = body
            consumed += 1
            continue
        if bodies and size + len(body) + 1 > budget:
            break
        bodies.append(body)
        size += len(body) + 1
        consumed += 1
    if not bodies:
        return None, consumed
    if len(bodies) == 1:
        return bodies[0], consumed
    if signed:
        assert sign_raw is not None
        return sign_batch(canonical_batch(events[start].node_id, bodies), sign_raw), consumed
    return join_batch(prefix, bodies), consumed


class MessageBuilder:
    """``next_message`` bound to one lane: its node, clock, boot and signers.

    ``sign_raw`` is the node key's raw signer behind ``sign_event`` (``MessageSigner.sign_raw``):
    batches are then signed once as a whole too (``edge.sync.wire_batch``); a plain callable
    signs envelopes only (old-style batches, still accepted by central), as does
    ``sign_batches=False`` (config ``sync.sign_batches``: for a central not yet updated)."""

    def __init__(self, clock: Clock, boot_id: str, node_id: str, sign_event: EventSign | None, *,
                 sign_batches: bool = True) -> None:
        self.clock = clock
        self.boot_id = boot_id
        self.sign_event = sign_event
        self.prefix = batch_prefix(node_id)
        self.sign_raw: RawSigner | None = (
            getattr(getattr(sign_event, "__self__", None), "sign_raw", None) if sign_batches else None)

    def next(self, events: list[StoredEvent], start: int,
             unsendable: dict[str, str]) -> tuple[bytes | None, int]:
        """The next message from ``events[start:]`` and how many events it consumed; events it
        skipped because they cannot be encoded are added to ``unsendable`` (id -> reason)."""
        return next_message(events, start, self.clock, self.boot_id, self.sign_event, self.prefix,
                            self.sign_raw, unsendable)
