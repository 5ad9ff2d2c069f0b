"""Wire protocol shared by the edge node and central (documented in docs/protocol.md).

Topic tree under a prefix (default ``kentongan/v1``)::

    {prefix}/up/{node_id}/event        node -> central   QoS 1   one event envelope or a batch
    {prefix}/up/{node_id}/event/p1     node -> central   QoS 1   P1 (alarm) events only: central's
                                                                priority lane (docs/protocol.md)
    {prefix}/up/{node_id}/snapshot     node -> central   QoS 1   one snapshot (own lane)
    {prefix}/up/{node_id}/presence     node -> central   QoS 1   retained birth / last will
    {prefix}/up/{node_id}/heartbeat    node -> central   QoS 0   periodic status
    {prefix}/up/{node_id}/cmd_result   node -> central   QoS 1   answer to a command
    {prefix}/down/{node_id}/ack        central -> node   QoS 1   end-to-end acknowledgement
    {prefix}/down/{node_id}/cmd        central -> node   QoS 1   command (signed)
    {prefix}/central/state/{central_id}  central -> all  QoS 1   retained online/offline (Sparkplug-style
                                                                STATE; the offline one is the last will)

Every message body is one JSON object with ``"v"`` (protocol major version) and ``"kind"``. An
unknown ``v`` is rejected with reason ``unknown_version``; unknown keys are rejected too
(``bad_field``), because the canonical form is what signatures cover. ``sig`` (base64 Ed25519
over ``signed_bytes``: ``canonical_bytes``, with a snapshot's content replaced by its SHA-256) is
the only field not covered by the signature. Every uplink kind a post sends (event, snapshot,
presence, heartbeat, command result) carries the node key's ``sig``; central drops what is
unsigned, badly signed, or from an unknown or revoked node (docs/protocol.md, "Signatures").

An ``event_batch`` (``EventBatch``) carries up to ``MAX_BATCH_EVENTS`` envelopes in at most
``MAX_BATCH_BYTES``; every envelope inside keeps its own fields, limits and ``sig`` and is
validated, de-duplicated and acknowledged (or rejected) on its own. A batch may carry its own
top-level ``sig`` over the whole batch (``edge.sync.wire_batch``): central then verifies that one
signature instead of one per envelope; without it, every envelope's ``sig`` is verified.

Receiving (parse, check against the topic, validate): ``edge.sync.wire_decode``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.errors import WireError
from edge.sync.json_encoding import c_json_encoder

PROTOCOL_VERSION = 1
DEFAULT_PREFIX = "kentongan/v1"

MAX_EVENT_BYTES = 16 * 1024
MAX_SNAPSHOT_BYTES = 1024 * 1024
MAX_CONTROL_BYTES = 64 * 1024
#: An ``event_batch`` message: at most this many envelopes and bytes (the node packs up to both).
MAX_BATCH_EVENTS = 500
MAX_BATCH_BYTES = 64 * 1024
#: Broker-side limit (message_size_limit) must be at least this.
MAX_MESSAGE_BYTES = MAX_SNAPSHOT_BYTES + 64 * 1024
#: What central's store holds in a payload (``central_sync/store/checks.py``; the post sanitises
#: at record time, ``edge/outbox/sanitise.py``): nesting (payload = 0) and signed 64-bit integers.
MAX_PAYLOAD_DEPTH = 32
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: The P1 channel: the same envelopes as ``event`` (priority 1 only), consumed by central on its
#: own connection so an alarm never queues behind a backlog (``{prefix}/up/{node}/event/p1``).
P1_CHANNEL = "event/p1"
UP_CHANNELS = ("event", "snapshot", "presence", "heartbeat", "cmd_result", P1_CHANNEL)
#: Channels that carry event envelopes (``decode_event_message``).
EVENT_CHANNELS = ("event", P1_CHANNEL)
DOWN_CHANNELS = ("ack", "cmd")

NodeId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{2,62}$")]
TimeQuality = Literal["synced", "unsynced", "corrected", "rtc"]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    sig: str | None = Field(None, max_length=200, description="base64 Ed25519 signature")


class EventEnvelope(_Msg):
    """One event from a node. ``event_id`` (UUIDv7) is the de-duplication key at central."""

    kind: Literal["event"] = "event"
    event_id: str = Field(min_length=16, max_length=64)
    node_id: NodeId
    boot_id: str = Field(min_length=1, max_length=64)
    seq: int = Field(ge=0)
    mono_ns: int = Field(ge=0)
    wall_time: float = Field(ge=0)
    time_quality: TimeQuality
    type: str = Field(min_length=1, max_length=40, pattern=r"^[A-Z0-9_]+$")
    priority: int = Field(ge=1, le=4)
    incident_id: str | None = Field(None, max_length=64)
    payload: dict[str, Any] = Field(default_factory=dict)


class EventBatch(BaseModel):
    """Several event envelopes in one message, each with its own ``sig``; ``sig`` (optional): the
    node's signature over the whole batch (``edge.sync.wire_batch``). Receivers validate the
    envelopes one by one (``wire_decode.decode_event_message``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    sig: str | None = Field(None, max_length=200, description="base64 Ed25519 over the batch")
    kind: Literal["event_batch"] = "event_batch"
    node_id: NodeId
    events: list[EventEnvelope] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


class SnapshotEnvelope(_Msg):
    """A camera snapshot; ``data`` is base64 (sealed to central when ``sealed``)."""

    kind: Literal["snapshot"] = "snapshot"
    snapshot_id: str = Field(min_length=16, max_length=64)
    event_id: str | None = Field(None, max_length=64)
    node_id: NodeId
    taken_at: float = Field(ge=0)
    content_type: str = Field("image/jpeg", max_length=60)
    sealed: bool = False
    data: str = Field(max_length=MAX_SNAPSHOT_BYTES)


class Presence(_Msg):
    kind: Literal["presence"] = "presence"
    node_id: NodeId
    state: Literal["online", "offline"]
    boot_id: str | None = Field(None, max_length=64)
    version: str | None = Field(None, max_length=40)
    at: float | None = None
    kelurahan_code: str | None = Field(None, max_length=20)
    rw: int | None = None
    rt: int | None = None
    display_name: str | None = Field(None, max_length=120)


class Heartbeat(_Msg):
    kind: Literal["heartbeat"] = "heartbeat"
    node_id: NodeId
    boot_id: str = Field(max_length=64)
    at: float
    version: str = Field(max_length=40)
    time_quality: TimeQuality
    clock_offset: float | None = None
    outbox: dict[str, int] = Field(default_factory=dict)
    siren: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    event_id: str = Field(max_length=64)
    reason: str = Field(max_length=200)


class Ack(_Msg):
    """Central's end-to-end acknowledgement: these events are committed in central's database."""

    kind: Literal["ack"] = "ack"
    node_id: NodeId
    event_ids: list[str] = Field(default_factory=list, max_length=5000)
    snapshot_ids: list[str] = Field(default_factory=list, max_length=1000)
    rejected: list[Rejection] = Field(default_factory=list, max_length=5000)
    central_time: float


class CentralState(_Msg):
    """Central's presence, Sparkplug B "primary host STATE" style: each central ingest process
    publishes ``online`` retained on ``{prefix}/central/state/{central_id}`` right after it has
    subscribed, and registers the same topic with ``offline`` as its retained last will. A post
    treats central as present while at least one ``central_id`` reads ``online`` (several ingest
    processes share one shared-subscription group). ``at`` is central's wall clock when the state
    was written (for the will: when the session was opened)."""

    kind: Literal["central_state"] = "central_state"
    central_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    state: Literal["online", "offline"]
    at: float = Field(ge=0)


CommandAction = Literal["sound", "stop", "test", "snapshot", "status", "incident_ack", "config"]


class Command(_Msg):
    """A downlink command. Signed by central's command key (see docs/security.md)."""

    kind: Literal["command"] = "command"
    command_id: str = Field(min_length=8, max_length=64)
    node_id: NodeId
    action: CommandAction
    params: dict[str, Any] = Field(default_factory=dict)
    issued_at: float
    expires_at: float
    issuer: str = Field("central", max_length=80)


class CommandResult(_Msg):
    kind: Literal["command_result"] = "command_result"
    command_id: str = Field(max_length=64)
    node_id: NodeId
    ok: bool
    detail: str = Field("", max_length=500)
    at: float
    data: dict[str, Any] = Field(default_factory=dict)


Message = (EventEnvelope | EventBatch | SnapshotEnvelope | Presence | Heartbeat | Ack | Command | CommandResult
           | CentralState)

KINDS: dict[str, type[BaseModel]] = {
    "event": EventEnvelope,
    "event_batch": EventBatch,
    "snapshot": SnapshotEnvelope,
    "presence": Presence,
    "heartbeat": Heartbeat,
    "ack": Ack,
    "command": Command,
    "command_result": CommandResult,
    "central_state": CentralState,
}
#: Which kind may travel on which channel.
CHANNEL_KIND = {
    "event": "event",
    "snapshot": "snapshot",
    "presence": "presence",
    "heartbeat": "heartbeat",
    "cmd_result": "command_result",
    P1_CHANNEL: "event",
    "ack": "ack",
    "cmd": "command",
}
#: Kinds also accepted on a channel besides ``CHANNEL_KIND[channel]``.
CHANNEL_EXTRA_KINDS = {"event": ("event_batch",), P1_CHANNEL: ("event_batch",)}
KIND_LIMITS = {"snapshot": MAX_SNAPSHOT_BYTES + 8 * 1024, "event": MAX_EVENT_BYTES,
           "event_batch": MAX_BATCH_BYTES}


class Topics:
    """Topic names for one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix.rstrip("/")

    def up(self, node_id: str, channel: str) -> str:
        assert channel in UP_CHANNELS, channel
        return f"{self.prefix}/up/{node_id}/{channel}"

    def down(self, node_id: str, channel: str) -> str:
        assert channel in DOWN_CHANNELS, channel
        return f"{self.prefix}/down/{node_id}/{channel}"

    def up_wildcard(self, channel: str = "+") -> str:
        return f"{self.prefix}/up/+/{channel}"

    def up_tree(self) -> str:
        """Every uplink topic (``{prefix}/up/#``)."""
        return f"{self.prefix}/up/#"

    def central_state(self, central_id: str = "+") -> str:
        """Retained central presence of one ingest process (``+``: the filter for all of them)."""
        return f"{self.prefix}/central/state/{central_id}"

    def parse_central_state(self, topic: str) -> str:
        """The ``central_id`` of a central state topic; ``WireError('wrong_topic')`` otherwise."""
        head = f"{self.prefix}/central/state/"
        central_id = topic[len(head):] if topic.startswith(head) else ""
        if not central_id or "/" in central_id:
            raise WireError("wrong_topic", topic[:120])
        return central_id

    def parse(self, topic: str) -> tuple[str, str, str]:
        """Split ``{prefix}/{up|down}/{node}/{channel}``; ``WireError('wrong_topic')`` otherwise.
        (The channel may have two levels: ``event/p1``.)"""
        if not topic.startswith(self.prefix + "/"):
            raise WireError("wrong_topic", topic)
        parts = topic[len(self.prefix) + 1:].split("/", 2)
        if len(parts) != 3 or parts[0] not in ("up", "down"):
            raise WireError("wrong_topic", topic)
        direction, node_id, channel = parts
        allowed = UP_CHANNELS if direction == "up" else DOWN_CHANNELS
        if channel not in allowed or not node_id:
            raise WireError("wrong_topic", topic)
        return direction, node_id, channel


#: ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` without building
#: an encoder per call (central computes this for every received event).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


#: ``canonical_text``: the encoder of ``_CANONICAL``'s settings (sorted keys, compact, UTF-8).
_CANONICAL_C = c_json_encoder(sort_keys=True, item_sep=",", key_sep=":", ascii_only=False)
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def canonical_text(data: dict[str, Any]) -> str:
    """``json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``."""
    return _CANONICAL_C(data)


def canonical_bytes(msg: BaseModel | dict[str, Any]) -> bytes:
    """The exact bytes a signature covers: the message without ``sig``, sorted keys, compact."""
    data = msg.model_dump(mode="json") if isinstance(msg, BaseModel) else dict(msg)
    data.pop("sig", None)
    return canonical_text(data).encode()


#: A ``sig`` member in canonical form starts with this; the member after it is the message's next
#: key in sorted order (an event envelope's: ``seq``, ``sig``, ``time_quality``); the cut is tried
#: only there.
_SIG_MEMBER = b',"sig":"'
_AFTER_SIG = b'","time_quality":'


def sig_successor(model: type[BaseModel]) -> bytes:
    """What follows the ``sig`` member's value in ``model``'s canonical form (the next key in
    sorted order; ``encode`` writes every field): the ``after`` of :func:`received_signed_bytes`."""
    keys = sorted(model.model_fields)
    return b'","' + keys[keys.index("sig") + 1].encode("ascii") + b'":'


def received_signed_bytes(payload: bytes, sig: str | None, after: bytes = _AFTER_SIG) -> bytes | None:
    """The bytes a message's signature covers, cut from the RECEIVED message ``payload`` whose
    parsed top-level ``sig`` is ``sig``: the payload without the exact member ``,"sig":"<sig>"``;
    None when the payload is not in the form that allows the cut (then the receiver re-encodes,
    ``canonical_bytes``). ``after``: the bytes that follow the member in canonical form (an event
    envelope's by default; :func:`sig_successor` for another kind). Conditions
    (docs/protocol.md, "Signatures"):

    * no ``\\u`` anywhere, so every key is written as itself: a top-level key ``sig`` can only be
      the raw text ``"sig"``;
    * ``"sig"`` occurs exactly once in the payload, so that occurrence IS the top-level key (not
      a member nested in ``payload``, nor a second ``sig``, nor a string value);
    * it is written ``,"sig":"<sig>",`` followed by the next key (its sorted place, ``after``),
      and ``sig`` is plain base64, so the member spans exactly those bytes.

    Cutting one whole top-level member out of valid JSON leaves valid JSON whose parse is the
    received object without ``sig``: what is verified is exactly what is stored.
    """
    if sig is None or not 0 < len(sig) <= 200 or not _BASE64_TEXT.fullmatch(sig):
        return None
    if b"\\u" in payload or payload.count(b'"sig"') != 1:
        return None
    start = payload.find(_SIG_MEMBER)
    if start < 0:
        return None
    end = start + len(_SIG_MEMBER) + len(sig)
    if payload[start + len(_SIG_MEMBER):end] != sig.encode("ascii") or not payload.startswith(after, end):
        return None
    return payload[:start] + payload[end + 1:]


def signed_bytes(msg: BaseModel | dict[str, Any]) -> bytes:
    """The bytes a post's signature covers, for every uplink kind (docs/protocol.md, "Signatures").

    ``canonical_bytes`` of the message, except for a ``snapshot``: its ``data`` (base64) is
    replaced by ``data_sha256``, the hex SHA-256 of the content bytes as sent (the sealed box when
    ``sealed``), so the signature covers the metadata and the content without a second copy of a
    megabyte in the signed text. ``kind`` and ``node_id`` are inside every signed form, so a
    signature of one kind or one node never verifies as another. ``WireError('bad_field')`` when
    a snapshot's ``data`` is not base64.
    """
    data = msg.model_dump(mode="json") if isinstance(msg, BaseModel) else dict(msg)
    if data.get("kind") == "snapshot" and "data" in data:
        content = data.pop("data")
        if not isinstance(content, str):
            raise WireError("bad_field", "data: not a base64 string")
        data["data_sha256"] = hashlib.sha256(unb64(content)).hexdigest()
    return canonical_bytes(data)


def encode(msg: BaseModel) -> bytes:
    """Serialise a message (including ``sig`` when set) for publishing, in canonical form: sorted
    keys, compact, so the bytes are ``canonical_bytes(msg)`` with the ``sig`` member in its sorted
    place, and central can check an event's signature over the received bytes with that member cut
    out (:func:`received_signed_bytes`) instead of re-encoding the message."""
    data = msg.model_dump(mode="json", exclude_none=False)
    if data.get("sig") is None:
        data.pop("sig", None)
    body = _CANONICAL.encode(data).encode()
    limit = KIND_LIMITS.get(data["kind"], MAX_CONTROL_BYTES)
    if len(body) > limit:
        raise WireError("oversized", f"{data['kind']} of {len(body)} bytes > {limit}")
    return body


def envelope_json(data: dict[str, Any]) -> bytes:
    """Canonical JSON of one envelope dict (as :func:`encode` writes it: sorted keys, compact, a
    ``sig`` in its sorted place); ``oversized`` past the single-event limit."""
    body = _CANONICAL.encode(data).encode()
    if len(body) > MAX_EVENT_BYTES:
        raise WireError("oversized", f"event of {len(body)} bytes > {MAX_EVENT_BYTES}")
    return body


def batch_prefix(node_id: str) -> bytes:
    """Bytes before the first envelope of an ``event_batch`` body (see :func:`join_batch`)."""
    return json.dumps({"v": PROTOCOL_VERSION, "kind": "event_batch", "node_id": node_id},
                      separators=(",", ":"))[:-1].encode() + b',"events":['


def join_batch(prefix: bytes, bodies: list[bytes]) -> bytes:
    """An ``event_batch`` body from already-encoded envelopes (``envelope_json``): equal to
    ``encode(EventBatch(...))`` up to key order, without re-validating."""
    return prefix + b",".join(bodies) + b"]}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise WireError("bad_field", f"base64: {exc}") from None
