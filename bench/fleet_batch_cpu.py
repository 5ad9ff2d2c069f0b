"""Central's CPU per event in the batched (backlog) ingest path, stage by stage, without MQTT.

    .venv/bin/python bench/fleet_batch_cpu.py [--events 20000] [--repeat 3] [--path both|batch|envelope]
        [--profile FILE]

Builds ``--events`` signed envelopes as ``bench/fleet_sim.py`` sends them (``event_batch``
messages of 500): ``batch``, signed once as a whole too (``edge.sync.wire_batch``, as a post
sends them now), ``envelope``, the old form (envelope signatures only); ``both`` (default)
measures the two alternately in each repeat and prints the ratio. Then it measures this
process's CPU (``time.process_time``, so other load on the machine barely matters) per event for
what an ingest worker does with them:

* decode: ``central_sync.ingest_decode.decode_events`` of each message;
* verify: ``CachedEventVerifier.verify_batch`` of each signed batch (one Ed25519 for the batch,
  one for a spot-checked envelope, a replay digest per envelope), or ``verify`` of every envelope
  of an old-style batch (Ed25519 each);
* commit: ``PostgresStore.commit_events`` of each batch on a throwaway PostgreSQL cluster (fsync
  on; central's client-side CPU only, the server's is not counted);
* ack: ``AckBook`` bodies for the committed ids.

Prints the medians in microseconds per event. ``--profile FILE`` writes a cProfile of one more
round. The fleet benchmark (``bench/fleet.py``) measures the whole system; this one says which
stage of central's share to cut.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from pg_cluster import PgCluster  # noqa: E402

from central_sync.acks import AckBook  # noqa: E402
from central_sync.ingest_decode import DecodedEvents, decode_events  # noqa: E402
from central_sync.store import Store, open_store  # noqa: E402
from central_sync.verify_cache import CachedEventVerifier, KeyCache  # noqa: E402
from edge.signing import NodeKey, sign_bytes  # noqa: E402
from edge.sync.wire import Topics, batch_prefix, canonical_bytes, envelope_json, join_batch  # noqa: E402
from edge.sync.wire_batch import canonical_batch, sign_batch  # noqa: E402

NODES = 20
BATCH = 500


def messages(n: int, topics: Topics, batch_sig: bool) -> tuple[list[tuple[str, bytes]], dict[str, NodeKey]]:
    keys = {f"pos-{i:05d}": Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"b/{i}".encode()).digest())
            for i in range(NODES)}
    out: list[tuple[str, bytes]] = []
    per_node = max(1, n // NODES)
    for node, key in keys.items():
        bodies = []
        for seq in range(per_node):
            data: dict[str, Any] = {"v": 1, "kind": "event", "event_id": uuid.uuid4().hex, "node_id": node,
                                    "boot_id": "b" * 16, "seq": seq, "mono_ns": time.monotonic_ns(),
                                    "wall_time": time.time(), "time_quality": "synced", "type": "STATUS",
                                    "priority": 3, "incident_id": None, "payload": {"note": "x" * 40}}
            data["sig"] = sign_bytes(key, canonical_bytes(data))
            bodies.append(envelope_json(data))  # canonical, as a post sends
        chunk: list[bytes] = []
        for body in bodies:  # as the simulator packs: up to 500 envelopes or 48,000 bytes
            chunk.append(body)
            if len(chunk) == BATCH or sum(len(b) + 1 for b in chunk) >= 48_000 or body is bodies[-1]:
                body = (sign_batch(canonical_batch(node, chunk), lambda d, k=key: sign_bytes(k, d)) if batch_sig
                        else join_batch(batch_prefix(node), chunk))
                out.append((topics.up(node, "event"), body))
                chunk = []
    pub = {node: NodeKey(node, k.public_key(), "enrolled") for node, k in keys.items()}
    return out, pub


def one_round(store: Store, msgs: list[tuple[str, bytes]], keys: dict[str, NodeKey],
              topics: Topics) -> dict[str, float]:
    verifier = CachedEventVerifier(KeyCache(keys.get, lambda: 1))
    cpu = {"decode": 0.0, "verify": 0.0, "commit": 0.0, "ack": 0.0}
    events = 0

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        t = time.process_time()
        got = fn()
        cpu[stage] += time.process_time() - t
        return got

    for topic, payload in msgs:
        dec: DecodedEvents = timed("decode", lambda: decode_events(topics, topic, payload))  # noqa: B023
        assert not dec.bad, dec.bad[:1]

        def verify(dec: DecodedEvents = dec) -> list[Any]:
            verifier.refresh()
            if dec.batch is not None:
                problems = verifier.verify_batch(dec.node_id, dec.batch, dec.good)
                assert not any(problems), problems[:1]
            else:
                for g in dec.good:
                    verifier.verify(g.env, g.canonical, g.received)
            return [g.env for g in dec.good]

        envs = timed("verify", verify)
        result = timed("commit", lambda: store.commit_events(envs, time.time()))  # noqa: B023

        def ack(result: Any = result, node: str = dec.node_id) -> None:
            book = AckBook()
            for i in result.inserted:
                book.stored(node, i)
            book.bodies(time.time())

        timed("ack", ack)
        events += len(envs)
    out = {k: v / events * 1e6 for k, v in cpu.items()}
    out["total"] = sum(out.values())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--path", choices=("both", "batch", "envelope"), default="both",
                    help="batch: one signature per batch message; envelope: the old per-envelope form")
    ap.add_argument("--profile", type=Path)
    args = ap.parse_args()
    topics = Topics()
    paths = ["envelope", "batch"] if args.path == "both" else [args.path]
    rows: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    cluster = PgCluster(fsync=True).start()
    try:
        for r in range(args.repeat + (1 if args.profile else 0)):
            for path in paths:  # alternated in each repeat: the A/B sees the same machine load
                msgs, keys = messages(args.events, topics, path == "batch")
                store = open_store(cluster.new_database())
                try:
                    if args.profile and r == args.repeat:
                        prof = cProfile.Profile()
                        prof.runcall(one_round, store, msgs, keys, topics)
                        prof.dump_stats(f"{args.profile}.{path}")
                    else:
                        rows[path].append(one_round(store, msgs, keys, topics))
                finally:
                    store.close()
    finally:
        cluster.close()
    print(f"events={args.events} in event_batch messages (<= {BATCH} envelopes, 48 kB), repeat={args.repeat}: "
          "central CPU us/event (medians)")
    meds = {p: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for p, rs in rows.items()}
    for path, med in meds.items():
        print(f"{path:8s}: " + " | ".join(f"{k} {v:.1f}" for k, v in med.items()))
    if len(meds) == 2:
        b, e = meds["batch"], meds["envelope"]
        print("ratio batch/envelope: " + " | ".join(f"{k} {b[k] / e[k]:.2f}" for k in b if e[k] > 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
