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
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from edge.signing import DigestLog, EventVerifier, MemoryDigestLog, NodeKey

_UNKNOWN = object()


class KeyCache:
    """Bounded LRU of ``lookup(node_id)`` results, invalidated when ``generation()`` changes."""

    def __init__(self, lookup: Callable[[str], NodeKey | None], generation: Callable[[], Hashable],
                 *, capacity: int = 50_000, check_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup = lookup
        self._generation = generation
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
            self._checked_at = now
            if gen != self._gen:
                if self._keys:
                    self.invalidations += 1
                self._keys.clear()
                self._gen = gen

    def get(self, node_id: str) -> NodeKey | None:
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
