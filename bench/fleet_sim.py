"""Simulated posts for bench/fleet.py and the scale-out tests: many posts per process.

Each post is its own MQTT 5 client (its own connection, client id, topics and Ed25519 key) speaking
the real wire protocol: signed retained presence on connect, signed QoS 0 heartbeats, QoS 1 signed events (one
envelope per message, or ``event_batch`` messages for a backlog), Acks on ``down/<node>/ack``,
and the post's at-least-once rule: whatever has no Ack after ``ack_timeout`` is sent again. All
sockets of a process are driven by ONE ``selectors.DefaultSelector`` (epoll on Linux). The client
is ``bench/mqtt_lite.py``, a minimal MQTT 5 client for this load generator only: paho cost ~120 us
of CPU per offered event here, which bounded what a 2-core box could measure of central. On the
wire it is the same: one connection per post, clean start, session expiry 0, the same topics,
QoS and bodies. A protocol error (``SimResult.protocol_errors``) fails bench/fleet.py's run.

Keys are derived from ``seed`` and the node id (``node_key``) so the parent can register the
public keys in central's registry without passing private keys around.

Run as a worker: ``python bench/fleet_sim.py SPEC.json OUT.json`` (spec: see ``SimSpec``); it
prints ``ready`` once every post is connected, starts offering load on SIGUSR1 (or at once with
``start_now``), stops on SIGTERM and writes its counters and latencies to OUT.json.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench import mqtt_lite
from edge.signing import MessageSigner, sign_bytes
from edge.sync.wire import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    Heartbeat,
    Presence,
    Topics,
    batch_prefix,
    canonical_bytes,
    encode,
    envelope_json,
    join_batch,
)
from edge.sync.wire_batch import SIG_MEMBER_BYTES, canonical_batch, sign_batch


def node_key(seed: str, node_id: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(f"{seed}/{node_id}".encode()).digest())


def node_ids(prefix: str, start: int, count: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(start, start + count)]


@dataclass
class SimSpec:
    port: int
    nodes: list[str]
    seed: str = "fleet"
    prefix: str = "kentongan/v1"
    rate: float = 0.0  # events/s offered by this process (spread over its posts)
    p1_rate: float = 0.0  # extra P1 events/s (single messages, ahead of any backlog)
    heartbeat_s: float = 20.0
    backlog: int = 0  # events queued per post before the start (sent as event_batch)
    #: Envelopes per backlog ``event_batch`` at most; a batch is also cut, as a post cuts it
    #: (``edge.sync.uplink_envelope.next_message``), where the next envelope would pass
    #: ``MAX_BATCH_BYTES`` (with room for the batch signature): ~158 of the sim's envelopes.
    batch_events: int = MAX_BATCH_EVENTS
    window: int = 500  # events in flight per post
    ack_timeout: float = 10.0
    signed: bool = True
    start_now: bool = False
    payload_bytes: int = 40
    drain_s: float = 30.0  # after the stop: keep collecting Acks (and resending) this long
    p1_channel: bool = True  # P1s first on {prefix}/up/<node>/event/p1, then on event (as a post does)
    adaptive_timeout: bool = True  # ack timeout grows with the measured publish->Ack time (as a post's)
    #: Backlog messages not yet PUBACKed by the broker at most (as a post's ``MAX_UNCONFIRMED``):
    #: a new P1 is then behind at most this many messages in the post's own connection. 0: no limit.
    mqtt_window: int = 2
    #: Sign and encode the rated load of this many seconds (bulk and P1 events) BEFORE the window,
    #: so during it the simulator only publishes: it is load generation, not the system under test
    #: (signing live took 24.6 of 60 CPU-s at 6,000 ev/s on 2 cores). 0: sign each event as sent.
    presign_s: float = 0.0
    #: Sign each backlog ``event_batch`` once as a whole (``edge.sync.wire_batch``), as a post does
    #: now; False: envelope signatures only (the old wire form, central verifies each).
    batch_sig: bool = True
    #: Under load, sleep this long before serving the sockets (``Fleet.poll``); 0: never.
    coalesce_s: float = 0.002
    coalesce_fds: int = 3


@dataclass
class SimResult:
    nodes: int = 0
    connected: int = 0
    offered: int = 0  # distinct events handed to the broker
    sent_msgs: int = 0
    resent: int = 0  # events sent again after an ack timeout
    resent_msgs: int = 0  # the messages that carried them (batches, as a post sends them)
    acked: int = 0
    rejected: int = 0
    duplicate_acks: int = 0
    heartbeats: int = 0
    start: float = 0.0
    end: float = 0.0
    latencies: list[float] = field(default_factory=list)  # first publish -> Ack, seconds
    p1_latencies: list[float] = field(default_factory=list)
    backlog_left: int = 0
    unacked: int = 0
    drained_s: float | None = None  # start -> nothing left unacknowledged (checked once a second)
    protocol_errors: int = 0  # mqtt_lite: malformed/refused/unexpected packets, connections lost
    protocol_notes: list[str] = field(default_factory=list)


class Post:
    __slots__ = (
        "acked_sent",
        "backlog",
        "backoff",
        "boot",
        "budget",
        "client",
        "key",
        "next_hb",
        "next_round",
        "node",
        "packed",
        "prefix_bytes",
        "ready",
        "requeued",
        "rttvar",
        "seq",
        "sim",
        "spec",
        "srtt",
        "t_event",
        "t_p1",
        "topics",
        "unacked",
        "unconfirmed",
        "urgent",
    )

    def __init__(self, sim: Fleet, node: str, spec: SimSpec) -> None:
        self.sim, self.node, self.spec = sim, node, spec
        self.key = node_key(spec.seed, node)
        self.topics = Topics(spec.prefix)
        self.seq = 0
        self.boot = uuid.uuid4().hex[:16]
        self.unacked: dict[str, tuple[float, float, bytes, int]] = {}  # id -> (first, last, body, prio)
        self.backlog: deque[tuple[str, bytes]] = deque()
        self.urgent: deque[tuple[str, bytes]] = deque()
        self.ready: dict[tuple[int, str], deque[tuple[str, bytes]]] = {}  # pre-signed (presign_s)
        self.prefix_bytes = batch_prefix(node)
        #: Envelope bytes (each + 1 for its comma) one batch may carry: the post's own budget.
        self.budget = MAX_BATCH_BYTES - len(self.prefix_bytes) - 2 - (
            SIG_MEMBER_BYTES if spec.signed and spec.batch_sig else 0)
        #: Events an ack timeout took back (id -> (first publish, body, priority)), sent again
        #: as batches ahead of the backlog, paced like it: a post releases them to ``ready`` and
        #: claims them again (edge/sync/uplink.py), it does not resend them one message each.
        self.requeued: dict[str, tuple[float, bytes, int]] = {}
        #: The backlog's batches signed ahead (presign_s): (first event id, events, body).
        self.packed: deque[tuple[str, int, bytes]] = deque()
        self.next_hb = 0.0
        self.backoff = spec.ack_timeout
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.acked_sent = float("-inf")  # latest send time of an acked non-P1 event (loss evidence)
        self.next_round = float("-inf")  # resend rounds are a timeout apart (as the post's)
        self.unconfirmed: set[int] = set()  # mids of backlog messages the broker has not PUBACKed
        self.t_event = mqtt_lite.utf8(self.topics.up(node, "event"))  # topics encoded once
        self.t_p1 = mqtt_lite.utf8(self.topics.up(node, "event/p1"))
        self.client = mqtt_lite.Client(sim.hub, f"sim-{node}", self)

    def envelope(self, priority: int, etype: str) -> tuple[str, bytes]:
        """A signed envelope (event id, body): a pre-signed one when there is one left."""
        ready = self.ready.get((priority, etype))
        if ready:
            return ready.popleft()
        return self.make_envelope(priority, etype)

    def make_envelope(self, priority: int, etype: str) -> tuple[str, bytes]:
        self.seq += 1
        event_id = uuid.uuid4().hex
        data: dict[str, Any] = {"v": 1, "kind": "event", "event_id": event_id, "node_id": self.node,
                                "boot_id": self.boot, "seq": self.seq, "mono_ns": time.monotonic_ns(),
                                "wall_time": time.time(), "time_quality": "synced", "type": etype,
                                "priority": priority, "incident_id": None,
                                "payload": {"note": "x" * self.spec.payload_bytes}}
        if self.spec.signed:
            data["sig"] = sign_bytes(self.key, canonical_bytes(data))
        return event_id, envelope_json(data)  # canonical form with sig in its sorted place, as a post sends

    def batch_body(self, bodies: list[bytes]) -> bytes:
        """An ``event_batch`` of envelope bodies: signed once as a whole (``batch_sig``), as a post
        sends it, or the old form (envelope signatures only)."""
        if self.spec.signed and self.spec.batch_sig:
            return sign_batch(canonical_batch(self.node, bodies), lambda data: sign_bytes(self.key, data))
        return join_batch(self.prefix_bytes, bodies)

    def _chunk(self, items: deque[tuple[str, bytes]] | list[tuple[str, bytes]], start: int) -> int:
        """End index of the next backlog batch from ``items[start:]``: as many envelopes as the
        post's batch builder puts in one (``batch_events``, ``budget``), at least one."""
        end, size, limit = start, 0, min(len(items), start + self.spec.batch_events)
        while end < limit:
            grown = size + len(items[end][1]) + 1
            if end > start and grown > self.budget:
                break
            size = grown
            end += 1
        return end

    def pack_backlog(self) -> None:
        """Sign the backlog's batches ahead, chunked exactly as ``pump`` will take them."""
        items, start = list(self.backlog), 0
        while start < len(items):
            end = self._chunk(items, start)
            self.packed.append((items[start][0], end - start, self.batch_body([b for _i, b in items[start:end]])))
            start = end

    def signed(self, msg: Presence | Heartbeat) -> Presence | Heartbeat:
        """Presence and heartbeats carry the node key's signature too (central drops them unsigned)."""
        return MessageSigner(self.key).sign(msg) if self.spec.signed else msg

    def mqtt_connected(self, client: mqtt_lite.Client) -> None:
        client.subscribe(self.topics.down(self.node, "ack"), qos=1)
        presence = Presence(node_id=self.node, state="online", boot_id=self.boot, version="bench", at=time.time())
        client.publish(mqtt_lite.utf8(self.topics.up(self.node, "presence")), encode(self.signed(presence)), qos=1,
                       retain=True)
        self.sim.result.connected += 1

    def mqtt_message(self, client: mqtt_lite.Client, topic: str, payload: bytes) -> None:
        now = time.monotonic()
        data = json.loads(payload)
        res = self.sim.result
        oldest = now
        for kind, ids in (("ok", data.get("event_ids", ())),
                          ("rej", [r["event_id"] for r in data.get("rejected", ())])):
            for event_id in ids:
                entry = self.unacked.pop(event_id, None)
                if entry is None:
                    again = self.requeued.pop(event_id, None)  # taken back, not yet sent again
                    if again is None:
                        res.duplicate_acks += 1
                        continue
                    entry = (again[0], -1.0, again[1], again[2])  # no round-trip sample (Karn)
                if entry[0] == entry[1]:  # never resent (Karn's rule, as the post)
                    oldest = min(oldest, entry[1])
                    if entry[3] != 1:
                        self.acked_sent = max(self.acked_sent, entry[1])
                if kind == "ok":
                    res.acked += 1
                else:
                    res.rejected += 1
                if self.sim.measuring:
                    res.latencies.append(now - entry[0])
                    if entry[3] == 1:
                        res.p1_latencies.append(now - entry[0])
        if oldest < now:  # the post's adaptive ack timeout (edge/sync/uplink.py: RFC 6298 style)
            sample = now - oldest
            if self.srtt is None:
                self.srtt, self.rttvar = sample, sample / 2
            else:
                self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
                self.srtt = 0.875 * self.srtt + 0.125 * sample
        self.backoff = self.base_timeout()  # progress: back to the base ack timeout
        if self.backlog or self.requeued:
            self.sim.active.add(self)

    def mqtt_published(self, client: mqtt_lite.Client, mid: int) -> None:
        if mid in self.unconfirmed:
            self.unconfirmed.discard(mid)
            if self.backlog or self.requeued:
                self.sim.active.add(self)

    def _room(self) -> bool:
        """Room for one more backlog message: the in-flight window (central's Acks) and the
        broker-level window (PUBACKs)."""
        limit = self.spec.mqtt_window
        return len(self.unacked) < self.spec.window and (limit <= 0 or len(self.unconfirmed) < limit)

    def publish(self, event_id: str, body: bytes, prio: int, now: float) -> None:
        self.unacked[event_id] = (now, now, body, prio)
        self._send(body, prio)
        self.sim.result.offered += 1
        self.sim.result.sent_msgs += 1

    def _send(self, body: bytes, prio: int) -> None:
        if prio == 1 and self.spec.p1_channel:
            self.client.publish(self.t_p1, body, 1)
        self.client.publish(self.t_event, body, 1)

    def pump(self, now: float) -> None:
        """Urgent first, then what an ack timeout took back, then backlog batches, within the
        windows."""
        while self.urgent:
            event_id, body = self.urgent.popleft()
            self.publish(event_id, body, 1, now)
        while self.requeued and self._room():
            self._send_requeued(now)
        while self.backlog and self._room() and not self.requeued:
            chunk = [self.backlog.popleft() for _ in range(self._chunk(self.backlog, 0))]
            for event_id, body in chunk:
                self.unacked[event_id] = (now, now, body, 3)
            packed = self.packed[0] if self.packed else None
            if packed is not None and packed[:2] == (chunk[0][0], len(chunk)):
                batch = self.packed.popleft()[2]
            else:
                batch = self.batch_body([b for _i, b in chunk])
            self.unconfirmed.add(self.client.publish(self.t_event, batch, 1))
            self.sim.result.offered += len(chunk)
            self.sim.result.sent_msgs += 1
        if not (self.backlog or self.requeued) or not self._room():
            self.sim.active.discard(self)

    def _send_requeued(self, now: float) -> None:
        """One batch (or a single envelope, as the post's builder sends one event) of the events
        an ack timeout took back, oldest first; their latency still counts from the first copy."""
        items = list(self.requeued.items())
        chunk = [(event_id, entry[1]) for event_id, entry in items[:self._chunk([(i, e[1]) for i, e in items], 0)]]
        for event_id, _body in chunk:
            first, body, prio = self.requeued.pop(event_id)
            self.unacked[event_id] = (first, now, body, prio)
        body = chunk[0][1] if len(chunk) == 1 else self.batch_body([b for _i, b in chunk])
        mid = self.client.publish(self.t_event, body, 1)
        self.unconfirmed.add(mid)
        self.sim.result.resent += len(chunk)
        self.sim.result.resent_msgs += 1
        self.sim.result.sent_msgs += 1

    def base_timeout(self) -> float:
        if self.srtt is None or not self.spec.adaptive_timeout:
            return self.spec.ack_timeout
        return min(max(self.spec.ack_timeout, self.srtt + 4 * self.rttvar), self.spec.ack_timeout * 16)

    def resend(self, now: float) -> None:
        """Resend what has no Ack after the ack timeout; without progress the timeout doubles
        (with jitter, up to 8x), as a real post backs off."""
        if self.spec.adaptive_timeout and now < self.next_round:
            return
        due = [(i, e) for i, e in self.unacked.items() if now - e[1] > self.backoff]
        if self.spec.adaptive_timeout and due:  # as a post: resend what was overtaken, else probe
            lost = [(i, e) for i, e in due if e[1] < self.acked_sent]
            due = lost or sorted(due, key=lambda d: d[1][1])[:20]
        for event_id, (first, _last, body, prio) in due[: self.spec.window]:
            if prio == 1:  # an alarm goes again at once, on its own (a post's P1 wake-up)
                self.unacked[event_id] = (first, now, body, prio)
                self._send(body, prio)
                self.sim.result.resent += 1
                self.sim.result.resent_msgs += 1
            else:  # back to "ready": sent again in batches, paced (``_send_requeued``)
                del self.unacked[event_id]
                self.requeued[event_id] = (first, body, prio)
        if self.requeued:
            self.sim.active.add(self)
        if due:
            self.backoff = min(self.backoff * 2, self.base_timeout() * 8) * random.uniform(0.8, 1.2)
            self.next_round = now + self.backoff

    def heartbeat(self) -> None:
        hb = Heartbeat(node_id=self.node, boot_id=self.boot, at=time.time(), version="bench",
                       time_quality="synced", outbox={"ready": len(self.backlog), "in_flight": len(self.unacked)})
        self.client.publish(mqtt_lite.utf8(self.topics.up(self.node, "heartbeat")), encode(self.signed(hb)), 0)
        self.sim.result.heartbeats += 1


