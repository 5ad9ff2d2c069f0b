"""SirenPlayer on gpiozero MockFactory pins: timing, stop, max on-time, quiet hours, priorities."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import time as dtime
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from edge.config import QuietHours, SirenConfig
from edge.drivers.siren import (
    SirenCapability,
    SirenEvent,
    SirenEventKind,
    SirenPlayer,
    Trigger,
)
from edge.errors import DriverError, UnsupportedFeature
from edge.patterns import PatternTiming, parse_pattern

PIN = 17
TIMING = PatternTiming(strike_on_ms=40, strike_off_ms=40, short_pause_ms=100, group_gap_ms=200,
                       titir_on_ms=30, titir_off_ms=30, chirp_ms=40)
BUTTON = Trigger("button", "pos-utama", "PANIC", "ev-1")
TOL = 0.08  # seconds; the box is shared and loaded


class Recorder:
    """on_change sink that lets a test wait for a kind of event."""

    def __init__(self) -> None:
        self.events: list[SirenEvent] = []
        self._cond = threading.Condition()

    def __call__(self, ev: SirenEvent) -> None:
        with self._cond:
            self.events.append(ev)
            self._cond.notify_all()

    def wait_for(self, kind: SirenEventKind, timeout: float = 5.0) -> SirenEvent:
        with self._cond:
            ok = self._cond.wait_for(lambda: any(e.kind == kind for e in self.events), timeout)
            assert ok, f"no {kind} event in {timeout}s: {self.events}"
            return next(e for e in self.events if e.kind == kind)

    def kinds(self) -> list[tuple[SirenEventKind, str | None]]:
        with self._cond:
            return [(e.kind, e.reason) for e in self.events]


def make_cfg(**kw: Any) -> SirenConfig:
    return SirenConfig(**{"pin": PIN, "timing": TIMING, **kw})


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def player(pin_factory: MockFactory, rec: Recorder) -> Iterator[SirenPlayer]:
    p = SirenPlayer(make_cfg(), pin_factory, local_time=lambda: dtime(12, 0), on_change=rec)
    yield p
    p.close()


def edges(pin: Any) -> list[tuple[float, float]]:
    """Pin changes after the first one as (seconds since the first change, level)."""
    out: list[tuple[float, float]] = []
    t = 0.0
    for i, s in enumerate(pin.states[1:]):
        if i > 0:
            t += s.timestamp
        out.append((t, float(s.state)))
    return out


def expected_edges(text: str, cycles: int = 1) -> list[tuple[float, float]]:
    """The ideal edges of ``text`` (ends with the last strike's off edge)."""
    steps = parse_pattern(text).steps(TIMING) * cycles
    out, t = [], 0.0
    for i, (on, off) in enumerate(steps):
        out.append((t, 1.0))
        t += on / 1000
        out.append((t, 0.0))
        if i < len(steps) - 1:
            t += off / 1000
    return out


def assert_edges_close(actual: list[tuple[float, float]], expected: list[tuple[float, float]]):
    assert [lvl for _, lvl in actual] == [lvl for _, lvl in expected]
    for (ta, _), (te, _) in zip(actual, expected, strict=True):
        assert abs(ta - te) <= TOL, (actual, expected)


def test_first_strike_is_on_before_play_returns(pin_factory: MockFactory,
                                                player: SirenPlayer) -> None:
    pin = pin_factory.pin(PIN)
    pin.clear_states()
    act = player.play(parse_pattern("titir"), BUTTON, priority=1)
    level = pin.state  # read before any sleep or wait
    assert level == 1
    assert act.suppressed is None
    assert player.state().relay_on is True
    assert player.state().trigger == BUTTON


@pytest.mark.parametrize(("text", "cycles"), [("2-1 x1", 1), ("3.1 x1", 1), ("1 x2", 2)])
def test_finite_pattern_timing_and_finish(pin_factory: MockFactory, player: SirenPlayer,
                                          rec: Recorder, text: str, cycles: int) -> None:
    pin = pin_factory.pin(PIN)
    pin.clear_states()
    act = player.play(parse_pattern(text), BUTTON, priority=2)
    ev = rec.wait_for(SirenEventKind.FINISHED)
    assert ev.activation_id == act.activation_id and ev.reason == "finished"
    assert ev.trigger == BUTTON
    assert_edges_close(edges(pin), expected_edges(text, cycles))
    st = player.state()
    assert not st.playing and not st.relay_on and st.last_end_reason == "finished"
    # the player's own history mirrors the pin's edges, with monotonic times
    hist = st.history
    assert [on for _, on in hist] == [lvl == 1.0 for _, lvl in edges(pin)]
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(hist))


def test_repeating_pattern_keeps_cycling_until_stopped(pin_factory: MockFactory,
                                                      player: SirenPlayer, rec: Recorder) -> None:
    pin = pin_factory.pin(PIN)
    pin.clear_states()
    player.play(parse_pattern("2"), BUTTON, priority=1)
    # one cycle of "2" is 40 on, 40 off, 40 on, 200 gap = 320 ms; wait for 2 full cycles + a strike
    deadline = time.monotonic() + 5
    while len(edges(pin)) < 9 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert player.stop("operator", Trigger("operator", "pak-rt"))
    assert_edges_close(edges(pin)[:8], expected_edges("2", cycles=2))


