"""The siren's own tests on gpiozero MockFactory pins: the daily silent test reads the relay back
(and a feedback input wired to the relay, MockConnectedPin), the audible test sounds and is
watched, a failure is a SIREN_FAULT, and a real alarm always wins over a test."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any

import pytest
from gpiozero.pins.mock import MockConnectedPin, MockFactory

from edge.config import ConfigError, SirenSelfTest, parse_config
from edge.drivers.siren import SirenPlayer, Trigger
from edge.outbox import EventDraft
from edge.patterns import parse_pattern
from edge.siren_tests import SirenTester, next_daily, next_monthly, open_feedback

RELAY, FEEDBACK = 18, 23


def _player(factory: MockFactory) -> SirenPlayer:
    cfg = parse_config({
        "node": {"node_id": "pos-test-01", "kelurahan_code": "33.74.10.1001", "rw": 1, "rt": 1,
                 "display_name": "Pos Uji"},
        "siren": {"pin": RELAY, "quiet_hours": {"enabled": False}},
        "storage": {"state_dir": "/tmp/unused-siren-tests"}, "sync": {"enabled": False}}).siren
    return SirenPlayer(cfg, pin_factory=factory)


@pytest.fixture
def wired_factory() -> Iterator[MockFactory]:
    """gpiozero's MockConnectedPin: the relay pin drives the FEEDBACK input, as a feedback contact
    wired to the relay would."""
    factory = MockFactory(pin_class=MockConnectedPin)
    factory.pin(RELAY, input_pin=factory.pin(FEEDBACK))
    try:
        yield factory
    finally:
        factory.reset()


@pytest.fixture
def wired(wired_factory: MockFactory) -> Iterator[tuple[SirenPlayer, Any, list[EventDraft]]]:
    siren = _player(wired_factory)
    fb = open_feedback(SirenSelfTest(feedback_pin=FEEDBACK), wired_factory)
    assert fb is not None
    events: list[EventDraft] = []
    try:
        yield siren, fb[0], events
    finally:
        siren.close()
        fb[1]()


def _tester(siren: SirenPlayer, events: list[EventDraft], feedback: Any = None, **cfg: Any) -> SirenTester:
    return SirenTester(SirenSelfTest(**cfg), siren, events.append, feedback=feedback)


def test_schedule_is_local_daily_and_monthly() -> None:
    now = datetime(2026, 12, 15, 4, 0, 0)
    assert next_daily(now, dtime(4, 0)) == datetime(2026, 12, 16, 4, 0)
    assert next_daily(now, dtime(4, 0, 1)) == datetime(2026, 12, 15, 4, 0, 1)
    assert next_monthly(now, 1, dtime(10, 0)) == datetime(2027, 1, 1, 10, 0)
    assert next_monthly(now, 15, dtime(10, 0)) == datetime(2026, 12, 15, 10, 0)
    assert next_monthly(datetime(2026, 1, 28, 11, 0), 28, dtime(10, 0)) == datetime(2026, 2, 28, 10, 0)


def test_silent_test_with_a_pulse_passes_and_is_recorded(wired: Any, wired_factory: MockFactory) -> None:
    siren, feedback, events = wired
    tester = _tester(siren, events, feedback, pulse_ms=20)
    result = tester.silent()
    tester.report(result)
    assert result.outcome == "pass", result
    assert result.checks == {"player_alive": True, "relay_reads_off": True, "feedback_reads_off": True,
                             "feedback_follows_pulse": True, "feedback_released": True, "relay_released": True}
    levels = [s.state for s in wired_factory.pin(RELAY).states]
    assert levels[-2:] == [1, 0]  # the pulse: closed, then open again
    [ev] = events
    assert ev.type == "SIREN_TEST" and ev.priority == 4 and ev.payload["test"] == "silent"


def test_a_dead_feedback_is_a_siren_fault(pin_factory: MockFactory) -> None:
    siren = _player(pin_factory)
    events: list[EventDraft] = []
    try:
        tester = _tester(siren, events, lambda: False, pulse_ms=20)   # the contact never closes
        tester.report(tester.silent())
        [ev] = events
        assert ev.type == "SIREN_FAULT" and ev.priority == 2
        assert ev.payload["outcome"] == "fault" and "feedback_follows_pulse" in ev.payload["detail"]
        assert not siren.state().relay_on
    finally:
        siren.close()


def test_a_relay_stuck_closed_is_a_siren_fault(wired: Any, wired_factory: MockFactory) -> None:
    siren, _feedback, events = wired
    wired_factory.pin(FEEDBACK).drive_high()  # a welded contact: closed while the relay is off
    tester = _tester(siren, events, lambda: wired_factory.pin(FEEDBACK).state == 1)
    result = tester.silent()
    assert result.outcome == "fault" and result.checks["feedback_reads_off"] is False


def test_no_silent_test_while_the_siren_sounds(wired: Any, wired_factory: MockFactory) -> None:
    siren, feedback, events = wired
    siren.play(parse_pattern("titir"), Trigger("button", "panic", "PANIC"), priority=1)
    tester = _tester(siren, events, feedback, pulse_ms=20)
    result = tester.silent()
    tester.report(result)
    assert result.outcome == "deferred" and events == []
    assert siren.state().playing


def test_an_alarm_during_the_pulse_keeps_the_relay(pin_factory: MockFactory) -> None:
    siren = _player(pin_factory)
    try:
        got: list[bool | None] = []
        pulse = threading.Thread(target=lambda: got.append(siren.pulse(0.1, lambda: True)))
        pulse.start()
        deadline = time.monotonic() + 30
        while not siren.state().relay_on and time.monotonic() < deadline:  # the pulse has begun
            time.sleep(0.001)
        act = siren.play(parse_pattern("titir"), Trigger("button", "panic", "PANIC"), priority=1)
        assert act.suppressed is None
        pulse.join(5)
        state = siren.state()
        assert state.playing and state.activation_id == act.activation_id
        # The pulse ended without switching the alarm's relay off under it.
        assert state.relay_on or any(on for _t, on in state.history[-3:])
    finally:
        siren.close()


def test_audible_test_sounds_then_stops_and_is_recorded(wired: Any, wired_factory: MockFactory) -> None:
    siren, feedback, events = wired
    tester = _tester(siren, events, feedback, audible_day=1, audible_seconds=0.6, audible_pattern="titir")
    result = asyncio.run(tester.run_test("audible"))
    assert result.outcome == "pass", result
    assert result.checks == {"relay_switched_on": True, "relay_released": True, "feedback_followed": True}
    assert not siren.state().playing and wired_factory.pin(RELAY).state == 0
    assert siren.state().last_end_reason == "self_test_end"
    assert [e.type for e in events] == ["SIREN_TEST"] and events[0].payload["test"] == "audible"


def test_an_alarm_interrupts_the_audible_test(wired: Any) -> None:
    siren, feedback, events = wired
    tester = _tester(siren, events, feedback, audible_day=1, audible_seconds=3.0, audible_pattern="titir")

    async def scenario() -> Any:
        task = asyncio.create_task(tester.run_test("audible"))
        await asyncio.sleep(0.2)
        alarm = siren.play(parse_pattern("titir"), Trigger("button", "panic", "PANIC"), priority=1)
        return alarm, await task

    alarm, result = asyncio.run(scenario())
    assert result.outcome == "deferred" and events == []
    state = siren.state()
    assert state.playing and state.activation_id == alarm.activation_id  # the test did not stop it


def test_the_scheduler_runs_the_silent_test_when_due(wired: Any) -> None:
    siren, feedback, events = wired
    t0, base = time.monotonic(), datetime(2026, 3, 1, 3, 59, 59, 700000)

    def now() -> datetime:
        return base + timedelta(seconds=time.monotonic() - t0)

    tester = SirenTester(SirenSelfTest(silent_at=dtime(4, 0), pulse_ms=10), siren, events.append,
                         feedback=feedback, now=now)

    async def scenario() -> None:
        task = asyncio.create_task(tester.run())
        deadline = time.monotonic() + 30
        while not events and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(scenario())
    assert [e.type for e in events] == ["SIREN_TEST"]
    assert tester.last["silent"].outcome == "pass"


def test_config_checks_the_feedback_pin_and_the_pattern() -> None:
    base: dict[str, Any] = {
        "node": {"node_id": "pos-test-01", "kelurahan_code": "33.74.10.1001", "rw": 1, "rt": 1,
                 "display_name": "Pos Uji"},
        "storage": {"state_dir": "/tmp/unused-siren-tests"}, "sync": {"enabled": False}}
    with pytest.raises(ConfigError, match="feedback_pin"):
        parse_config({**base, "siren": {"pin": 18, "self_test": {"feedback_pin": 18}}})
    with pytest.raises(ConfigError, match="audible_pattern"):
        parse_config({**base, "siren": {"pin": 18, "self_test": {"audible_pattern": "nonsense"}}})
    with pytest.raises(ConfigError, match="self_test"):
        parse_config({**base, "siren": {"pin": 18, "self_test": {"audible_day": 31}}})
    cfg = parse_config({**base, "siren": {"pin": 18, "self_test": {
        "audible_day": 1, "audible_at": "10:00", "silent_at": "04:30"}}})
    assert cfg.siren.self_test.silent_at == dtime(4, 30)
