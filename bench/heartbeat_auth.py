"""Central's check of a signed heartbeat, in-process: CPU microseconds per heartbeat of
``MessageAuth.check`` (registry key from the cache, signed bytes, Ed25519) the way the dispatcher
calls it, on heartbeats as the tree's own post signs them (``edge.sync.service``'s fields).

    .venv/bin/python bench/heartbeat_auth.py [--messages 3000] [--repeat 5]

Prints the median over ``--repeat`` of CPU us per heartbeat (``time.process_time``) for:
``rebuilt``, the check re-encoding the received object (what central did before the received
bytes were cut); ``cut``, the check given the received payload (``received_signed_bytes``: no
re-encoding); and ``forged``, a cut whose signature does not verify (the fallback's compare).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_sync.message_auth import MessageAuth
from central_sync.verify_cache import KeyCache
from edge.errors import SecurityError
from edge.signing import MessageSigner, NodeKey
from edge.sync.wire import Heartbeat, encode

NODE = "post-00001"


def heartbeats(n: int, key: Ed25519PrivateKey) -> list[bytes]:
    signer = MessageSigner(key)
    boot = uuid.uuid4().hex
    return [encode(signer.sign(Heartbeat(
        node_id=NODE, boot_id=boot, at=time.time(), version="1.4.0", time_quality="synced", clock_offset=0.012,
        outbox={"ready": i % 7, "in_flight": 1, "p1": 0}, siren={"state": "idle", "last_test": 1_764_000_000.5},
        extra={"published": 1000 + i, "acked": 999 + i, "requeued": 0, "reconnects": 2, "central_present": True},
    ))) for i in range(n)]


def one_round(n: int) -> dict[str, float]:
    key = Ed25519PrivateKey.generate()
    registry = {NODE: NodeKey(NODE, key.public_key(), "enrolled")}
    auth = MessageAuth(KeyCache(registry.get, lambda: 1))
    msgs = heartbeats(n, key)
    datas = [json.loads(m) for m in msgs]
    t0 = time.process_time()
    for data in datas:
        auth.check(NODE, data)
    t1 = time.process_time()
    for m, data in zip(msgs, datas, strict=True):
        auth.check(NODE, data, m)
    t2 = time.process_time()
    forged = 0
    for m, data in zip(msgs[:n // 10], datas[:n // 10], strict=True):
        try:
            auth.check(NODE, {**data, "sig": datas[0]["sig"] if data is not datas[0] else datas[1]["sig"]},
                       m.replace(data["sig"].encode(), (datas[1] if data is datas[0] else datas[0])["sig"].encode()))
        except SecurityError:
            forged += 1
    t3 = time.process_time()
    assert forged == n // 10
    us = 1e6 / n
    return {"rebuilt": (t1 - t0) * us, "cut": (t2 - t1) * us, "forged": (t3 - t2) * 1e6 / (n // 10)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rounds = [one_round(args.messages) for _ in range(args.repeat)]
    print(f"CPU us per signed heartbeat, median of {args.repeat} x {args.messages}")
    for k in rounds[0]:
        print(f"  {k:8s} {statistics.median(r[k] for r in rounds):7.1f}")


if __name__ == "__main__":
    main()
