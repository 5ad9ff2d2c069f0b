"""The commit side of ingest (``central_sync.ingest``): batch, commit, acknowledge.

``Committer.run`` waits for queued work, then (once ``ingest.batch_max`` events wait or after
``ingest.batch_wait_ms``; a batch still smaller than ``ingest.linger_events`` then lingers until
its oldest event has waited ``ingest.linger_ms``, ``Committer.linger``) commits one batch:
``BatchWriter.write`` in a worker thread (verify, ``store.commit_events``, the coalesced node
updates), then ONE ``Ack`` per node (``central_sync.acks``) on a live broker connection and the
MQTT PUBACKs of the deliveries the batch settled. Locked/busy/unreachable databases are retried
with backoff (``with_store``) and nothing is acknowledged until the commit succeeds; a batch
that cannot be committed for another reason is rejected as ``internal`` (the nodes resend). The
aggregated rejections are written once per ``ingest.rejection_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

from central_sync.acks import AckCounters, Link, flush_links, publish_all
from central_sync.config import IngestConfig
from central_sync.ingest_commit import BatchOutcome, BatchWriter, RowRejection
from central_sync.ingest_dispatch import UplinkDispatcher
from central_sync.ingest_queue import IngestQueue
from central_sync.ingest_stats import IngestStats
from central_sync.rejections import RejectionAggregator
from central_sync.store import Store
from central_sync.store_retry import call_retrying
from edge.logs import log_event
from edge.sync.wire import Topics

log = logging.getLogger("central_sync.ingest")

#: Presence and heartbeat state is written at most this often by the batcher (``flush`` writes
#: it at once). Each write is a transaction of its own (an fsync): written with every event batch
#: it cost central a quarter of a millisecond of CPU per batch (measured, docs/scale.md), for
#: state the desk shows at a one-second resolution anyway. Heartbeats are QoS 0; a presence's
#: PUBACK waits for its write like every other delivery's.
NODE_UPDATES_EVERY_S = 0.5

_T = TypeVar("_T")
_A = TypeVar("_A")


class Committer:
    """Commits what ``queue`` holds in batches and acknowledges it on the link ``link()`` gives."""

    def __init__(self, settings: IngestConfig, store: Store, writer: BatchWriter, queue: IngestQueue,
                 dispatcher: UplinkDispatcher, stats: IngestStats, rejections: RejectionAggregator,
                 topics: Topics, link: Callable[[], Link | None]) -> None:
        self.settings = settings
        self.store = store
        self.writer = writer
        self.queue = queue
        self.dispatcher = dispatcher
        self.stats = stats
        self.rejections = rejections
        self.topics = topics
        self.link = link
        self._acks = AckCounters()
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Commit batches forever (cancel to stop); an unexpected failure never ends the loop."""
        wait_s = self.settings.batch_wait_ms / 1000
        loop = asyncio.get_running_loop()
        queue = self.queue
        nodes_at = float("-inf")  # when node updates were last written
        nodes_timer: asyncio.TimerHandle | None = None
        while True:
            await queue.wake.wait()
            if wait_s > 0 and queue.pending_events < self.settings.batch_max:
                # One timer per batch (not a wake-up per arriving message, nor a task per wait):
                # until the batch is full or ``batch_wait_ms`` has passed.
                queue.batch_full.clear()
                timer = loop.call_later(wait_s, queue.batch_full.set)
                try:
                    await queue.batch_full.wait()
                finally:
                    timer.cancel()
            await self.linger()
            nodes = loop.time() - nodes_at >= NODE_UPDATES_EVERY_S
            try:
                await self.commit_once(nodes=nodes)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the batcher die
                log_event(log, "batch_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
                await asyncio.sleep(0.5)
            if nodes:
                nodes_at = loop.time()
            if queue.has_node_updates() and (nodes_timer is None or nodes_timer.cancelled()
                                             or nodes_timer.when() <= loop.time()):
                # Node updates left for later: wake up when they are due.
                nodes_timer = loop.call_at(nodes_at + NODE_UPDATES_EVERY_S, queue.wake.set)

    async def linger(self) -> None:
        """Group commit: hold a small batch of events until ``linger_events`` wait, a P1 arrives
        or its oldest event has waited ``linger_ms``. A commit has a fixed cost (the fsync and
        its WAL write, the hop to the worker thread, the Acks' flush) that a dozen single-event
        messages share at 500 ev/s after ``batch_wait_ms`` alone; lingering shares it among
        more (docs/scale.md). Nothing is held that is already big, urgent or old enough, nor a
        batch without events (the timer counts from the oldest event, not from this call)."""
        queue, settings = self.queue, self.settings
        if (settings.linger_ms <= 0 or not queue.events or queue.urgent
                or queue.pending_events >= settings.linger_events):
            return
        left = queue.oldest_at + settings.linger_ms / 1000 - time.monotonic()
        if left <= 0:
            return
        queue.batch_full.clear()
        queue.full_at = min(settings.linger_events, settings.batch_max, settings.max_pending_events)
        queue.lingering = True
        timer = asyncio.get_running_loop().call_later(left, self._linger_expired)
        try:
            await queue.batch_full.wait()
        finally:
            timer.cancel()
            queue.full_at = settings.batch_max
            queue.lingering = False
            self.stats.lingers += 1

    def _linger_expired(self) -> None:
        self.stats.linger_expired += 1
        self.queue.batch_full.set()

    async def flush(self) -> None:
        """Commit and acknowledge everything queued so far, and write the rejection summaries."""
        while self.queue.has_work():
            await self.commit_once()
        await self.flush_rejections()

    async def commit_once(self, nodes: bool = True) -> None:
        """Commit one batch of what is queued, then publish its Acks and PUBACKs (``nodes=False``:
        the presence/heartbeat updates wait for a later batch)."""
        async with self._lock:
            batch, settle, acks = self.queue.take(self.stats, nodes)
            try:
                out = await self.with_store(self.writer.write, batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not transient and not the input's fault: the nodes resend
                log_event(log, "batch_not_committed", logging.ERROR, events=sum(len(m.envs) for m in batch.events),
                          error=f"{type(exc).__name__}: {exc}"[:300])
                out = BatchOutcome(rejections=[RowRejection(m.topic, m.node_id, "internal", str(exc)[:200], None)
                                               for m in batch.events for _ in m.envs])
            self.stats.batches += 1 if batch.events else 0
            self.stats.inserted += out.inserted
            self.stats.duplicates += out.duplicates
            self.stats.snapshots += len(out.snapshots)
            self.stats.updates += out.updates
            self.stats.place_mismatches += out.place_mismatches
            for node, event_id in out.stored:
                acks.stored(node, event_id)
            for node, snapshot_id in out.snapshots:
                acks.snapshot(node, snapshot_id)
            for r in out.rejections:
                self.dispatcher.reject(r.topic, r.reason, r.detail, node_id=r.node_id)
                if r.event_id is not None:
                    acks.reject(r.node_id, r.event_id, r.reason)
            before = self._acks.event_ids
            link = self.link()
            publish_all(acks, link, self.topics, time.time(), self._acks)
            self.stats.acked += self._acks.event_ids - before
            self.stats.acks_published, self.stats.acks_unsent = self._acks.published, self._acks.unsent
            self.stats.acks_qos0 = self._acks.qos0
            links = {link} if link is not None else set()
            for delivery in settle:
                self.dispatcher.settle_now(delivery)
                links.add(delivery.link)
            if links:  # the batch's Acks and PUBACKs in as few TCP segments as possible
                asyncio.get_running_loop().call_soon(flush_links, links)

    async def rejection_flusher(self) -> None:
        """Write the aggregated rejections once per ``rejection_interval_s`` (cancel to stop)."""
        while True:
            await asyncio.sleep(self.settings.rejection_interval_s)
            with contextlib.suppress(Exception):
                await self.flush_rejections()

    async def flush_rejections(self) -> None:
        """Write the aggregated rejections of the interval in one store call."""
        summaries = self.rejections.drain()
        self.stats.floods, self.stats.flooding = self.rejections.floods, dict(self.rejections.flooding)
        if not summaries:
            return
        try:
            await self.with_store(self.store.record_rejections, summaries)
        except Exception as exc:  # counted and logged already
            log_event(log, "rejections_not_recorded", logging.ERROR, error=str(exc)[:200], rows=len(summaries))

    async def with_store(self, fn: Callable[[_A], _T], arg: _A) -> _T:
        """Run a store call in a thread, retrying locked/busy errors with capped backoff."""
        return await call_retrying(fn, arg, stats=self.stats, min_s=0.05, max_s=self.settings.db_retry_max_seconds,
                                   log=log, event="store_busy_retry")
