"""Event and snapshot uplink: store-and-forward from the outbox to central.

Nothing leaves the outbox until central acknowledges it: an event is ``claim``-ed into the
in-flight window, published QoS 1, and stays ``in_flight`` until an ``Ack`` on
``{prefix}/down/{node}/ack`` names it. Ack timeout or a lost connection puts it back to ``ready``
(resent later; central de-duplicates by ``event_id``).

Window: at most ``cfg.sync.inflight_window`` events are in flight. ``p1_reserve`` slots are kept
for P1 events: backlog claims stop ``p1_reserve`` short of the window, and a P1 wake-up claims only
P1 events into the reserved slots, so a window full of backlog never delays an alarm.

Pacing (``edge.sync.uplink_pace``): a backlog message is handed to the MQTT client only while
fewer than ``MAX_UNCONFIRMED`` earlier ones wait for the broker's PUBACK; the rest of a claim
waits in the post (claimed, in the window) until a PUBACK or a P1 wakes the lane (no polling),
so a P1 recorded meanwhile is published at once, behind at most ``MAX_UNCONFIRMED`` backlog
messages instead of a whole claim. P1 messages are not paced. The ack timeout of a paced event
counts from its publish.

Batching: the events of one claim are published as ``event_batch`` messages of up to
``MAX_BATCH_EVENTS`` envelopes / ``MAX_BATCH_BYTES`` (a claim of one event goes as a plain
``event``). Nothing ever waits to fill a batch: a claim is published at once, and a P1 wake-up
claims P1 events only, so an alarm leaves in its own small message. Each envelope keeps its own
signature and is acked or rejected on its own.

P1 lane (``edge.sync.uplink_p1``): with ``p1_topic`` set, the P1 events of every claim are
published FIRST on the P1 channel, then with the rest of the claim on ``event``.

Unsendable records (``edge.sync.uplink_rejects``): a claimed record the builder cannot encode
leaves the window at once and moves to the outbox's terminal ``rejected_local`` status: a P1 one
(or one in an unpaced, P1-led message) at once in the background, a backlog one at the end of
its claim; all of them before a release puts the window back to ``ready``.

Central presence (``edge.sync.presence``): while no central is online the lane is idle: nothing is
claimed, published or timed out. The moment one comes online everything still in flight goes back
to ``ready`` and is resent at once (with the backlog behind it), so a PANIC published before
central's first subscription is acknowledged right after central is up, not an ack timeout later.

Ack timeouts adapt and back off, and an overdue round resends only what is evidently lost (or a
small probe): the policy is ``edge.sync.ack_timeout``. One check runs per ``TICK_S`` (one timer
for the whole window).

Snapshots have their own lane (``edge.sync.uplink_snapshot.SnapshotUplink``, re-exported here)
with a byte budget (token bucket), so they never delay events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable

from edge.clock import Clock
from edge.logs import log_event
from edge.outbox import Outbox, StoredEvent
from edge.sync.ack_timeout import (
    DEFAULT_BACKOFF,
    MAX_ADAPTIVE_FACTOR,
    PROBE_EVENTS,
    AckTimeout,
    Backoff,
    next_probe,
    overdue_to_resend,
)
from edge.sync.transport import raise_if_cancelling
from edge.sync.uplink_acks import OutboxAcks
from edge.sync.uplink_envelope import EventSign, MessageBuilder, envelope_for
from edge.sync.uplink_p1 import P1Lane
from edge.sync.uplink_pace import MAX_UNCONFIRMED, Pacer
from edge.sync.uplink_rejects import LocalRejects
from edge.sync.uplink_snapshot import SnapshotUplink
from edge.sync.uplink_types import Publisher, UplinkStats
from edge.sync.wire import Ack

__all__ = ["MAX_ADAPTIVE_FACTOR", "MAX_UNCONFIRMED", "PROBE_EVENTS", "EventUplink", "Publisher", "SnapshotUplink",
           "UplinkStats", "envelope_for"]

log = logging.getLogger(__name__)

#: A claim is made once at least this fraction of the window is free (avoids 1-event claims).
CLAIM_FRACTION = 0.25
#: How often ack timeouts are checked and the outbox is polled without a wake-up.
TICK_S = 0.5
#: Resent event ids remembered for Karn's rule at most (then forgotten at once).
MAX_RESENT_TRACKED = 100_000


class EventUplink:
    """The event lane for one connection at a time (``attach``/``detach`` per connection)."""

    def __init__(self, outbox: Outbox, clock: Clock, *, node_id: str, topic: str, window: int,
                 ack_timeout_s: float, sign_event: EventSign | None,
                 stats: UplinkStats, p1_reserve: int | None = None,
                 rng: random.Random | None = None, p1_topic: str | None = None,
                 sign_batches: bool = True, backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self.outbox = outbox
        self.clock = clock
        self.node_id = node_id
        self.topic = topic
        self.window = window
        self.p1_reserve = p1_reserve if p1_reserve is not None else min(20, max(1, window // 10))
        if self.p1_reserve >= window:
            self.p1_reserve = max(0, window - 1)
        #: Builds the messages of a claim (envelopes signed with ``sign_event``; batches signed
        #: as a whole too unless ``sign_batches`` is False: ``uplink_envelope.MessageBuilder``).
        self.build = MessageBuilder(clock, outbox.boot_id, node_id, sign_event, sign_batches=sign_batches)
        self.stats = stats
        self.inflight: dict[str, float] = {}  # event_id -> monotonic publish time
        self._wake = asyncio.Event()
        self._p1 = False
        self._maybe_ready = True
        self.acks = OutboxAcks(outbox, stats)  # outbox writes of central's Acks, batched
        self.rejects = LocalRejects(outbox, stats, node_id)  # unsendable -> rejected_local
        self.p1 = P1Lane(p1_topic, self.build, self.rejects, stats)
        self._rng = rng or random.Random()
        self.central_present = True
        self._resend = False
        self._p1_ids: set[str] = set()  # P1 events in flight
        self.pacer = Pacer(self._wake)  # backlog messages of this connection not yet PUBACKed
        self._probe = PROBE_EVENTS  # events resent by the next round without evidence of loss
        self._probes_acked = False  # a resent event was acknowledged since the last round
        self._resent: set[str] = set()  # events released by an ack timeout and not acked since
        self._next_round = float("-inf")  # no timeout round before this (monotonic)
        self._round_left: set[str] = set()  # the last round's resent events not yet acknowledged
        self._acked_sent = float("-inf")  # latest publish time of an acknowledged non-P1 event
        #: The adaptive, backed-off ack timeout (``edge.sync.ack_timeout``; ``backoff``: how it
        #: backs off, ``ack_timeout.FIXED_TIMEOUT`` for a fixed one).
        self.timeout = AckTimeout(ack_timeout_s, self._rng, backoff)

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
            self.timeout.reset()
        self.central_present = present
        self._wake.set()

    def base_timeout_s(self) -> float:
        """``ack_timeout_s``, or more while Acks are slower (RTT estimate, capped)."""
        return self.timeout.base_s()

    @property
    def current_timeout_s(self) -> float:
        """The limit of the next timeout round."""
        return self.timeout.current_s

    @property
    def max_doublings(self) -> int:
        """Backoff doublings at most (``backoff`` of the constructor)."""
        return self.timeout.max_doublings

    @property
    def jitter(self) -> float:
        """Random stretch of each timeout (``backoff`` of the constructor)."""
        return self.timeout.jitter

    def on_ack(self, ack: Ack) -> None:
        """Central committed these events: free their window slots now, commit the outbox ack in
        the background (batched)."""
        ids = list(ack.event_ids)
        for r in ack.rejected:
            ids.append(r.event_id)
            self.stats.rejected += 1
            log_event(log, "event_rejected", logging.WARNING, node_id=self.node_id,
                      event_id=r.event_id, reason=r.reason)
            self.acks.reject(r.event_id, r.reason)
        now = time.monotonic()
        sent: list[float] = []
        for i in ids:
            t = self.inflight.pop(i, None)
            if t is None:
                continue
            if i in self._resent:
                self._resent.discard(i)
                self._p1_ids.discard(i)
                self._probes_acked = True
                if i in self._round_left:
                    self._round_left.discard(i)
                    if not self._round_left:  # the whole round came back: the next one now
                        self._next_round = now
                continue
            sent.append(t)
            if i in self._p1_ids:
                self._p1_ids.discard(i)
            else:
                self._probe = PROBE_EVENTS
                self._acked_sent = max(self._acked_sent, t)
        if sent:
            self.timeout.observe(now - min(sent))
        if ids:
            self.timeout.reset()
        self.acks.add(ids)
        self._wake.set()

    # ------------------------------------------------------------ tasks

    async def ack_writer(self) -> None:
        """Commit acks to the outbox in batches (runs for the life of the service)."""
        await self.acks.run()

    def cancel_tasks(self) -> None:
        self.acks.cancel()

    async def flush_acks(self) -> None:
        """Commit any acks still pending (on stop)."""
        await self.acks.flush()

    async def run(self, pub: Publisher) -> None:
        """Claim and publish while connected; returns only by cancellation or publish failure."""
        self._maybe_ready = True
        self.pacer.reset()  # the previous connection's are never confirmed
        pub.on_confirm(self.pacer.confirmed)
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
            await self._publish(pub, events)
            if not events:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.01, next_tick - time.monotonic()))

    async def _publish(self, pub: Publisher, events: list[StoredEvent]) -> None:
        """Publish a claim: its P1s first on the P1 channel, then all of it on ``event``, each
        backlog message only once fewer than ``MAX_UNCONFIRMED`` are unconfirmed by the broker.
        Unsendable records leave the window when found: those of the P1 lane and of unpaced
        messages are rejected at once, the backlog's at the end of the claim."""
        now = time.monotonic()
        for ev in events:
            self.inflight[ev.event_id] = now
            if ev.priority == 1:
                self._p1_ids.add(ev.event_id)
        gone = self.p1.publish(pub, events)
        if gone:  # rejected by the P1 lane: not built again below
            self._leave_window(gone)
            events = [ev for ev in events if ev.event_id not in gone]
        start = 0
        while start < len(events):
            paced = events[start].priority != 1  # a claim is in priority order: P1s lead it
            if paced:
                await self._await_room(pub)
            bad: dict[str, str] = {}
            body, count = self.build.next(events, start, bad)
            if bad:
                self._leave_window(bad)
                if paced:
                    self.rejects.note(bad)
                else:
                    self.rejects.start(bad)
            if body is None:  # every event it consumed is unsendable
                start += count
                continue
            # Raises when the connection is gone: the session ends, detach() releases all.
            sent = pub.publish_nowait(self.topic, body)
            if paced:
                self.pacer.sent(sent)
                now = time.monotonic()
                for ev in events[start:start + count]:  # the ack timeout counts from the publish
                    if ev.event_id in self.inflight:
                        self.inflight[ev.event_id] = now
            self.stats.published += count - len(bad)
            start += count
            self.stats.messages += 1
            await asyncio.sleep(0)  # let acks, P1 wake-ups and the socket writer in
        await self.rejects.flush()

    def _leave_window(self, event_ids: Iterable[str]) -> None:
        """Unsendable events free their window slots (their ``rejected_local`` write follows)."""
        for event_id in event_ids:
            self.inflight.pop(event_id, None)
            self._p1_ids.discard(event_id)

    async def _await_room(self, pub: Publisher) -> None:
        """Until fewer than ``MAX_UNCONFIRMED`` backlog messages wait for the broker's PUBACK.
        A P1 recorded meanwhile is claimed and published at once: it is behind at most that many
        backlog messages in this connection, not behind the rest of the claim."""
        while not self.pacer.has_room():
            if self._p1:
                self._p1 = False
                free = self.window - len(self.inflight)
                if free > 0:
                    await self._publish(pub, await self._claim_p1(free))
                continue
            self._wake.clear()  # set by a PUBACK (the pacer) or a poke; re-checked above
            if not self.pacer.has_room() and not self._p1:
                await self._wake.wait()

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
        self._probe = next_probe(self._probe, self._probes_acked, self.window)
        self._probes_acked = False
        old = overdue_to_resend(self.inflight, now, limit, self._acked_sent, self._probe)
        if not old:
            return
        self._mark_resent(old)
        self._round_left = set(old)
        for i in old:
            self.inflight.pop(i, None)
            self._p1_ids.discard(i)
        n = await asyncio.to_thread(self.outbox.release, old)
        self.stats.requeued += n
        self.stats.ack_timeouts += 1
        self._next_round = now + self.timeout.back_off()
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
        """Connection gone: cancel publishes, finish the ``rejected_local`` writes (so no
        unsendable record is released and built again), put everything in flight back to ready."""
        self.acks.cancel()
        await self.rejects.settle()
        self._mark_resent(list(self.inflight))
        self.inflight.clear()
        self._p1_ids.clear()
        n = await asyncio.to_thread(self.outbox.release, None)
        self.stats.requeued += n
