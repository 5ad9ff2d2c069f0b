"""Authentication of every non-event message from a post (issue 10 item 2), before dispatch.

Events are checked per envelope in the commit batch (``central_sync.verify_cache``). Snapshots,
presence, heartbeats and command results are checked HERE, by ``MessageAuth.check``, as soon as
they are decoded and before ingest queues them, so nothing of an unknown or revoked node is
stored or applied. The check, in this order, raises ``edge.errors.SecurityError``:

* ``unknown_node``: the topic's node is not in the enrolment registry (a certificate the CA
  issued, but no registry row: e.g. a half-done enrolment, or a registry restored from backup);
* ``revoked``: the registry says the node is revoked (the broker session may still be open:
  the broker cuts it within seconds, but whatever it publishes meanwhile is dropped here);
* ``unsigned``: no ``sig`` (accepted only with ``pki.accept_unsigned_status``, a transition
  setting for posts that sign events only; the registry check above applies regardless);
* ``bad_signature``: ``sig`` is not the node key's signature of ``edge.sync.wire.signed_bytes``
  over the RECEIVED JSON object (for a snapshot: its metadata plus the SHA-256 of the content
  bytes as sent). ``node_id`` and ``kind`` are inside the signed bytes and the node id must equal
  the topic's (``decode_on_topic``), so a message signed by one post never passes as another's.

Keys come from the same ``KeyCache`` as the event check. ``check`` runs on ingest's event loop
and only READS the cache: it never calls ``refresh`` (no registry generation check or preload on
the loop thread); ingest refreshes the cache off the loop (``verify_cache.keep_fresh`` every
``check_every_s``, and the commit thread per batch), swapping in a new key map when the registry
changed. So a ``kentongan-central revoke`` run in another process bites here within
``check_every_s`` plus one preload: about 1-2 s. A node missing from the map (enrolled after the
last refresh, or not enrolled) is looked up singly, once per map.

Replays: a signed message cannot pass as another node's (above), and only the node itself (or
the broker, for its last will) can publish on its topics (broker ACL). A replayed copy of the
node's OWN earlier presence or heartbeat is an old statement of that node about itself (it
carries its ``at``); a snapshot or command result is stored once by its id.
"""

from __future__ import annotations

from typing import Any

from central_sync.verify_cache import KeyCache
from edge.errors import SecurityError, WireError
from edge.signing import verify_bytes
from edge.sync.wire import CommandResult, Heartbeat, Presence, received_signed_bytes, sig_successor, signed_bytes

#: Kinds whose signed bytes may be cut from the received payload (every kind but a snapshot,
#: whose signed form replaces its data by a digest), with what follows their ``sig`` member.
_CUT_AFTER: dict[object, bytes] = {model.model_fields["kind"].default: sig_successor(model)
                                   for model in (Heartbeat, Presence, CommandResult)}


class MessageAuth:
    """``check(node_id, data)``: None when the message may be dispatched, else ``SecurityError``.

    Counters (``checked``, ``rejected`` by reason) are for tests and the benchmark; ingest counts
    rejections itself through its aggregated rejection path."""

    def __init__(self, keys: KeyCache, *, require_signed: bool = True) -> None:
        self.keys = keys
        self.require_signed = require_signed
        self.checked = 0
        self.rejected: dict[str, int] = {}

    def check(self, node_id: str, data: dict[str, Any], payload: bytes | None = None) -> None:
        """Check one decoded uplink message (``data``: the received JSON object, ``sig`` included)
        published on ``node_id``'s topic. ``payload``: the bytes ``data`` was parsed from (the
        caller's guarantee), for a check over them with the ``sig`` member cut out."""
        self.checked += 1
        try:
            self._check(node_id, data, payload)
        except SecurityError as exc:
            self.rejected[exc.reason] = self.rejected.get(exc.reason, 0) + 1
            raise

    __call__ = check

    def _check(self, node_id: str, data: dict[str, Any], payload: bytes | None) -> None:
        node = self.keys.get(node_id)
        if node is None:
            raise SecurityError("unknown_node", f"{node_id} is not enrolled")
        if node.status != "enrolled":
            raise SecurityError("revoked", f"{node_id} is {node.status}")
        sig = data.get("sig")
        if sig is None:
            if self.require_signed:
                raise SecurityError("unsigned", f"{data.get('kind')} from {node_id} carries no signature")
            return
        if not isinstance(sig, str):  # decode already refused it; kept for direct callers
            raise SecurityError("bad_signature", "signature is not a string")
        cut: bytes | None = None
        if payload is not None and (after := _CUT_AFTER.get(data.get("kind"))) is not None:
            cut = received_signed_bytes(payload, sig, after)
        if cut is not None:
            # The received bytes without the ``sig`` member (no re-encoding: a heartbeat's took
            # ~24 us); re-encoded only when they do not verify (an older post's wire form), and a
            # forgery in canonical form still costs one check.
            try:
                verify_bytes(node.public_key, cut, sig)
                return
            except SecurityError:
                pass
        try:
            body = signed_bytes(data)
        except WireError as exc:  # a snapshot whose data is not base64 was signed by no one
            raise SecurityError("bad_signature", f"unsignable {data.get('kind')}: {exc.detail}") from None
        if body == cut:
            raise SecurityError("bad_signature", "signature does not verify")
        verify_bytes(node.public_key, body, sig)
