"""A wall-clock jump of +/- 1 hour mid-operation (injected clock) leaves ordering, command
windows, TTLs and retries sane: timers run on the monotonic clock, the wall clock only for what
people read and for command windows, corrected by central's offset across the step."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_sync import PahoAcker, SmsRecorder, decode_result, make_command, node_config, running_service, wait_until

from central_sync.broker import LocalMosquitto, free_port
from edge.clock import Clock
from edge.outbox import EventDraft, Outbox
from edge.sync.service import SyncService

NODE = "pos-rt03"
HOUR = 3600.0


class SteppedWall:
    """The node's wall clock: real time plus a shift the test changes (a clock step)."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.time() + self.shift


def test_clock_offset_stays_continuous_across_steps() -> None:
    wall = SteppedWall()
    clock = Clock(forced_quality="unsynced", wall=wall)
    wall.shift = -5000.0  # an RTC-less Pi booted with a wrong clock
    assert clock.now()[1] == "unsynced"
    clock.observe_central_time(time.time())
    for step in (HOUR, -HOUR, -HOUR, HOUR):
        wall.shift += step
        now, quality = clock.now()
        assert quality == "corrected" and abs(now - time.time()) < 1.0, (step, now - time.time())
        anchor = clock.anchor()
        assert anchor is not None and abs(anchor + clock.mono_ns() / 1e9 - time.time()) < 1.0
    assert clock.steps == 4 and clock.last_step == pytest.approx(HOUR, abs=1.0)
    # Central's clock stepped instead (no local step): the next sample replaces the estimate.
    clock.observe_central_time(time.time() + HOUR)
    assert abs(clock.now()[0] - (time.time() + HOUR)) < 1.0
    # Small disagreements are smoothed, not taken whole.
    before = clock.offset
    assert before is not None
    clock.observe_central_time(time.time() + HOUR + 1.0)
    assert clock.offset == pytest.approx(before + 0.2, abs=0.05)


class Handler:
    def __init__(self) -> None:
        self.ran: list[str] = []

    async def handle(self, cmd: Any) -> tuple[bool, str, dict[str, Any]]:
        self.ran.append(cmd.command_id)
        return True, "ok", {}


@pytest.fixture
def stepped(tmp_path: Path) -> Iterator[tuple[Outbox, SteppedWall, Clock]]:
    wall = SteppedWall()
    clock = Clock(forced_quality="unsynced", wall=wall)
    ob = Outbox(tmp_path / "outbox.db", NODE, clock=clock)
    yield ob, wall, clock
    ob.close()


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_step_mid_drain_keeps_order_commands_and_retries_sane(
        mosquitto: LocalMosquitto, stepped: tuple[Outbox, SteppedWall, Clock], step: float) -> None:
    ob, wall, clock = stepped
    acker = PahoAcker(mosquitto.port)
    handler = Handler()
    svc = SyncService(node_config(mosquitto.port, NODE, ack_timeout_seconds=5), ob,
                      snapshots=None, clock=clock, status_provider=lambda: {},
                      command_handler=handler)
    try:
        before = ob.record_many([EventDraft("PATROLI", 4, {"i": i}) for i in range(300)])
        with running_service(svc):
            wait_until(lambda: ob.counts()["acked"] >= 100, 30, what="drain started")
            wall.shift += step  # the wall clock jumps mid-drain
            after = ob.record_many([EventDraft("PATROLI", 4, {"i": 300 + i}) for i in range(300)])
            panic = ob.record(EventDraft("PANIC", 1, {"button": "utama"}))
            wait_until(lambda: ob.counts()["acked"] == 601, 60, what="all acked")
            # Command windows judged on central's time line: a fresh 60 s command runs, one
            # that expired 10 s ago (central time) is refused, whatever our wall clock says.
            fresh = make_command(NODE, "status", ttl=60)
            stale = make_command(NODE, "status", ttl=60, issued_at=time.time() - 70)
            acker.send_command(fresh)
            acker.send_command(stale)
            wait_until(lambda: len(acker.results) == 2, 20, what="two command results")
        results = {r["command_id"]: decode_result(r) for r in acker.results}
        assert results[fresh.command_id].ok and handler.ran == [fresh.command_id]
        assert results[stale.command_id].detail == "expired"
        # Retries: no ack timeout fired (monotonic timers did not see the step) and every event
        # went out once (plus at most a few resends), in recording order within its priority.
        assert svc.stats.ack_timeouts == 0
        sent = [e for e in acker.events if e["type"] == "PATROLI"]
        assert len({e["event_id"] for e in sent}) == 600 and len(sent) <= 660
        seqs = [e["seq"] for e in sent]
        assert seqs == sorted(seqs)
        assert [e.seq for e in before + after] == sorted(e.seq for e in before + after)
        # Times people read: events recorded unsynced are placed by their monotonic stamp on
        # central's time line, so none is an hour off.
        by_id = {e["event_id"]: e for e in acker.events}
        for ev in (*before[:3], *after[-3:], panic):
            env = by_id[ev.event_id]
            assert abs(env["wall_time"] - time.time()) < 120, (step, env["time_quality"])
    finally:
        acker.close()


@pytest.mark.parametrize("step", [HOUR, -HOUR])
def test_sms_deadline_ignores_wall_clock_steps(stepped: tuple[Outbox, SteppedWall, Clock],
                                               step: float) -> None:
    ob, wall, clock = stepped
    rec = SmsRecorder()
    cfg = node_config(free_port(), NODE, sms_fallback_seconds=2.0,
                      modem={"enabled": True, "port": "/dev/null",
                             "sms_recipients": [{"name": "RT", "number": "+6281200000001"}]})
    svc = SyncService(cfg, ob, snapshots=None, clock=clock, status_provider=lambda: {},
                      command_handler=None, sms_sender=rec)
    svc.sms.check_s = 0.1
    with running_service(svc):
        ob.record(EventDraft("PANIC", 1, {"button": "utama"}))
        t0 = time.monotonic()
        wall.shift += step  # +1 h would make it look overdue at once; -1 h, an hour away
        wait_until(lambda: len(rec.sent) == 1, 20, what="SMS after the monotonic deadline")
        took = time.monotonic() - t0
    assert 1.5 <= took < 20, took
