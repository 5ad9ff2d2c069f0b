"""Event and snapshot uplink: store-and-forward from the outbox to central.

Nothing leaves the outbox until central acknowledges it: an event is ``claim``-ed into the
in-flight window, published QoS 1, and stays ``in_flight`` until an ``Ack`` on
``{prefix}/down/{node}/ack`` names it. Ack timeout or a lost connection puts it back to ``ready``
(resent later; central de-duplicates by ``event_id``).

Window: at most ``cfg.sync.inflight_window`` events are in flight. ``p1_reserve`` slots are kept
for P1 events: backlog claims stop ``p1_reserve`` short of the window, and a P1 wake-up claims only
P1 events into the reserved slots, so a window full of backlog never delays an alarm.

Batching: the events of one claim are published as ``event_batch`` messages of up to
``MAX_BATCH_EVENTS`` envelopes / ``MAX_BATCH_BYTES`` (a claim of one event goes as a plain
``event``). Nothing ever waits to fill a batch: a claim is published at once, and a P1 wake-up
claims P1 events only, so an alarm leaves in its own small message. Each envelope keeps its own
signature and is acked or rejected on its own.

P1 channel: with ``p1_topic`` set, the P1 events of every claim are published FIRST on
``{prefix}/up/{node}/event/p1`` (central's priority lane: its own connection, queue and commits,
so an alarm is not queued behind other posts' backlogs at the broker or at central) and then,
with the rest of the claim, on the normal ``event`` topic as before. The second copy is what an
older central (which does not consume the P1 channel) acknowledges; a newer one finds it a
duplicate by ``event_id`` and acknowledges it again. One window slot either way.

Central presence (``edge.sync.presence``): while no central is online the lane is idle: nothing is
claimed, published or timed out. The moment one comes online everything still in flight goes back
to ``ready`` and is resent at once (with the backlog behind it), so a PANIC published before
central's first subscription is acknowledged right after central is up, not an ack timeout later.

Ack timeouts adapt and back off: the base limit is ``ack_timeout_s`` or, when Acks take longer,
the smoothed publish->Ack time plus four times its deviation (RFC 6298's retransmission timer,
capped at ``MAX_ADAPTIVE_FACTOR * ack_timeout_s``): when a whole fleet reconnects with a backlog,
central acknowledges every post's events minutes after they were published, and resending what
still waits in the broker's queue only multiplies the queue (measured: 1.5 million resends for
a million events). After a round of timeouts the next limit is the base times ``2**n`` (``n``
capped by ``MAX_TIMEOUT_DOUBLINGS``) times a random factor in [1, 1 + ``TIMEOUT_JITTER``]; any
ack resets ``n``. One check runs per ``TICK_S`` (one timer for the whole window). What an
overdue round resends: the overdue events published BEFORE an event central has since
acknowledged (evidence they were lost: the broker and central keep a post's order); with no
such evidence (no Ack at all since: central slow, absent or everything lost) only the oldest
``PROBE_EVENTS`` go again as a probe, and their Ack is then the evidence for the rest. P1 Acks
(they overtake everything on their own channel) are no evidence, nor are Acks of resent events
(Karn's rule: the Ack may be for the first copy, so neither the resend's time nor its round trip
is known); those give no round-trip sample either.

Snapshots have their own lane (:class:`SnapshotUplink`) with a byte budget (token bucket), so they
never delay events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.clock import Clock
from edge.errors import KentonganError
from edge.logs import log_event
from edge.outbox import Outbox, StoredEvent
from edge.snapshots import SnapshotStore, StoredSnapshot
from edge.sync.transport import raise_if_cancelling
from edge.sync.wire import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    Ack,
    EventEnvelope,
    SnapshotEnvelope,
    b64,
    batch_prefix,
    encode,
    envelope_json,
    join_batch,
)

__all__ = ["EventUplink", "Publisher", "SnapshotUplink", "UplinkStats", "envelope_for"]

log = logging.getLogger(__name__)

#: A claim is made once at least this fraction of the window is free (avoids 1-event claims).
CLAIM_FRACTION = 0.25
#: How often ack timeouts are checked and the outbox is polled without a wake-up.
TICK_S = 0.5
#: Ack-timeout backoff: at most this many doublings of ``ack_timeout_s``.
MAX_TIMEOUT_DOUBLINGS = 3
#: Ack timeouts are stretched by a random factor in [1, 1 + this] so posts do not resend in step.
TIMEOUT_JITTER = 0.25
#: Ack round-trip smoothing (RFC 6298: alpha, beta, K) for the adaptive ack timeout.
RTT_ALPHA, RTT_BETA, RTT_K = 0.125, 0.25, 4.0
#: The adaptive base timeout is at most this many times ``ack_timeout_s``.
MAX_ADAPTIVE_FACTOR = 16.0
#: Overdue events resent in a round without evidence of loss (see the module doc).
PROBE_EVENTS = 20
#: Resent event ids remembered for Karn's rule at most (then forgotten at once).
MAX_RESENT_TRACKED = 100_000


class Publisher(Protocol):
    async def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      retain: bool = False) -> None: ...

    def publish_nowait(self, topic: str, payload: bytes) -> None:
        """QoS 1 publish handed to the client's ordered send queue (no PUBACK wait)."""
        ...


