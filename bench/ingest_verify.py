"""Central's per-event decode + signature check, in-process: CPU microseconds per event of
``decode_events`` (what the dispatcher does per message) plus the commit thread's ``verify``, for
single signed event messages as the tree's own post encodes them (``wire.encode`` of an
``EventSigner``-signed envelope), every event new (no verified-bytes cache hit).

    .venv/bin/python bench/ingest_verify.py [--events 3000] [--repeat 5]

Runs in the tree it is started from, so the same file run from two worktrees back to back (or
alternately) is an A/B of this path that the machine's other load disturbs much less than
``bench/fleet.py``. Prints the median over ``--repeat`` of CPU us per event (``time.process_time``)
for: decode only, verify only, both; the same Ed25519 verification alone (the floor); building
the canonical bytes from the received object (``re-encode``) and cutting them out of the
received bytes (``cut``, ``wire.received_signed_bytes``, where the tree has it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_sync.ingest_decode import GoodEnvelope, decode_events
from edge.signing import EventSigner, EventVerifier, NodeKey, verify_bytes
from edge.sync import wire
from edge.sync.wire import EventEnvelope, Topics, canonical_bytes, encode

TOPICS = Topics("kentongan/v1")
TOPIC = "kentongan/v1/up/post-00001/event"


def messages(n: int, key: Ed25519PrivateKey) -> list[bytes]:
    sign = EventSigner(key)
    out = []
    for i in range(n):
        env = EventEnvelope(event_id=uuid.uuid4().hex, node_id="post-00001", boot_id=uuid.uuid4().hex, seq=i,
                            mono_ns=time.monotonic_ns(), wall_time=time.time(), time_quality="synced",
                            type="STATUS", priority=2, incident_id=None, payload={"note": "x" * 200})
        out.append(encode(sign(env)))
    return out


def check(verifier: EventVerifier, g: GoodEnvelope) -> None:
    received: Any = getattr(g, "received", None)
    if received is not None or callable(getattr(g, "canonical", None)):
        verifier.verify(g.env, g.canonical, received)  # type: ignore[arg-type,call-arg]
    else:
        verifier.verify(g.env, g.canonical)  # type: ignore[arg-type]


def one_round(n: int) -> dict[str, float]:
    key = Ed25519PrivateKey.generate()
    registry = {"post-00001": NodeKey("post-00001", key.public_key(), "enrolled")}
    msgs = messages(n, key)
    t0 = time.process_time()
    decoded = [decode_events(TOPICS, TOPIC, m).good[0] for m in msgs]
    t1 = time.process_time()
    verifier = EventVerifier(registry.get)
    for g in decoded:
        check(verifier, g)
    t2 = time.process_time()
    bodies = [(canonical_bytes(g.env), g.env.sig or "") for g in decoded]
    t3 = time.process_time()
    for body, sig in bodies:
        verify_bytes(key.public_key(), body, sig)
    t4 = time.process_time()
    items = [json.loads(m) for m in msgs]
    t5 = time.process_time()
    for item in items:
        canonical_bytes(item)
    t6 = time.process_time()
    cut = getattr(wire, "received_signed_bytes", None)
    if cut is not None:
        for m, g in zip(msgs, decoded, strict=True):
            cut(m, g.env.sig)
    t7 = time.process_time()
    us = 1e6 / n
    return {"decode": (t1 - t0) * us, "verify": (t2 - t1) * us, "both": (t2 - t0) * us, "ed25519": (t4 - t3) * us,
            "re-encode": (t6 - t5) * us, "cut": (t7 - t6) * us if cut is not None else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    args = ap.parse_args()
    rounds = [one_round(args.events) for _ in range(args.repeat)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    if args.json:
        print(json.dumps(med))
        return
    print(f"{Path(__file__).resolve().parent.parent.name}: CPU us per single signed event message, "
          f"median of {args.repeat} x {args.events}")
    for k, v in med.items():
        print(f"  {k:8s} {v:7.1f}")


if __name__ == "__main__":
    main()
