"""Resolve -> neighbour's siren off: how long a post central warned keeps sounding after the
operator resolves the incident.

    .venv/bin/python bench/resolve_stop.py [--rounds 10] [--json out.json]

On loopback: a LocalMosquitto, central (ingest + web app in one process, commands signed) and
two real posts (``edge.agent.Agent`` in simulate mode: gpiozero MockFactory pins) in one RW
(``tests/helpers_sirens.py``). Per round: the origin's panic button is pressed, central warns the
neighbour (its relay switches), the operator acknowledges and resolves over HTTP; measured from
just before ``POST /resolve`` until the neighbour's relay pin reads off and its siren is idle.

Baseline in the same run: a signed targeted ``stop`` published straight to the neighbour's
downlink by a plain paho client (no desk, no store) after a raw ``sound``, until the relay is off.
Target: p95 <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402

from bench._common import median, pct, table  # noqa: E402
from central_sync.broker import LocalMosquitto  # noqa: E402
from central_sync.routing import make_command  # noqa: E402
from edge.sync.wire import Topics, encode  # noqa: E402
from tests.helpers_sirens import Central, Keys, Posts, post_config, wait_for  # noqa: E402

TARGET_S = 5.0


def _off(posts: Posts, node_id: str) -> bool:
    hw = posts.agents[node_id].hw
    return hw is not None and not hw.siren.state().playing and posts.relay(node_id).state == 0


def _playing(posts: Posts, node_id: str) -> bool:
    hw = posts.agents[node_id].hw
    return hw is not None and hw.siren.state().playing


def _until(pred: Any, timeout: float = 60.0) -> float:
    """Seconds until ``pred()`` holds (polled every millisecond)."""
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError("timed out")
        time.sleep(0.001)
    return time.monotonic() - t0


def desk_round(central: Central, posts: Posts, http: Any, csrf: dict[str, str]) -> float:
    origin = posts.agents["pos-asal"].hw
    assert origin is not None and origin.simulated is not None
    known = {i["incident_id"] for i in http.get("/api/incidents").json()}
    origin.simulated.press("panic", 0.15)
    incident = wait_for(lambda: next((i for i in http.get("/api/incidents").json()
                                      if i["incident_id"] not in known and i["node_id"] == "pos-asal"), None), 60,
                        "a new incident")
    wait_for(lambda: _playing(posts, "pos-tetangga"), 60, "the neighbour's warning")
    inc = incident["incident_id"]
    http.post(f"/api/incidents/{inc}/ack", json={"note": ""}, headers=csrf).raise_for_status()
    t0 = time.monotonic()
    http.post(f"/api/incidents/{inc}/resolve", json={"note": "bench"}, headers=csrf).raise_for_status()
    _until(lambda: _off(posts, "pos-tetangga"))
    elapsed = time.monotonic() - t0
    hw = posts.agents["pos-asal"].hw
    assert hw is not None
    hw.siren.stop("bench")  # next round starts quiet
    return elapsed


def raw_round(keys: Keys, client: paho.Client, posts: Posts) -> float:
    topics = Topics()
    sound = keys.signer.sign(make_command("pos-tetangga", "sound", {"incident_type": "PANIC", "pattern": "2-2-2"},
                                          issuer="bench"))
    client.publish(topics.down("pos-tetangga", "cmd"), encode(sound), qos=1)
    wait_for(lambda: _playing(posts, "pos-tetangga"), 60, "the raw sound")
    stop = keys.signer.sign(make_command("pos-tetangga", "stop", {"command_ids": [sound.command_id]},
                                         issuer="bench"))
    t0 = time.monotonic()
    client.publish(topics.down("pos-tetangga", "cmd"), encode(stop), qos=1)
    _until(lambda: _off(posts, "pos-tetangga"))
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stop-") as tmp_name:
        tmp = Path(tmp_name)
        # The posts' and central's logs (shutdown noise included) go to the run's directory.
        logging.basicConfig(filename=str(tmp / "run.log"), level=logging.INFO, force=True)
        broker = LocalMosquitto(tmp / "mosquitto").start()
        keys = Keys(tmp / "keys")
        central = Central(tmp, broker, keys)
        posts = Posts()
        raw = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=paho.MQTTv5)
        try:
            for node_id, rt in (("pos-asal", 3), ("pos-tetangga", 4)):
                posts.start(post_config(tmp / node_id, broker.port, node_id, 5, rt, keys))
            http, csrf = central.login("op")
            wait_for(lambda: len([n for n in http.get("/api/nodes").json() if n.get("rw")]) == 2, 60, "posts")
            raw.connect(broker.host, broker.port)
            raw.loop_start()
            desk = [desk_round(central, posts, http, csrf) for _ in range(args.rounds)]
            base = [raw_round(keys, raw, posts) for _ in range(args.rounds)]
        finally:
            raw.loop_stop()
            posts.close()
            central.close()
            broker.stop()
    print(table(["measure", "rounds", "p50 s", "p95 s", "max s"], [
        ["raw signed stop -> relay off (baseline)", len(base), f"{pct(base, 50):.3f}", f"{pct(base, 95):.3f}",
         f"{max(base):.3f}"],
        ["desk resolve -> neighbour relay off", len(desk), f"{pct(desk, 50):.3f}", f"{pct(desk, 95):.3f}",
         f"{max(desk):.3f}"]]))
    print(f"\ndesk p95 {pct(desk, 95):.3f} s vs target {TARGET_S:.0f} s: "
          f"{'MET' if pct(desk, 95) <= TARGET_S else 'MISSED'}; median ratio to the baseline "
          f"{median(desk) / median(base):.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"desk": desk, "raw": base}))


if __name__ == "__main__":
    main()
