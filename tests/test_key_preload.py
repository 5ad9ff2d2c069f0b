"""The key cache's warm start: every enrolled node's key in one registry query when a worker's
cache starts or is invalidated, instead of one round trip and PEM parse per node."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_sync.registry import Registry
from central_sync.security_wiring import RegistryKeyLookup
from central_sync.verify_cache import KeyCache
from edge.signing import NodeKey, public_key_pem


def _enrol(reg: Registry, node_id: str, key: Ed25519PrivateKey) -> None:
    reg.add(node_id=node_id, signing_public_key=public_key_pem(key), kelurahan_code="3173010001", rw=1, rt=1,
            display_name=node_id, cert_serial=f"{abs(hash(node_id)):x}", cert_not_after=4e9, replace=True)


def test_preload_gives_what_single_lookups_give_and_follows_revocation(tmp_path: Path) -> None:
    reg = Registry(sqlite3.connect(tmp_path / "reg.db"))
    keys = {f"pos-{i:03d}": Ed25519PrivateKey.generate() for i in range(30)}
    for node_id, key in keys.items():
        _enrol(reg, node_id, key)
    reg.revoke("pos-007")
    lookup = RegistryKeyLookup(reg.tables)
    singles: list[str] = []

    def single(node_id: str) -> NodeKey | None:
        singles.append(node_id)
        return lookup(node_id)

    now = [0.0]
    cache = KeyCache(single, lookup.generation, preload=lookup.preload, check_every_s=1.0, clock=lambda: now[0])
    cache.refresh()  # ingest does this off its loop before subscribing; ``get`` never preloads
    for node_id in keys:
        got, want = cache.get(node_id), lookup(node_id)
        assert got is not None and want is not None
        assert (got.node_id, got.status, public_key_pem(got.public_key)) == \
            (want.node_id, want.status, public_key_pem(want.public_key))
    assert singles == [] and cache.preloaded == 30 and cache.get("pos-007").status == "revoked"  # type: ignore[union-attr]
    assert cache.get("pos-zzz") is None and singles == ["pos-zzz"]  # not enrolled: looked up singly, once
    assert cache.get("pos-zzz") is None and singles == ["pos-zzz"]

    reg.revoke("pos-003")  # the generation changes: the next check reloads every key in one query
    _enrol(reg, "pos-new", Ed25519PrivateKey.generate())
    now[0] = 2.0
    cache.refresh()
    assert cache.invalidations == 1 and cache.preloaded == 61
    assert cache.get("pos-003").status == "revoked"  # type: ignore[union-attr]
    assert cache.get("pos-new") is not None and singles == ["pos-zzz"]


def test_preload_limited_to_the_capacity_and_the_rest_looked_up_singly() -> None:
    keys = {f"pos-{i:03d}": NodeKey(f"pos-{i:03d}", Ed25519PrivateKey.generate().public_key(), "enrolled")
            for i in range(10)}
    singles: list[str] = []

    def single(node_id: str) -> NodeKey | None:
        singles.append(node_id)
        return keys.get(node_id)

    cache = KeyCache(single, lambda: 1, capacity=4, preload=lambda limit: sorted(keys.values(),
                                                                                 key=lambda k: k.node_id)[:limit])
    cache.refresh()
    assert cache.preloaded == 4
    assert all(cache.get(f"pos-{i:03d}") is keys[f"pos-{i:03d}"] for i in range(4)) and singles == []
    assert cache.get("pos-009") is keys["pos-009"] and singles == ["pos-009"]
