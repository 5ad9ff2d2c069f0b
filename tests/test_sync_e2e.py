"""End to end: edge Outbox + SyncService -> real Mosquitto -> real central IngestService +
CentralStore, with broker SIGKILLs, central restarts and kill -9 of the node process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_sync import node_config, running_service, wait_until

from central_sync.broker import LocalMosquitto
from central_sync.config import CentralConfig
from central_sync.store import CentralStore
from edge.clock import Clock
from edge.outbox import EventDraft, Outbox
from edge.sync.service import SyncService
from tests.helpers_central import IngestInThread

NODE = "pos-rt03"
HELPER = Path(__file__).resolve().parent / "helpers_sync.py"
SOAK = os.environ.get("KENTONGAN_SOAK") == "1"


class Central(IngestInThread):
    """Central's ingest on a real SQLite store, in a loop thread (``start``/``stop`` repeatable)."""

    def __init__(self, db: Path, port: int) -> None:
        super().__init__(CentralConfig.model_validate({
            "database": str(db), "broker": {"host": "127.0.0.1", "port": port,
                                            "client_id": "central-test",
                                            "reconnect_max_seconds": 1.0}}), CentralStore(db))

    def wait_connected(self, timeout: float = 20, what: str = "central connected") -> None:
        super().wait_connected(timeout, what)

    def event_ids(self) -> list[str]:
        return [e["event_id"] for e in self.all_events()]

    def all_events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        since = 0
        while True:
            rows = self.store.list_events(node_id=NODE, since_rowid=since, limit=5000)
            if not rows:
                return out
            out.extend(rows)
            since = rows[-1]["rowid"]

    def count(self) -> int:
        return self.store.count_events(NODE)


@pytest.fixture
def central(tmp_path: Path, mosquitto: LocalMosquitto) -> Iterator[Central]:
    c = Central(tmp_path / "central.db", mosquitto.port)
    c.start()
    c.wait_connected()
    yield c
    c.close()


def _outbox(path: Path) -> Outbox:
    return Outbox(path, NODE, clock=Clock(forced_quality="synced"))


def _service(port: int, outbox: Outbox, **sync: Any) -> SyncService:
    return SyncService(node_config(port, NODE, **sync), outbox, snapshots=None, clock=outbox.clock,
                       status_provider=lambda: {"state": "off"}, command_handler=None)


def _count_at_least(central: Central, target: int) -> Callable[[], bool]:
    return lambda: central.count() >= target


def _assert_exactly_once(central: Central, expected: set[str]) -> list[dict[str, Any]]:
    events = central.all_events()
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)), "duplicate rows at central"
    assert set(ids) == expected, f"missing {len(expected - set(ids))}, extra {len(set(ids) - expected)}"
    return events


def test_offline_buffer_arrives_exactly_once_in_order(tmp_path: Path, mosquitto: LocalMosquitto,
                                                      central: Central) -> None:
    ob = _outbox(tmp_path / "outbox.db")
    try:
        svc = _service(mosquitto.port, ob)
        with running_service(svc):
            wait_until(lambda: svc.connected, 10, what="node connected")
            mosquitto.stop()  # central's persistent session is saved by a clean stop
            drafts = [EventDraft(["KERIBUTAN", "TEST", "PATROLI"][i % 3], 2 + i % 3, {"i": i})
                      for i in range(1000)]
            stored = [ob.submit(d) for d in drafts]
            ids = {f.result(10).event_id for f in stored}
            assert ob.counts()["ready"] == 1000
            mosquitto.start()
            wait_until(lambda: ob.counts()["acked"] == 1000, 90, what="all acked at the edge")
        events = _assert_exactly_once(central, ids)
        for prio in (2, 3, 4):
            seqs = [e["seq"] for e in events if e["priority"] == prio]
            assert seqs == sorted(seqs), f"P{prio} not in per-node order"
    finally:
        ob.close()