def test_chirp_finishes_by_itself(pin_factory: MockFactory, player: SirenPlayer,
                                  rec: Recorder) -> None:
    pin = pin_factory.pin(PIN)
    pin.clear_states()
    player.play(parse_pattern("chirp"), Trigger("test", "selftest"), priority=4,
                max_seconds=player.cfg.test_max_seconds)
    rec.wait_for(SirenEventKind.FINISHED)
    assert [lvl for _, lvl in edges(pin)] == [1.0, 0.0]
    st = player.state()  # the activation is over; its trigger stays readable as the last one
    assert st.trigger is None and st.last_trigger == Trigger("test", "selftest")


def test_stop_mid_pattern_turns_relay_off_promptly(pin_factory: MockFactory,
                                                   player: SirenPlayer, rec: Recorder) -> None:
    pin = pin_factory.pin(PIN)
    # long strikes so that stop() lands inside an on-phase
    slow = SirenPlayer(make_cfg(pin=PIN + 1, timing=TIMING.model_copy(
        update={"titir_on_ms": 1000, "titir_off_ms": 1000})), pin_factory, on_change=rec)
    try:
        act = slow.play(parse_pattern("titir"), BUTTON, priority=1)
        spin = pin_factory.pin(PIN + 1)
        assert spin.state == 1
        by = Trigger("command", "cmd-42")
        assert slow.stop("command", by) is True
        assert spin.state == 0  # off when stop() returns, mid on-phase
        ev = rec.wait_for(SirenEventKind.STOPPED)
        assert (ev.activation_id, ev.reason, ev.stopped_by) == (act.activation_id, "command", by)
        n = len(spin.states)
        time.sleep(0.1)
        assert len(spin.states) == n  # the player thread does not switch it back on
        assert slow.stop("again") is False
        assert slow.state().last_end_reason == "command"
    finally:
        slow.close()
    assert pin.state == 0


def test_max_on_time_cuts_off(pin_factory: MockFactory, rec: Recorder) -> None:
    p = SirenPlayer(make_cfg(max_on_seconds=0.3), pin_factory, on_change=rec)
    try:
        p.play(parse_pattern("titir"), BUTTON, priority=1)
        ev = rec.wait_for(SirenEventKind.MAX_ON)
        assert ev.reason == "max_on_time"
        assert 0.29 <= ev.on_seconds < 0.3 + 1.0
        assert pin_factory.pin(PIN).state == 0
        assert not p.state().playing and p.state().last_end_reason == "max_on_time"
    finally:
        p.close()


def test_per_call_max_seconds_is_shorter_than_config(player: SirenPlayer, rec: Recorder) -> None:
    player.play(parse_pattern("titir"), Trigger("test", "chirp"), priority=4, max_seconds=0.2)
    ev = rec.wait_for(SirenEventKind.MAX_ON)
    assert 0.19 <= ev.on_seconds < 1.0


QUIET_ACROSS_MIDNIGHT = QuietHours.model_validate({"start": dtime(22, 0), "end": dtime(5, 0)})
QUIET_AFTERNOON = QuietHours.model_validate({"start": dtime(13, 0), "end": dtime(15, 0)})


@pytest.mark.parametrize(
    ("quiet", "now", "priority", "suppressed"),
    [
        (QUIET_ACROSS_MIDNIGHT, dtime(23, 30), 4, "quiet_hours"),
        (QUIET_ACROSS_MIDNIGHT, dtime(2, 0), 4, "quiet_hours"),
        (QUIET_ACROSS_MIDNIGHT, dtime(22, 0), 4, "quiet_hours"),
        (QUIET_ACROSS_MIDNIGHT, dtime(5, 0), 4, None),
        (QUIET_ACROSS_MIDNIGHT, dtime(12, 0), 4, None),
        (QUIET_ACROSS_MIDNIGHT, dtime(23, 30), 1, None),
        (QUIET_ACROSS_MIDNIGHT, dtime(23, 30), 3, None),
        (QUIET_AFTERNOON, dtime(14, 0), 4, "quiet_hours"),
        (QUIET_AFTERNOON, dtime(23, 30), 4, None),
        (QuietHours.model_validate({"allow_p4": True}), dtime(23, 30), 4, None),
        (QuietHours.model_validate({"enabled": False}), dtime(23, 30), 4, None),
    ],
)
def test_quiet_hours(pin_factory: MockFactory, rec: Recorder, quiet: QuietHours, now: dtime,
                     priority: int, suppressed: str | None) -> None:
    p = SirenPlayer(make_cfg(quiet_hours=quiet), pin_factory, local_time=lambda: now,
                    on_change=rec)
    try:
        pin = pin_factory.pin(PIN)
        pin.clear_states()
        act = p.play(parse_pattern("1-1-1-1"), Trigger("operator", "bu-rt", "KUMPUL"),
                     priority=priority)
        assert act.suppressed == suppressed
        if suppressed:
            assert len(pin.states) == 1 and pin.state == 0  # the relay was never touched
            assert rec.kinds() == [(SirenEventKind.SUPPRESSED, "quiet_hours")]
            assert not p.state().playing
        else:
            assert pin.state == 1
            assert rec.kinds() == [(SirenEventKind.STARTED, None)]
    finally:
        p.close()