class Fleet:
    def __init__(self, spec: SimSpec) -> None:
        self.spec = spec
        self.hub = mqtt_lite.Hub()
        self.result = SimResult(nodes=len(spec.nodes))
        self.measuring = False
        self.running = True
        self.posts = [Post(self, n, spec) for n in spec.nodes]
        self.active: set[Post] = set()  # posts with something to send now
        self.busy = False  # the last wait found many sockets ready (``poll``)

    def connect_all(self, *, keepalive: int = 120, serve_every: int = 0, wait_s: float = 300) -> None:
        """Connect every post; with ``serve_every`` the posts already connected are served after
        each that many connects (a busy broker accepts slowly: without it the first posts of a
        large fleet may miss their keepalive before the last ones are in)."""
        for i, post in enumerate(self.posts):
            for attempt in range(50):
                try:
                    post.client.connect("127.0.0.1", self.spec.port, keepalive=keepalive, clean_start=True,
                                        session_expiry=0)
                    break
                except OSError:
                    if attempt == 49:
                        raise
                    time.sleep(0.05 * (attempt + 1))
            if serve_every and i % serve_every == serve_every - 1:
                self.poll(0)
        deadline = time.monotonic() + wait_s
        while self.result.connected < len(self.posts) and time.monotonic() < deadline and not self.hub.errors:
            self.poll(0.05)

    def poll(self, timeout: float) -> None:
        """Send what the last loop turn queued (one send per socket), then wait and read. Under load
        (the last wait found ``coalesce_fds`` sockets ready or more) sleep ``coalesce_s`` first and
        serve whatever is ready then: fewer wakeups (a context switch per wakeup was ~17 % of the
        simulator's CPU at 3,000 ev/s), at the cost of up to ``coalesce_s`` more measured
        publish->Ack time under load only."""
        self.hub.flush()
        if self.busy:
            time.sleep(self.spec.coalesce_s)
            timeout = 0
        self.busy = self.spec.coalesce_s > 0 and self.hub.poll(timeout) >= self.spec.coalesce_fds

    def presign(self) -> None:
        """Sign the window's load ahead (``presign_s``), in the order ``run`` will take it: the
        same posts, types and priorities as signing live (a little spare for rate jitter)."""
        spec, n = self.spec, len(self.posts)
        bulk = int(spec.rate * spec.presign_s) + 2 * n
        for rr in range(1, bulk + 1):
            post = self.posts[(rr - 1) % n]
            etype = "PANIC" if rr % 50 == 0 else "STATUS"
            post.ready.setdefault((2, etype), deque()).append(post.make_envelope(2, etype))
        for k in range(int(spec.p1_rate * spec.presign_s) + n):
            post = self.posts[k % n]
            post.ready.setdefault((1, "PANIC"), deque()).append(post.make_envelope(1, "PANIC"))

    def run(self, start_signal: bool) -> None:
        spec = self.spec
        for post in self.posts:
            for _ in range(spec.backlog):
                post.backlog.append(post.make_envelope(3, "STATUS"))
            if post.backlog:
                self.active.add(post)
                if spec.presign_s > 0:
                    post.pack_backlog()
        if spec.presign_s > 0:
            self.presign()
        started = spec.start_now or not start_signal
        if not started:
            def go(*_a: Any) -> None:
                nonlocal started
                started = True
            signal.signal(signal.SIGUSR1, go)
        print("ready", flush=True)
        while not started and self.running:
            self.poll(0.05)
            self._misc()
        self.measuring = True
        self.result.start = time.monotonic()
        n = len(self.posts)
        hb_every = spec.heartbeat_s / max(n, 1)
        now = time.monotonic()
        next_resend = now + 1.0
        owed = owed_p1 = 0.0
        rr = hb_rr = 0
        last = now
        next_hb = now
        next_misc = now + 1.0
        while self.running:
            self.poll(0.005)
            now = time.monotonic()
            dt, last = now - last, now
            owed += spec.rate * dt
            owed_p1 += spec.p1_rate * dt
            while owed >= 1:
                owed -= 1
                post = self.posts[rr % n]
                rr += 1
                event_id, body = post.envelope(2, "PANIC" if rr % 50 == 0 else "STATUS")
                post.publish(event_id, body, 2, now)
            while owed_p1 >= 1:
                owed_p1 -= 1
                post = self.posts[rr % n]
                rr += 1
                post.urgent.append(post.envelope(1, "PANIC"))
                self.active.add(post)
            for post in list(self.active):
                post.pump(now)
            if spec.heartbeat_s > 0:
                while next_hb <= now:
                    self.posts[hb_rr % n].heartbeat()
                    hb_rr += 1
                    next_hb += hb_every
            if now >= next_resend:
                for post in self.posts:
                    post.resend(now)
                next_resend = now + 1.0
                self._check_drained(now)
            if now >= next_misc:
                self._misc()
                next_misc = now + 1.0
        self.result.end = time.monotonic()
        self.result.backlog_left = sum(len(p.backlog) for p in self.posts)
        self.result.unacked = sum(len(p.unacked) + len(p.requeued) for p in self.posts)

    def _check_drained(self, now: float) -> None:
        if self.result.drained_s is None and self.spec.backlog and not any(p.unacked or p.backlog or p.requeued
                                                                           for p in self.posts):
            self.result.drained_s = now - self.result.start

    def _misc(self) -> None:
        self.hub.flush_lazy()
        self.hub.tick(time.monotonic())
        self.result.protocol_errors = self.hub.errors
        self.result.protocol_notes = list(self.hub.notes)

    def drain(self, seconds: float) -> None:
        """No new load; keep sending backlog, resending and counting Acks until all are acked
        or ``seconds`` pass."""
        end = time.monotonic() + seconds
        next_resend = time.monotonic() + 1.0
        while time.monotonic() < end and any(p.unacked or p.backlog or p.requeued for p in self.posts):
            self.poll(0.01)
            now = time.monotonic()
            for post in list(self.active):
                post.pump(now)
            if now >= next_resend:
                for post in self.posts:
                    post.resend(now)
                self._misc()
                next_resend = now + 1.0
                self._check_drained(now)
        self._check_drained(time.monotonic())
        self.result.backlog_left = sum(len(p.backlog) for p in self.posts)
        self.result.unacked = sum(len(p.unacked) + len(p.requeued) for p in self.posts)
        self._misc()


def main() -> None:
    spec = SimSpec(**json.loads(Path(sys.argv[1]).read_text()))
    out = Path(sys.argv[2])
    fleet = Fleet(spec)

    def stop(*_a: Any) -> None:
        fleet.running = False

    signal.signal(signal.SIGTERM, stop)
    fleet.connect_all()
    fleet.run(start_signal=True)
    fleet.drain(spec.drain_s)
    fleet.hub.close_all()
    out.write_text(json.dumps(asdict(fleet.result)))
    if fleet.result.protocol_errors:
        print(f"MQTT protocol errors: {fleet.result.protocol_errors}: {fleet.result.protocol_notes}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