def test_broker_sigkill_several_times_mid_drain(tmp_path: Path, mosquitto: LocalMosquitto,
                                                central: Central) -> None:
    n = 20_000 if SOAK else 4000
    ob = _outbox(tmp_path / "outbox.db")
    try:
        ids = {e.event_id for e in ob.record_many(
            [EventDraft("PATROLI", 4, {"i": i}) for i in range(n)])}
        # A small window keeps the (batched, fast) drain slow enough for three kills mid-drain.
        svc = _service(mosquitto.port, ob, ack_timeout_seconds=3, inflight_window=200)
        with running_service(svc):
            at_kill = []
            for k in range(3):
                target = n * (k + 1) // 5
                wait_until(_count_at_least(central, target), 90, what=f"drain past {target}")
                mosquitto.kill()
                at_kill.append(central.count())
                mosquitto.start()
            assert all(c < n for c in at_kill), f"a kill came after the drain: {at_kill}"
            wait_until(lambda: ob.counts()["acked"] == n, 120, what="all acked after kills")
        _assert_exactly_once(central, ids)
        assert svc.stats.reconnects >= 4
    finally:
        ob.close()


def test_central_stopped_and_restarted(tmp_path: Path, mosquitto: LocalMosquitto,
                                       central: Central) -> None:
    """Central presence: while central is away the post's window is idle (nothing published, no
    ack timeouts); when central is back everything unacked is resent at once, not after an ack
    timeout (set to 10 minutes here so only the presence can explain a prompt drain)."""
    ob = _outbox(tmp_path / "outbox.db")
    try:
        svc = _service(mosquitto.port, ob, ack_timeout_seconds=600)
        with running_service(svc):
            wait_until(lambda: svc.presence.seen and svc.presence.present, 20, what="central seen")
            first = {e.event_id for e in ob.record_many(
                [EventDraft("TEST", 3, {"i": i}) for i in range(500)])}
            wait_until(lambda: central.count() >= 100, 30, what="drain started")
            central.stop()
            wait_until(lambda: not svc.presence.present, 10, what="post sees central offline")
            second = {e.event_id for e in ob.record_many(
                [EventDraft("PATROLI", 4, {"i": i}) for i in range(1500)])}
            published = svc.stats.published
            wait_until(lambda: ob.counts()["ready"] >= 1500, 10, what="backlog waiting")
            with pytest.raises(AssertionError):  # the window stays idle while central is away
                wait_until(lambda: svc.stats.published > published, 1.5, what="a publish")
            assert svc.stats.ack_timeouts == 0
            central.start()
            central.wait_connected()
            wait_until(lambda: ob.counts()["acked"] == 2000, 60, what="all acked")
            assert svc.stats.ack_timeouts == 0 and svc.presence.arrivals >= 2
        _assert_exactly_once(central, first | second)
        # Wire copies: the idle window sent nothing redundant while central was away.
        assert svc.stats.published <= 2000 * 1.1, svc.stats.published
    finally:
        ob.close()


