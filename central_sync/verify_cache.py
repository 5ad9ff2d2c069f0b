"""Event signature verification with a per-node key cache (central side).

``edge.signing.EventVerifier`` looks the node up (one registry SELECT and one PEM parse) for
every event; at city scale that was 28 % of central's CPU. ``CachedEventVerifier`` keeps the
parsed ``NodeKey`` (or "unknown") per node in a bounded LRU and drops the whole cache when the
registry's *generation* changes: ``generation()`` is a cheap token (for the SQLite registry: row
count and latest enrol/revoke time) read at most every ``check_every_s`` seconds by
``refresh()``, which ingest calls once per commit batch. So a ``kentongan-central revoke`` run in
another process bites within ``check_every_s`` (default 1 s).

``verify(env, canonical, received)`` checks status and signature: first over ``received``, the
RECEIVED bytes with the ``sig`` member cut out (``edge.sync.wire.received_signed_bytes``: no
re-encoding at all), then, when there is no such cut or it does not verify, over the canonical
bytes of the RECEIVED JSON object (``canonical()``, built only then; never from the pydantic
model unless the sender omitted default fields). Replay detection is
the same as ``EventVerifier``'s (a bounded digest log: the identical envelope again is a
duplicate, a different one reusing an event id is ``replay``).

``verify_batch(node_id, batch, envs)`` checks a SIGNED ``event_batch`` (``edge.sync.wire_batch``)
with ONE Ed25519 verification: node status, the batch signature (over the received bytes with the
top-level ``sig`` cut, else the rebuilt canonical bytes; a resent batch costs a hash), then ONE
envelope signature picked at random (a spot check that the per-envelope signatures central stores
as evidence are genuine: a post that sends bad ones is caught, its batch refused whole; not
repeated for a resend of a verified batch), then per
envelope ``unsigned`` (an envelope of a signed batch must keep its own ``sig``) and the replay
digest, the same digest as a single ``event`` of the same envelope gets.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from central_sync.ingest_decode import BatchSig, GoodEnvelope
from edge.errors import SecurityError
from edge.signing import DigestLog, EventVerifier, MemoryDigestLog, NodeKey
from edge.sync.wire import canonical_bytes

_UNKNOWN = object()


class KeyCache:
    """Bounded LRU of ``lookup(node_id)`` results, invalidated when ``generation()`` changes.

    ``preload(limit)``, when given, returns up to ``limit`` registered nodes' keys in one query;
    the cache is then filled with them whenever it is (re)started: at the first ``refresh`` or
    ``get`` and after every invalidation. Without it, a worker that starts as 1,000 posts
    reconnect made 1,000 registry round trips and PEM parses (9 % of an ingest worker's samples
    in a profile of the mass reconnect); a node enrolled after the preload is looked up singly."""

    def __init__(self, lookup: Callable[[str], NodeKey | None], generation: Callable[[], Hashable],
                 *, capacity: int = 50_000, check_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 preload: Callable[[int], list[NodeKey]] | None = None) -> None:
        self._lookup = lookup
        self._generation = generation
        self._preload = preload
        self.preloaded = 0
        self.capacity = capacity
        self.check_every_s = check_every_s
        self._clock = clock
        self._keys: OrderedDict[str, object] = OrderedDict()
        self._gen: Hashable = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.invalidations = 0

    def refresh(self, force: bool = False) -> None:
        """Drop every cached key if the registry changed (at most once per ``check_every_s``)."""
        now = self._clock()
        if not force and now - self._checked_at < self.check_every_s:
            return
        gen = self._generation()
        with self._lock:
            started = self._checked_at == float("-inf")
            self._checked_at = now
            if gen == self._gen and not started:
                return
            if self._keys:
                self.invalidations += 1
            self._keys.clear()
            self._gen = gen
        if self._preload is not None:
            # Read after the generation: a change in between invalidates again at the next check.
            keys = self._preload(self.capacity)
            with self._lock:
                if self._gen == gen:
                    for key in keys:
                        self._keys.setdefault(key.node_id, key)
                    self.preloaded += len(keys)

    def get(self, node_id: str) -> NodeKey | None:
        if self._preload is not None and self._checked_at == float("-inf"):
            self.refresh()
        with self._lock:
            found = self._keys.get(node_id)
            if found is not None:
                self._keys.move_to_end(node_id)
                self.hits += 1
                return None if found is _UNKNOWN else found  # type: ignore[return-value]
        key = self._lookup(node_id)
        with self._lock:
            self.misses += 1
            self._keys[node_id] = _UNKNOWN if key is None else key
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
        return key


class CachedEventVerifier(EventVerifier):
    """Central's event check (node enrolled, signature valid over the received bytes, no
    replay: ``SecurityError`` with reason ``unknown_node``, ``revoked``, ``unsigned``,
    ``bad_signature`` or ``replay``), with node keys from a ``KeyCache``."""

    def __init__(self, keys: KeyCache, *, require_signed: bool = True, digests: DigestLog | None = None) -> None:
        super().__init__(keys.get, require_signed=require_signed,
                         digests=digests if digests is not None else MemoryDigestLog(100_000))
        self.keys = keys

    def refresh(self) -> None:
        self.keys.refresh()

    def verify_batch(self, node_id: str, batch: BatchSig,
                     envs: list[GoodEnvelope]) -> list[SecurityError | None]:
        """Check a signed batch of ``node_id`` whose good envelopes are ``envs``: raise
        ``SecurityError`` (``unknown_node``, ``revoked``, ``bad_signature``) when the whole batch
        is refused, else return per envelope None (acceptable) or its ``SecurityError``
        (``unsigned``, ``replay``)."""
        node = self.keys.get(node_id)
        if node is None:
            raise SecurityError("unknown_node", f"{node_id} is not enrolled")
        if node.status != "enrolled":
            raise SecurityError("revoked", f"{node_id} is {node.status}")
        key = node.public_key
        before = self.verifications
        if batch.received is None or self._signature(key, node_id, batch.sig, batch.received, strict=False) is None:
            body = batch.canonical()
            if body == batch.received:  # the same bytes failed already: no second check
                raise SecurityError("bad_signature", "batch signature does not verify")
            try:
                self._signature(key, node_id, batch.sig, body, strict=True)
            except SecurityError:
                raise SecurityError("bad_signature", "batch signature does not verify") from None
        bodies = [_envelope_body(g) for g in envs]
        signed = [i for i, g in enumerate(envs) if g.env.sig is not None]
        if signed and self.verifications != before:  # a resend of a verified batch was spot-checked
            i = signed[secrets.randbelow(len(signed))]
            try:
                self._signature(key, node_id, envs[i].env.sig, bodies[i], strict=True)
            except SecurityError:
                raise SecurityError("bad_signature", f"event {envs[i].env.event_id}: an envelope signature "
                                    "inside a signed batch does not verify") from None
        out: list[SecurityError | None] = []
        for g, body in zip(envs, bodies, strict=True):
            env = g.env
            if env.sig is None and self.require_signed:
                out.append(SecurityError("unsigned", f"event {env.event_id} carries no signature"))
                continue
            digest = hashlib.sha256(body).digest()
            earlier = self._digests.check_and_record(node_id, env.event_id, digest)
            if earlier is not None and earlier != digest:
                out.append(SecurityError("replay", f"event_id {env.event_id} reused with other content"))
            else:
                out.append(None)
        return out


def _envelope_body(g: GoodEnvelope) -> bytes:
    """An envelope's signed bytes (its canonical form without ``sig``) as decoding kept them."""
    if g.received is not None:
        return g.received
    body = g.canonical()
    return body if body is not None else canonical_bytes(g.env)