@dataclass
class UplinkStats:
    published: int = 0  # events
    messages: int = 0  # event messages (a batch counts once)
    acked: int = 0
    rejected: int = 0
    requeued: int = 0
    snapshots_published: int = 0
    snapshots_acked: int = 0
    reconnects: int = 0
    ack_timeouts: int = 0  # rounds of ack timeouts (each releases every overdue event)
    central_resends: int = 0  # events resent at once because central came online
    p1_messages: int = 0  # messages published on the P1 channel (their events also go on ``event``)
    last_connect_mono: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def envelope_for(ev: StoredEvent, clock: Clock, boot_id: str,
                 sign: Callable[[EventEnvelope], EventEnvelope] | None) -> EventEnvelope:
    """Wire form of ``ev``: events recorded ``unsynced`` in this boot are sent on central's time
    line (quality ``corrected``) once an offset is known, placed by their monotonic stamp so a
    wall-clock step in between does not move them (``Clock.anchor``); then signed."""
    env = ev.envelope()
    anchor = clock.anchor()
    if ev.time_quality == "unsynced" and ev.boot_id == boot_id and anchor is not None:
        env = env.model_copy(update={"wall_time": max(0.0, anchor + ev.mono_ns / 1e9),
                                     "time_quality": "corrected"})
    return sign(env) if sign is not None else env


def envelope_dict(ev: StoredEvent, anchor: float | None, boot_id: str) -> dict[str, Any]:
    """The unsigned wire form of ``ev`` as a dict, equal to
    ``envelope_for(ev, clock, boot_id, None).model_dump(mode="json")`` without ``sig`` (built
    directly: the outbox holds validated events, and central validates every envelope anyway).
    ``anchor``: ``clock.anchor()``."""
    wall, quality = max(ev.wall_time, 0.0), ev.time_quality
    if quality == "unsynced" and ev.boot_id == boot_id and anchor is not None:
        wall, quality = max(0.0, anchor + ev.mono_ns / 1e9), "corrected"
    return {"v": 1, "kind": "event", "event_id": ev.event_id, "node_id": ev.node_id,
            "boot_id": ev.boot_id, "seq": ev.seq, "mono_ns": ev.mono_ns, "wall_time": wall,
            "time_quality": quality, "type": ev.type, "priority": ev.priority,
            "incident_id": ev.incident_id, "payload": ev.payload}