def _spawn_node(cfg_path: Path, db: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(HELPER), str(cfg_path), str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"node-ready"
    return proc


def _edge_acked(db: Path) -> int:
    with sqlite3.connect(db, timeout=10) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events WHERE status='acked'").fetchone()[0])


def test_node_kill9_mid_drain_and_restart(tmp_path: Path, mosquitto: LocalMosquitto,
                                          central: Central) -> None:
    n = 3000
    db = tmp_path / "node.db"
    ob = _outbox(db)
    ids = {e.event_id for e in ob.record_many([EventDraft("PATROLI", 4, {"i": i})
                                               for i in range(n)])}
    ob.close()
    cfg_path = tmp_path / "node.json"
    # A small window keeps the drain slow enough (many ack round trips) to be killed mid-way.
    cfg_path.write_text(node_config(mosquitto.port, NODE, ack_timeout_seconds=3,
                                    inflight_window=50).model_dump_json())
    procs = []
    at_kill: list[int] = []
    try:
        for k in range(2):
            proc = _spawn_node(cfg_path, db)
            procs.append(proc)
            wait_until(_count_at_least(central, (k + 1) * n // 3), 60, what="drain")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            at_kill.append(central.count())
        assert all(c < n for c in at_kill), f"a kill came after the drain: {at_kill}"
        proc = _spawn_node(cfg_path, db)
        procs.append(proc)
        wait_until(lambda: _edge_acked(db) == n, 120, what="all acked at the edge")
        _assert_exactly_once(central, ids)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_p1_overtakes_10000_backlog(tmp_path: Path, mosquitto: LocalMosquitto,
                                    central: Central) -> None:
    ob = _outbox(tmp_path / "outbox.db")
    try:
        backlog = ob.record_many([EventDraft("PATROLI", 4, {"i": i}) for i in range(10_000)])
        with running_service(_service(mosquitto.port, ob)):
            wait_until(lambda: central.count() >= 500, 60, what="backlog draining")
            p1 = ob.record(EventDraft("PANIC", 1, {"button": "utama"}))
            wait_until(lambda: central.store.get_event(p1.event_id) is not None, 30,
                       what="P1 at central")
            wait_until(lambda: ob.counts()["acked"] == 10_001, 120, what="backlog drained")
        row = central.store.get_event(p1.event_id)
        assert row is not None
        last_backlog = central.store.get_event(backlog[-1].event_id)
        assert last_backlog is not None
        later = sum(1 for e in central.all_events() if e["rowid"] > row["rowid"])
        assert row["rowid"] < last_backlog["rowid"]
        assert later >= 5000, f"P1 arrived after most of the backlog ({later} behind it)"
    finally:
        ob.close()


def test_snapshots_have_their_own_budgeted_lane(tmp_path: Path, mosquitto: LocalMosquitto,
                                                central: Central) -> None:
    from edge.snapshots import SnapshotStore

    ob = _outbox(tmp_path / "outbox.db")
    try:
        snaps = SnapshotStore(ob, tmp_path / "snaps", quota_bytes=10_000_000,
                              retention_seconds=3600)
        frames = [snaps.add(b"\xff\xd8\xff\xe0" + os.urandom(30_000), event_id=None, priority=1)
                  for _ in range(3)]  # JPEG magic: central stores images only
        ids = {e.event_id for e in ob.record_many([EventDraft("TEST", 3, {"i": i})
                                                   for i in range(500)])}
        svc = SyncService(node_config(mosquitto.port, NODE, snapshot_bytes_per_second=20_000),
                          ob, snapshots=snaps, clock=ob.clock, status_provider=lambda: {},
                          command_handler=None)
        with running_service(svc):
            wait_until(lambda: ob.counts()["acked"] == 500, 30, what="events acked")
            # ~120 KB of base64 at 20 KB/s: the events did not wait for the snapshots.
            assert snaps.counts()["acked"] < 3
            wait_until(lambda: snaps.counts()["acked"] == 3, 30, what="snapshots acked")
        for f in frames:
            assert central.store.get_snapshot(f.snapshot_id) is not None
        _assert_exactly_once(central, ids)
    finally:
        ob.close()


def test_command_from_central_queued_while_node_offline(tmp_path: Path, mosquitto: LocalMosquitto,
                                                        central: Central) -> None:
    from helpers_sync import make_command

    from edge.sync.wire import Command

    class Handler:
        async def handle(self, cmd: Command) -> tuple[bool, str, dict[str, Any]]:
            return True, "siren stopped", {"siren": "off"}

    ob = _outbox(tmp_path / "outbox.db")
    try:
        svc = SyncService(node_config(mosquitto.port, NODE), ob, snapshots=None, clock=ob.clock,
                          status_provider=lambda: {}, command_handler=Handler())
        with running_service(svc):  # first connect creates the node's persistent session
            wait_until(lambda: svc.connected, 10, what="node connected")
        cmd = make_command(NODE, "stop")
        assert central.ingest is not None
        central.lt.call(central.ingest.send_command(cmd, issued_by="operator-1"))
        with running_service(svc):  # the broker kept the command in the node's session
            wait_until(lambda: any(c["command_id"] == cmd.command_id and c["status"] == "ok"
                                   for c in central.store.list_commands(NODE)), 20,
                       what="result recorded at central")
        row = next(c for c in central.store.list_commands(NODE) if c["command_id"] == cmd.command_id)
        assert row["result_detail"] == "siren stopped" and row["result_data"] == {"siren": "off"}
    finally:
        ob.close()
