"""Stopping central's ingest (cancelling ``IngestService.run``) returns only once every broker
connection has finished its disconnect: no connection task, aiomqtt timer or socket outlives the
service (real Mosquitto, several worker connections plus the P1 lane)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from test_ingest import make_cfg

from central_sync.broker import LocalMosquitto
from central_sync.ingest import IngestService
from central_sync.store import CentralStore

WAIT = 60.0


def test_a_cancelled_ingest_leaves_no_connection_running(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    cfg = make_cfg(tmp_path, mosquitto.port, workers=3, shared_group="ingest")
    store = CentralStore(cfg.database)

    async def scenario() -> tuple[list[str], list[str]]:
        service = IngestService(cfg, store)
        task = asyncio.create_task(service.run())
        await asyncio.wait_for(service.connected.wait(), WAIT)
        # every worker connection and the P1 lane are up before we stop
        async with asyncio.timeout(WAIT):
            while len(service.sessions.clients) < 3 or (service.p1 is not None and not service.p1.connected.is_set()):
                await asyncio.sleep(0.01)
        names = sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("ingest-"))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        left = [repr(t.get_coro()) for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return names, left

    try:
        # the loop is closed without cancelling leftovers (asyncio.run would cancel and hide them)
        loop = asyncio.new_event_loop()
        try:
            names, left = loop.run_until_complete(scenario())
        finally:
            loop.close()
    finally:
        store.close()
    assert left == []
    assert [n for n in names if n.startswith("ingest-connection-")] == [
        f"ingest-connection-central-test-w{i}" for i in range(3)]
    assert "ingest-p1-lane" in names
