"""Central's security hooks for ingest: event signature verification and the authentication of
every other uplink message against the node registry (one shared key cache), and command signing
with central's command key, when a ``[pki]`` section is configured."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from central_sync.config import CentralConfig
from central_sync.message_auth import MessageAuth
from central_sync.pki import PkiFiles
from central_sync.registry import Registry
from central_sync.store import open_store
from central_sync.store.registry_tables import RegistryTables
from central_sync.verify_cache import CachedEventVerifier, KeyCache
from edge.credentials import credential_path
from edge.errors import SecurityError
from edge.signing import CommandSigner, MemoryDigestLog, NodeKey, public_key_from_pem
from edge.sync.wire import Command, EventEnvelope


@dataclass
class CentralHooks:
    verify_event: CachedEventVerifier | Callable[[EventEnvelope], None] | None = None
    sign_command: Callable[[Command], Command] | None = None
    authenticate: MessageAuth | None = None


class RegistryKeyLookup:
    """Registry lookups from ingest's worker threads on the store's registry tables."""

    def __init__(self, tables: RegistryTables) -> None:
        self._registry = Registry(tables)
        self._lock = threading.Lock()
        self._parsed: dict[str, Ed25519PublicKey] = {}  # PEM -> key, kept across preloads

    def __call__(self, node_id: str) -> NodeKey | None:
        with self._lock:
            return self._registry.lookup(node_id)

    def preload(self, limit: int) -> list[NodeKey]:
        """Up to ``limit`` registered nodes' keys in one query (``KeyCache``'s warm start); a PEM
        seen at the previous preload is not parsed again (an enrolment invalidates every key)."""
        with self._lock:
            rows = self._registry.tables.signing_keys(limit)
        parsed: dict[str, Ed25519PublicKey] = {}
        out: list[NodeKey] = []
        for node_id, pem, status in rows:
            key = self._parsed.get(pem) or parsed.get(pem)
            if key is None:
                try:
                    key = public_key_from_pem(pem)
                except SecurityError:
                    continue  # looked up singly, which raises as before
            parsed[pem] = key
            out.append(NodeKey(node_id, key, status))
        self._parsed = parsed
        return out

    def generation(self) -> tuple[object, ...]:
        """Changes whenever a node is enrolled, re-enrolled or revoked (a key-cache token)."""
        with self._lock:  # the refresher and commit threads and single lookups share the connection
            return self._registry.tables.generation()


def central_hooks(cfg: CentralConfig) -> CentralHooks:
    """Hooks for ``IngestService``; none when central has no PKI (development)."""
    if cfg.pki is None:
        return CentralHooks()
    files = PkiFiles(cfg.pki.dir)
    signer = CommandSigner.from_file(credential_path(files.command_key))
    # Identical re-sends are plain duplicates (INSERT OR IGNORE keeps the first copy); the digest
    # log only tells a *different* envelope reusing an event id apart, to record it as a replay.
    # The registry is read through a store of its own (one more SQLite connection or pool); keys
    # are cached per node and dropped whenever the registry changes (checked once a second).
    lookup = RegistryKeyLookup(open_store(cfg.store_url).registry_tables())
    keys = KeyCache(lookup, lookup.generation, preload=lookup.preload)
    verifier = CachedEventVerifier(keys, require_signed=True, digests=MemoryDigestLog(100_000))
    auth = MessageAuth(keys, require_signed=not cfg.pki.accept_unsigned_status)
    return CentralHooks(verify_event=verifier, sign_command=signer.sign, authenticate=auth)
