"""Event signature verification with a per-node key cache (central side).

``edge.signing.EventVerifier`` looks the node up (one registry SELECT and one PEM parse) for
every event; at city scale that was 28 % of central's CPU. ``CachedEventVerifier`` keeps the
parsed ``NodeKey`` (or "unknown") per node in a bounded LRU and replaces the whole map when the
registry's *generation* changes: ``generation()`` is a cheap token (for the SQLite registry: row
count and latest enrol/revoke time) read at most every ``check_every_s`` seconds by
``refresh()``, which runs only off the event loop: ingest's ``keep_fresh`` task calls it through
``asyncio.to_thread`` every ``check_every_s``, and the commit thread once per commit batch. So a
``kentongan-central revoke`` run in another process bites within ``check_every_s`` (default 1 s)
plus one preload of every enrolled key (tens of milliseconds at 10,000 posts): about 1-2 s.

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

import asyncio
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
    """Bounded LRU of ``lookup(node_id)`` results, replaced whole when ``generation()`` changes.

    ``refresh()`` reads ``generation()`` at most every ``check_every_s`` seconds; at the first
    call and whenever the token changed it builds a NEW key map (with ``preload(limit)``, when
    given: up to ``limit`` registered nodes' keys in one query; else an empty one) and swaps it in
    under the lock, so a ``get`` meanwhile answers from the previous map, never from an empty one.
    ``refresh`` is the only method that calls ``generation`` or ``preload``; it is meant for a
    worker thread (``keep_fresh`` runs it every ``check_every_s`` through ``asyncio.to_thread``;
    the commit thread calls it per batch), and concurrent calls do not queue: while one thread
    refreshes, another's call returns at once (unless ``force``d: then it waits and checks
    again, so the map is current when it returns). ``get`` only reads the map; a node that is not in
    it (enrolled after the last refresh, not enrolled, or past the preload ``limit``) is looked up
    singly, once per map. Without a preload, a worker that starts as 1,000 posts reconnect
    made 1,000 registry round trips and PEM parses (9 % of an ingest worker's samples in a profile
    of the mass reconnect)."""

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
        self._started = False
        self._checked_at = float("-inf")
        self._lock = threading.Lock()  # guards ``_keys`` (held for dict operations only)
        self._refreshing = threading.Lock()  # one refresh at a time
        self.hits = 0
        self.misses = 0
        self.invalidations = 0

    def refresh(self, force: bool = False) -> None:
        """Swap in a new key map if the registry changed (checked at most once per
        ``check_every_s`` unless ``force``). Registry errors propagate; the map is then kept and
        the next check tries again."""
        now = self._clock()
        if not force and now - self._checked_at < self.check_every_s:
            return
        if not self._refreshing.acquire(blocking=force):
            return  # another thread is refreshing right now (a forced call waits for it)
        try:
            gen = self._generation()
            self._checked_at = now
            if gen == self._gen and self._started:
                return
            # Read after the generation: a change in between is seen at the next check.
            fresh: OrderedDict[str, object] = OrderedDict()
            if self._preload is not None:
                for key in self._preload(self.capacity):
                    fresh.setdefault(key.node_id, key)
            with self._lock:
                if self._started and self._keys:
                    self.invalidations += 1
                self._keys = fresh
                self._gen = gen
                self._started = True
                self.preloaded += len(fresh)
        finally:
            self._refreshing.release()

    def get(self, node_id: str) -> NodeKey | None:
        with self._lock:
            keys = self._keys
            found = keys.get(node_id)
            if found is not None:
                keys.move_to_end(node_id)
                self.hits += 1
                return None if found is _UNKNOWN else found  # type: ignore[return-value]
        key = self._lookup(node_id)
        with self._lock:
            self.misses += 1
            if self._keys is keys:  # not swapped meanwhile: the answer may predate the new map
                keys[node_id] = _UNKNOWN if key is None else key
                while len(keys) > self.capacity:
                    keys.popitem(last=False)
        return key


async def keep_fresh(keys: KeyCache, on_error: Callable[[Exception], None]) -> None:
    """Run ``keys.refresh`` off the event loop every ``check_every_s`` (never more often than
    every 0.1 s) until cancelled; the caller awaits the first refresh itself (``asyncio.to_thread``) before
    it subscribes. A failing refresh (registry unreachable) is reported through ``on_error`` and
    tried again at the next tick; the previous map stays in use meanwhile."""
    while True:
        await asyncio.sleep(max(keys.check_every_s, 0.1))
        try:
            await asyncio.to_thread(keys.refresh)
        except Exception as exc:
            on_error(exc)


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