class EventUplink:
    """The event lane for one connection at a time (``attach``/``detach`` per connection)."""

    def __init__(self, outbox: Outbox, clock: Clock, *, node_id: str, topic: str, window: int,
                 ack_timeout_s: float, sign_event: Callable[[EventEnvelope], EventEnvelope] | None,
                 stats: UplinkStats, p1_reserve: int | None = None,
                 rng: random.Random | None = None, p1_topic: str | None = None) -> None:
        self.outbox = outbox
        self.clock = clock
        self.node_id = node_id
        self.topic = topic
        self.p1_topic = p1_topic
        self.window = window
        self.p1_reserve = p1_reserve if p1_reserve is not None else min(20, max(1, window // 10))
        if self.p1_reserve >= window:
            self.p1_reserve = max(0, window - 1)
        self.ack_timeout_s = ack_timeout_s
        self.sign_event = sign_event
        self.stats = stats
        self.inflight: dict[str, float] = {}  # event_id -> monotonic publish time
        self._wake = asyncio.Event()
        self._p1 = False
        self._maybe_ready = True
        self._pending_acks: list[str] = []
        self._ack_flush = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._batch_prefix = batch_prefix(node_id)
        self._rng = rng or random.Random()
        self.central_present = True
        self._resend = False
        #: Backoff settings (benchmarks set 0 / 0.0 to reproduce a fixed ack timeout).
        self.max_doublings = MAX_TIMEOUT_DOUBLINGS
        self.jitter = TIMEOUT_JITTER
        self.timeout_doublings = 0
        self.srtt: float | None = None  # smoothed publish->Ack time (s)
        self._p1_ids: set[str] = set()  # P1 events in flight
        self._resent: set[str] = set()  # events released by an ack timeout and not acked since
        self._next_round = float("-inf")  # no timeout round before this (monotonic)
        self._acked_sent = float("-inf")  # latest publish time of an acknowledged non-P1 event
        self.rttvar = 0.0
        self.current_timeout_s = self._timeout_for(0)

    # ------------------------------------------------------------ signals (loop thread)

    def poke(self, p1: bool = False) -> None:
        """New events may be ready (``p1``: a P1 among them)."""
        self._maybe_ready = True
        self._p1 = self._p1 or p1
        self._wake.set()

    def set_central(self, present: bool) -> None:
        """Central presence changed: ``False`` -> idle window; ``True`` -> resend at once."""
        if present:
            self._resend = True
            self._reset_timeout()
        self.central_present = present
        self._wake.set()

    def base_timeout_s(self) -> float:
        """``ack_timeout_s``, or more while Acks are slower (RTT estimate, capped)."""
        if self.srtt is None:
            return self.ack_timeout_s
        adaptive = self.srtt + RTT_K * self.rttvar
        return min(max(self.ack_timeout_s, adaptive), self.ack_timeout_s * MAX_ADAPTIVE_FACTOR)

    def _timeout_for(self, doublings: int) -> float:
        return self.base_timeout_s() * (2 ** doublings) * self._rng.uniform(1.0, 1.0 + self.jitter)

    def _observe(self, sample: float) -> None:
        """One publish->Ack time (the slowest event of one Ack)."""
        if self.srtt is None:
            self.srtt, self.rttvar = sample, sample / 2
        else:
            self.rttvar = (1 - RTT_BETA) * self.rttvar + RTT_BETA * abs(self.srtt - sample)
            self.srtt = (1 - RTT_ALPHA) * self.srtt + RTT_ALPHA * sample

    def _reset_timeout(self) -> None:
        self.timeout_doublings = 0
        self.current_timeout_s = self._timeout_for(0)

    def on_ack(self, ack: Ack) -> None:
        """Central committed these events: free their window slots now, commit the outbox ack in
        the background (batched)."""
        ids = list(ack.event_ids)
        for r in ack.rejected:
            ids.append(r.event_id)
            self.stats.rejected += 1
            log_event(log, "event_rejected", logging.WARNING, node_id=self.node_id,
                      event_id=r.event_id, reason=r.reason)
            self._spawn(self._mark_rejected(r.event_id, r.reason))
        now = time.monotonic()
        sent: list[float] = []
        for i in ids:
            t = self.inflight.pop(i, None)
            if t is None:
                continue
            if i in self._resent:
                self._resent.discard(i)
                self._p1_ids.discard(i)
                continue
            sent.append(t)
            if i in self._p1_ids:
                self._p1_ids.discard(i)
            elif t > self._acked_sent:
                self._acked_sent = t
        if sent:
            self._observe(now - min(sent))
        if ids:
            self._reset_timeout()
        self._pending_acks.extend(ids)
        self._ack_flush.set()
        self._wake.set()

    async def _mark_rejected(self, event_id: str, reason: str) -> None:
        try:
            await asyncio.to_thread(self.outbox.mark, event_id, "rejected", reason)
        except Exception as exc:  # flag is diagnostics only
            log_event(log, "mark_rejected_failed", logging.WARNING, event_id=event_id,
                      error=repr(exc))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ tasks

    async def ack_writer(self) -> None:
        """Commit acks to the outbox in batches (runs for the life of the service)."""
        while True:
            await self._ack_flush.wait()
            self._ack_flush.clear()
            batch, self._pending_acks = self._pending_acks, []
            if not batch:
                continue
            try:
                n = await asyncio.to_thread(self.outbox.ack, batch)
                self.stats.acked += n
            except KentonganError as exc:
                log_event(log, "outbox_ack_failed", logging.ERROR, count=len(batch),
                          error=str(exc))
                self._pending_acks.extend(batch)
                await asyncio.sleep(1.0)
                self._ack_flush.set()

    def cancel_tasks(self) -> None:
        for t in list(self._tasks):
            t.cancel()

    async def flush_acks(self) -> None:
        """Commit any acks still pending (on stop)."""
        batch, self._pending_acks = self._pending_acks, []
        if batch:
            self.stats.acked += await asyncio.to_thread(self.outbox.ack, batch)

    async def run(self, pub: Publisher) -> None:
        """Claim and publish while connected; returns only by cancellation or publish failure."""
        self._maybe_ready = True
        next_tick = 0.0
        while True:
            raise_if_cancelling()
            if self._resend:
                self._resend = False
                await self._resend_inflight()
            if not self.central_present:  # idle until a central is online again
                self._wake.clear()
                await self._wake.wait()
                next_tick = 0.0
                continue
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                await self._expire(now)
                self._maybe_ready = True
            events = await self._claim()
            for ev in events:
                self.inflight[ev.event_id] = time.monotonic()
                if ev.priority == 1:
                    self._p1_ids.add(ev.event_id)
            if self.p1_topic is not None:
                self._publish_p1(pub, self.p1_topic, events)
            start = 0
            while start < len(events):
                body, count = self._next_message(events, start)
                # Raises when the connection is gone: the session ends, detach() releases all.
                pub.publish_nowait(self.topic, body)
                start += count
                self.stats.published += count
                self.stats.messages += 1
                await asyncio.sleep(0)  # let acks, P1 wake-ups and the socket writer in
            if not events:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.01, next_tick - time.monotonic()))

    def _publish_p1(self, pub: Publisher, topic: str, events: list[StoredEvent]) -> None:
        """The P1 events of a claim on the P1 channel (before the whole claim goes on ``event``)."""
        urgent = [ev for ev in events if ev.priority == 1]
        start = 0
        while start < len(urgent):
            body, count = self._next_message(urgent, start)
            pub.publish_nowait(topic, body)
            start += count
            self.stats.p1_messages += 1

    def _body(self, ev: StoredEvent, anchor: float | None) -> bytes:
        if self.sign_event is not None:
            return encode(envelope_for(ev, self.clock, self.outbox.boot_id, self.sign_event))
        return envelope_json(envelope_dict(ev, anchor, self.outbox.boot_id))

    def _next_message(self, events: list[StoredEvent], start: int) -> tuple[bytes, int]:
        """The next message from ``events[start:]``: as many envelopes as fit one batch (in claim
        order, so P1s first), or a plain envelope when only one fits or is left."""
        anchor = self.clock.anchor()
        budget = MAX_BATCH_BYTES - len(self._batch_prefix) - 2
        bodies: list[bytes] = []
        size = 0
        for ev in events[start:start + MAX_BATCH_EVENTS]:
            body = self._body(ev, anchor)
            if bodies and size + len(body) + 1 > budget:
                break
            bodies.append(body)
            size += len(body) + 1
        if len(bodies) == 1:
            return bodies[0], 1
        return join_batch(self._batch_prefix, bodies), len(bodies)

    async def _claim(self) -> list[StoredEvent]:
        free = self.window - len(self.inflight)
        if free <= 0:
            return []
        if self._p1:
            self._p1 = False
            p1 = await self._claim_p1(free)
            if p1:
                return p1
        backlog_free = free - self.p1_reserve
        if not self._maybe_ready or backlog_free <= 0:
            return []
        if backlog_free < self.window * CLAIM_FRACTION and self.inflight:
            return []
        events = await asyncio.to_thread(self.outbox.claim, backlog_free)
        if len(events) < backlog_free:
            self._maybe_ready = False
        return events

    async def _claim_p1(self, free: int) -> list[StoredEvent]:
        """Claim only ready P1 events, in one statement through the claim index (O(P1 rows))."""
        return await asyncio.to_thread(self.outbox.claim, free, 1)

    async def _expire(self, now: float) -> None:
        limit = self.current_timeout_s
        if now < self._next_round:  # rounds are a timeout apart (a probe leaves the rest overdue)
            return
        old = [i for i, t in self.inflight.items() if now - t > limit]
        if not old:
            return
        lost = [i for i in old if self.inflight[i] < self._acked_sent]
        old = lost or sorted(old, key=self.inflight.__getitem__)[:PROBE_EVENTS]
        self._mark_resent(old)
        for i in old:
            self.inflight.pop(i, None)
            self._p1_ids.discard(i)
        n = await asyncio.to_thread(self.outbox.release, old)
        self.stats.requeued += n
        self.stats.ack_timeouts += 1
        self.timeout_doublings = min(self.max_doublings, self.timeout_doublings + 1)
        self.current_timeout_s = self._timeout_for(self.timeout_doublings)
        self._next_round = now + self.current_timeout_s
        log_event(log, "ack_timeout_requeued", logging.WARNING, node_id=self.node_id,
                  count=len(old), requeued=n, timeout_s=round(limit, 2),
                  next_timeout_s=round(self.current_timeout_s, 2))

    def _mark_resent(self, ids: list[str]) -> None:
        if len(self._resent) + len(ids) > MAX_RESENT_TRACKED:  # bounded; only costs accuracy
            self._resent.clear()
        self._resent.update(ids)

    async def _resend_inflight(self) -> None:
        """Central just came online: everything in flight goes back to ready and is claimed again
        in this same pass (priority order), without waiting for an ack timeout."""
        ids = list(self.inflight)
        self._mark_resent(ids)
        self.inflight.clear()
        self._p1_ids.clear()
        self._maybe_ready = True
        self._p1 = True
        if ids:
            n = await asyncio.to_thread(self.outbox.release, ids)
            self.stats.requeued += n
            self.stats.central_resends += n
            log_event(log, "central_online_resend", node_id=self.node_id, count=len(ids),
                      requeued=n)

    async def detach(self) -> None:
        """Connection gone: cancel publishes, put everything in flight back to ready."""
        for t in list(self._tasks):
            t.cancel()
        self._mark_resent(list(self.inflight))
        self.inflight.clear()
        self._p1_ids.clear()
        n = await asyncio.to_thread(self.outbox.release, None)
        self.stats.requeued += n


