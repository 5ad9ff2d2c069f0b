"""Group commit (``ingest.linger_ms`` / ``ingest.linger_events``, ``Committer.linger``): a small
batch waits for more events and is then committed in ONE transaction and acknowledged in one
Ack per node; a batch that reaches ``linger_events`` or holds a P1 event is not held; ``flush``
never lingers. Real store (SQLite file), real decode path (``IngestService.handle_message``),
the real batcher loop; no broker (the Acks are counted by the committer). Counts and
transactions are asserted, never durations: the linger is made far longer than any wait here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from central_sync.config import IngestConfig, parse_central_config
from central_sync.ingest import IngestService
from central_sync.ingest_commit import EventMsg
from central_sync.ingest_decode import GoodEnvelope
from central_sync.ingest_queue import IngestQueue
from central_sync.ingest_stats import IngestStats
from central_sync.store import open_store
from edge.sync.wire import P1_CHANNEL, EventEnvelope, encode

PREFIX = "kentongan/v1"
#: The longest linger allowed: a linger that ends by its timer is counted (``linger_expired``),
#: so a test asserts that none did instead of timing anything.
LONG_LINGER_MS = 10_000
WAIT_S = 30.0


def event(node: str, priority: int = 2) -> bytes:
    env = EventEnvelope.model_validate(dict(
        event_id=uuid.uuid4().hex, node_id=node, boot_id="boot-1", seq=1, mono_ns=1, wall_time=time.time(),
        time_quality="synced", type="PANIC" if priority == 1 else "STATUS", priority=priority, payload={"n": 1}))
    return encode(env)


def topic(node: str, channel: str = "event") -> str:
    return f"{PREFIX}/up/{node}/{channel}"


async def until(pred: Callable[[], bool], what: str) -> None:
    """Wait (yielding to the batcher) until ``pred()`` holds; fail after a generous deadline."""
    deadline = time.monotonic() + WAIT_S
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **ingest: Any) -> AsyncIterator[IngestService]:
    cfg = parse_central_config({"database": str(tmp_path / "central.db"),
                                "ingest": {"batch_wait_ms": 0, "p1_lane": False, **ingest}})
    store = open_store(f"sqlite:///{tmp_path / 'central.db'}")
    service = IngestService(cfg, store)
    batcher = asyncio.create_task(service.committer.run())
    try:
        yield service
    finally:
        batcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await batcher
        store.close()


def lingering(service: IngestService) -> bool:
    """The batcher holds a batch (``Committer.linger``)."""
    return service.queue.lingering


def test_events_within_the_linger_are_one_transaction_and_all_acked(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, linger_ms=LONG_LINGER_MS, linger_events=5) as service:
            for i in range(4):
                await service.handle_message(topic(f"node-{i}"), event(f"node-{i}"))
            await until(lambda: lingering(service), "the batcher to linger")
            assert service.stats.batches == 0 and service.stats.inserted == 0  # held, not committed
            await service.handle_message(topic("node-4"), event("node-4"))  # the fifth: commit now
            await until(lambda: service.stats.acked == 5, "five events acknowledged")
            assert service.stats.batches == 1 and service.stats.inserted == 5
            assert service.stats.lingers == 1 and service.stats.linger_expired == 0
            assert not lingering(service)
            assert len(service.store.list_events(limit=10)) == 5

    asyncio.run(scenario())


def test_a_p1_event_ends_the_linger(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, linger_ms=LONG_LINGER_MS, linger_events=100) as service:
            for i in range(2):
                await service.handle_message(topic(f"node-{i}"), event(f"node-{i}"))
            await until(lambda: lingering(service), "the batcher to linger")
            await service.handle_message(topic("node-9"), event("node-9", priority=1))
            await until(lambda: service.stats.acked == 3, "the P1 and the two held events acknowledged")
            assert service.stats.batches == 1 and service.stats.inserted == 3
            assert service.stats.linger_expired == 0
            assert not service.queue.urgent  # committed: the next batch may linger again
            await service.handle_message(topic("node-1"), event("node-1"))
            await until(lambda: lingering(service), "the next small batch to linger")

    asyncio.run(scenario())


def test_a_p1_channel_message_is_not_held(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, linger_ms=LONG_LINGER_MS, linger_events=100) as service:
            await service.handle_message(topic("node-1", P1_CHANNEL), event("node-1", priority=1))
            await until(lambda: service.stats.acked == 1, "the P1 acknowledged")
            assert service.stats.batches == 1 and service.stats.lingers == 0

    asyncio.run(scenario())


def test_flush_commits_a_held_batch_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, linger_ms=LONG_LINGER_MS, linger_events=100) as service:
            for i in range(3):
                await service.handle_message(topic(f"node-{i}"), event(f"node-{i}"))
            await until(lambda: lingering(service), "the batcher to linger")
            await service.flush()
            assert service.stats.acked == 3 and service.stats.batches == 1 and service.stats.inserted == 3

    asyncio.run(scenario())


def test_linger_off_commits_a_single_event(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running(tmp_path, linger_ms=0) as service:
            await service.handle_message(topic("node-1"), event("node-1"))
            await until(lambda: service.stats.acked == 1, "the event acknowledged")
            assert service.stats.lingers == 0 and service.stats.batches == 1

    asyncio.run(scenario())


def test_the_queue_knows_while_a_p1_waits() -> None:
    """``IngestQueue.urgent`` holds exactly while a P1 message (priority 1, or the P1 channel)
    waits, also when a batch cut at ``batch_max`` leaves it queued."""
    def msg(node: str, priority: int, channel: str = "event") -> EventMsg:
        env = EventEnvelope.model_validate_json(event(node, priority))
        return EventMsg(topic(node, channel), node, [GoodEnvelope(env)], None)

    async def scenario() -> None:
        plain = IngestQueue(IngestConfig())
        plain.add_events(msg("node-9", 1))
        assert plain.urgent and not plain.batch_full.is_set()  # only a linger is cut short by a P1
        queue, stats = IngestQueue(IngestConfig(batch_max=1)), IngestStats()
        queue.add_events(msg("node-1", 2))
        assert not queue.urgent
        queue.add_events(msg("node-2", 1))
        assert queue.urgent
        batch, _settle, _acks = queue.take(stats)
        assert [m.node_id for m in batch.events] == ["node-1"] and queue.urgent  # the P1 still waits
        queue.take(stats)
        assert not queue.urgent
        queue.lingering = True
        queue.add_events(msg("node-3", 1, P1_CHANNEL))
        assert queue.urgent and queue.batch_full.is_set()

    asyncio.run(scenario())