def test_silent_pattern_is_suppressed(pin_factory: MockFactory, player: SirenPlayer,
                                      rec: Recorder) -> None:
    pin = pin_factory.pin(PIN)
    pin.clear_states()
    act = player.play(parse_pattern("silent"), Trigger("button", "patroli"), priority=4)
    assert act.suppressed == "silent"
    assert len(pin.states) == 1
    assert rec.kinds() == [(SirenEventKind.SUPPRESSED, "silent")]


def test_p4_cannot_preempt_p1(pin_factory: MockFactory, player: SirenPlayer,
                              rec: Recorder) -> None:
    p1 = player.play(parse_pattern("titir"), BUTTON, priority=1)
    p4 = player.play(parse_pattern("1-1-1-1"), Trigger("operator", "bu-rt"), priority=4)
    assert p4.suppressed == "busy"
    st = player.state()
    assert st.playing and st.pattern == "titir" and st.priority == 1
    assert st.activation_id == p1.activation_id
    assert (SirenEventKind.SUPPRESSED, "busy") in rec.kinds()


def test_p1_preempts_p4_and_equal_priority_preempts(pin_factory: MockFactory,
                                                    player: SirenPlayer, rec: Recorder) -> None:
    p4 = player.play(parse_pattern("1-1-1-1"), Trigger("operator", "bu-rt"), priority=4)
    p1 = player.play(parse_pattern("titir"), BUTTON, priority=1)
    assert p1.suppressed is None
    assert pin_factory.pin(PIN).state == 1
    stopped = rec.wait_for(SirenEventKind.STOPPED)
    assert (stopped.activation_id, stopped.reason, stopped.stopped_by) == \
        (p4.activation_id, "preempted", BUTTON)
    again = player.play(parse_pattern("2-2-2"), Trigger("button", "pos-2"), priority=1)
    assert again.suppressed is None
    assert player.state().activation_id == again.activation_id
    assert player.state().pattern == "2-2-2"


def test_active_low_relay(pin_factory: MockFactory, rec: Recorder) -> None:
    p = SirenPlayer(make_cfg(active_high=False), pin_factory, on_change=rec)
    try:
        pin = pin_factory.pin(PIN)
        assert pin.state == 1  # released relay: pin high
        assert p.state().relay_on is False
        p.play(parse_pattern("titir"), BUTTON, priority=1)
        assert pin.state == 0  # energised: pin low
        assert p.state().relay_on is True
        p.stop("operator")
        assert pin.state == 1 and p.state().relay_on is False
    finally:
        p.close()


def test_volume_is_rejected_before_the_relay(pin_factory: MockFactory, player: SirenPlayer,
                                             rec: Recorder) -> None:
    assert SirenCapability.VOLUME not in player.capabilities
    assert SirenCapability.TONES not in player.capabilities
    assert SirenCapability.MAX_ON_TIME in player.capabilities
    pin = pin_factory.pin(PIN)
    pin.clear_states()
    with pytest.raises(UnsupportedFeature) as info:
        player.play(parse_pattern("chirp"), Trigger("test", "x"), priority=4, volume=0.3)
    assert isinstance(info.value, DriverError) and info.value.feature == "volume"
    assert len(pin.states) == 1 and rec.kinds() == []


def test_on_change_may_call_back_into_the_player(pin_factory: MockFactory) -> None:
    seen: list[tuple[SirenEventKind, bool]] = []
    holder: list[SirenPlayer] = []

    def on_change(ev: SirenEvent) -> None:
        seen.append((ev.kind, holder[0].state().playing))
        if ev.kind == SirenEventKind.STARTED:
            holder[0].stop("from-callback")

    p = SirenPlayer(make_cfg(), pin_factory, on_change=on_change)
    holder.append(p)
    try:
        p.play(parse_pattern("titir"), BUTTON, priority=1)
        assert seen == [(SirenEventKind.STARTED, True), (SirenEventKind.STOPPED, False)]
        assert pin_factory.pin(PIN).state == 0
    finally:
        p.close()


def test_alive_and_close(pin_factory: MockFactory, rec: Recorder) -> None:
    p = SirenPlayer(make_cfg(), pin_factory, on_change=rec)
    assert p.alive()
    p.play(parse_pattern("titir"), BUTTON, priority=1)
    p.close()
    assert not p.alive()
    assert (SirenEventKind.STOPPED, "closed") in rec.kinds()
    assert pin_factory.pin(PIN).state == 0
