"""The snapshot lane of the uplink: byte-budgeted (token bucket) so snapshots never delay events,
acknowledged by ``snapshot_ids`` in central's ``Ack`` (the event lane: ``edge.sync.uplink``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from edge.errors import KentonganError
from edge.logs import log_event
from edge.snapshots import SnapshotStore, StoredSnapshot
from edge.sync.transport import raise_if_cancelling
from edge.sync.uplink_types import Publisher, UplinkStats
from edge.sync.wire import SnapshotEnvelope, b64, encode

log = logging.getLogger("edge.sync.uplink")


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