class SnapshotUplink:
    """Snapshot lane: byte-budgeted (token bucket), acked by ``snapshot_ids`` in ``Ack``."""

    def __init__(self, store: SnapshotStore, *, node_id: str, topic: str, bytes_per_second: int,
                 ack_timeout_s: float, stats: UplinkStats,
                 sign: Callable[[SnapshotEnvelope], SnapshotEnvelope] | None = None) -> None:
        self.store = store
        #: Signs each envelope (metadata + SHA-256 of the bytes as sent) with the node key.
        self.sign = sign
        self.node_id = node_id
        self.topic = topic
        self.rate = float(bytes_per_second)
        self.burst = float(max(bytes_per_second, 1))
        self.tokens = self.burst
        self.ack_timeout_s = ack_timeout_s
        self.stats = stats
        self.inflight: dict[str, float] = {}
        self._wake = asyncio.Event()

    def poke(self) -> None:
        self._wake.set()

    def on_ack(self, snapshot_ids: Iterable[str]) -> list[str]:
        ids = [i for i in snapshot_ids]
        for i in ids:
            self.inflight.pop(i, None)
        self._wake.set()
        return ids

    async def commit_acks(self, ids: list[str]) -> None:
        if ids:
            self.stats.snapshots_acked += await asyncio.to_thread(self.store.ack, ids)

    async def run(self, pub: Publisher) -> None:
        last = time.monotonic()
        while True:
            raise_if_cancelling()
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - last) * self.rate)
            last = now
            old = [i for i, t in self.inflight.items() if now - t > self.ack_timeout_s]
            if old:
                for i in old:
                    self.inflight.pop(i, None)
                await asyncio.to_thread(self.store.release, old)
            snaps: list[StoredSnapshot] = []
            if self.tokens > 0 and len(self.inflight) < 8:
                snaps = await asyncio.to_thread(self.store.claim, int(self.tokens))
            for snap in snaps:
                await self._send(pub, snap)
            if not snaps:
                self._wake.clear()
                wait = 1.0 if self.tokens > 0 else max(0.05, -self.tokens / self.rate)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(wait, 5.0))
            elif self.tokens < 0:
                await asyncio.sleep(min(5.0, -self.tokens / self.rate))

    async def _send(self, pub: Publisher, snap: StoredSnapshot) -> None:
        try:
            data = await asyncio.to_thread(self.store.read, snap)
        except KentonganError as exc:
            log_event(log, "snapshot_unreadable", logging.ERROR, snapshot_id=snap.snapshot_id,
                      error=str(exc))
            await asyncio.to_thread(self.store.ack, [snap.snapshot_id])  # never retried forever
            return
        env = SnapshotEnvelope(snapshot_id=snap.snapshot_id, event_id=snap.event_id,
                               node_id=self.node_id, taken_at=snap.taken_at, sealed=snap.sealed,
                               # The camera's type, sealed or not: central allows only image types
                               # and checks a sealed one's bytes after unsealing (snapshot_policy).
                               content_type="image/jpeg", data=b64(data))
        if self.sign is not None:  # hashes up to 1 MiB: off the event loop
            env = await asyncio.to_thread(self.sign, env)
        body = encode(env)
        self.tokens -= len(body)
        self.inflight[snap.snapshot_id] = time.monotonic()
        await pub.publish(self.topic, body, qos=1)
        self.stats.snapshots_published += 1

    async def detach(self) -> None:
        self.inflight.clear()
        await asyncio.to_thread(self.store.release, None)
