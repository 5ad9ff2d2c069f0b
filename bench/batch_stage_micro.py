"""Micro-benchmarks of the per-event steps of central's batched ingest path changed in branch
`storm3` (docs/scale.md, "Per-event costs of the batched path, a fourth look"), each against the
form it replaced, interleaved in one process (``time.process_time``, best of ``--rounds``, so
other load on the machine matters less):

* canonical: ``edge.sync.wire.canonical_bytes`` (prebuilt C encoder) against
  ``JSONEncoder.encode`` per call, on the simulator's envelopes;
* good-envelope: constructing ``GoodEnvelope`` (slots dataclass) against a frozen one;
* store-check: ``check_event`` against the full checks (``_check_event_fully``);
* pg-dump: psycopg's conversion and dumping of the events INSERT's 13 arrays for 100 rows, the
  payload column as ``jsonb[]`` of ``Jsonb`` against ``text[]`` of ``json_text``;
* key-cache: a cold ``KeyCache`` asked for ``--nodes`` enrolled posts on a SQLite registry, one
  registry lookup each against one preload.

    .venv/bin/python bench/batch_stage_micro.py [--rounds 20] [--nodes 1000]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from fleet_batch_cpu import messages  # noqa: E402
from psycopg._queries import PostgresQuery  # noqa: E402
from psycopg.adapt import Transformer  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from central_sync.ingest_decode import GoodEnvelope  # noqa: E402
from central_sync.registry import Registry  # noqa: E402
from central_sync.security_wiring import RegistryKeyLookup  # noqa: E402
from central_sync.store.checks import _check_event_fully, check_event  # noqa: E402
from central_sync.store.postgres_support import json_text  # noqa: E402
from central_sync.verify_cache import KeyCache  # noqa: E402
from edge.signing import public_key_pem  # noqa: E402
from edge.sync.wire import EventEnvelope, Topics, canonical_bytes  # noqa: E402
from edge.sync.wire_decode import validate_envelopes  # noqa: E402

_OLD_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_INSERT = ("SELECT %s FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::bigint[], "
           "%b::float8[], %b::text[], %b::text[], %b::int[], %b::text[], {payload}, %b::text[])")


def _old_canonical(item: dict[str, Any]) -> bytes:
    data = dict(item)
    data.pop("sig", None)
    return _OLD_ENCODER.encode(data).encode()


@dataclass(frozen=True, slots=True)
class _FrozenGood:
    env: Any
    item: Any = None
    received: Any = None


def _params(envs: list[EventEnvelope], payloads: list[Any]) -> tuple[Any, ...]:
    return (1.0, list(range(len(envs))), [e.event_id for e in envs], [e.node_id for e in envs],
            [e.boot_id for e in envs], [e.seq for e in envs], [e.mono_ns for e in envs], [e.wall_time for e in envs],
            [e.time_quality for e in envs], [e.type for e in envs], [e.priority for e in envs],
            [e.incident_id for e in envs], payloads, [e.sig for e in envs])


def _pg_dump(envs: list[EventEnvelope], text: bool) -> None:
    query = _INSERT.format(payload="%b::text[]" if text else "%b::jsonb[]")
    params = _params(envs, [json_text(e.payload) for e in envs] if text else [Jsonb(e.payload) for e in envs])
    pq = PostgresQuery(Transformer())
    pq.convert(query, params)
    pq.dump(params)


def _key_cache(tables: Any, nodes: list[str], preload: bool) -> None:
    lookup = RegistryKeyLookup(tables)
    cache = KeyCache(lookup, lookup.generation, preload=lookup.preload if preload else None)
    cache.refresh()
    for node in nodes:
        assert cache.get(node) is not None


def best_us(fn: Callable[[], object], per: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best / per * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--nodes", type=int, default=1000)
    args = ap.parse_args()
    msgs, _keys = messages(2000, Topics("kentongan/v1"), True)
    items: list[dict[str, Any]] = json.loads(msgs[0][1])["events"][:100]
    envs = validate_envelopes(items)
    with tempfile.TemporaryDirectory() as tmp:
        reg = Registry(sqlite3.connect(Path(tmp) / "reg.db"))
        nodes = [f"pos-{i:05d}" for i in range(args.nodes)]
        for node in nodes:
            reg.add(node_id=node, signing_public_key=public_key_pem(Ed25519PrivateKey.generate()),
                    kelurahan_code="3173010001", rw=1, rt=1, display_name=node, cert_serial=node, cert_not_after=4e9)
        cases: list[tuple[str, int, Callable[[], object], Callable[[], object]]] = [
            ("canonical", len(items), lambda: [_old_canonical(i) for i in items],
             lambda: [canonical_bytes(i) for i in items]),
            ("good-envelope", len(envs), lambda: [_FrozenGood(e, None, b"") for e in envs],
             lambda: [GoodEnvelope(e, None, b"") for e in envs]),
            ("store-check", len(envs), lambda: [_check_event_fully(e) for e in envs],
             lambda: [check_event(e) for e in envs]),
            ("pg-dump", len(envs), lambda: _pg_dump(envs, False), lambda: _pg_dump(envs, True)),
            ("key-cache", len(nodes), lambda: _key_cache(reg.tables, nodes, False),
             lambda: _key_cache(reg.tables, nodes, True)),
        ]
        print(f"{'step':14} {'old us/event':>12} {'new us/event':>12} {'ratio':>6}")
        for name, per, old, new in cases:
            rounds = max(3, args.rounds // 5) if name == "key-cache" else args.rounds
            o, n = [], []
            for _ in range(3):  # interleaved
                o.append(best_us(old, per, rounds))
                n.append(best_us(new, per, rounds))
            print(f"{name:14} {min(o):12.2f} {min(n):12.2f} {min(n) / min(o):6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
