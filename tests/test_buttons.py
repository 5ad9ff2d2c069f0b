"""ButtonWatcher on gpiozero MockFactory pins: debounce, hold, taps, check-in, NC tamper."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from edge.config import ButtonConfig
from edge.drivers.buttons import ButtonAction, ButtonSignal, ButtonWatcher
from edge.errors import ConfigError

PIN = 5
WAIT = 5.0  # generous: the box is shared


class LoopPin(MockPWMPin):
    """Fake normally-closed loop to GND: at power-up the closed wire holds the pin low against the
    pull-up (a plain MockPin would be pulled high, i.e. an open loop). ``drive_high`` opens it."""

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        if self.function == "input":
            self._change_state(False)


class Sink:
    """on_signal target that records the calling thread and lets tests wait."""

    def __init__(self) -> None:
        self.signals: list[ButtonSignal] = []
        self.threads: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, sig: ButtonSignal) -> None:
        with self._cond:
            self.signals.append(sig)
            self.threads.append(threading.current_thread().name)
            self._cond.notify_all()

    def wait_for(self, action: ButtonAction, count: int = 1, timeout: float = WAIT) -> ButtonSignal:
        def enough() -> bool:
            return sum(s.action == action for s in self.signals) >= count

        with self._cond:
            assert self._cond.wait_for(enough, timeout), f"no {action}: {self.signals}"
            return [s for s in self.signals if s.action == action][count - 1]

    def quiet_for(self, seconds: float) -> None:
        """Assert nothing new arrives for ``seconds`` (absence can only be shown by waiting)."""
        with self._cond:
            n = len(self.signals)
            self._cond.wait_for(lambda: len(self.signals) > n, seconds)
            assert self.signals[n:] == []

    def actions(self) -> list[ButtonAction]:
        with self._cond:
            return [s.action for s in self.signals]


class ManualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def cfg(**kw: Any) -> ButtonConfig:
    base: dict[str, Any] = {"name": "pos-utama", "pin": PIN, "incident": "PANIC",
                            "hold_seconds": 0.1, "debounce_ms": 10}
    return ButtonConfig.model_validate({**base, **kw})


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def make(pin_factory: MockFactory, sink: Sink) -> Iterator[Callable[..., ButtonWatcher]]:
    made: list[ButtonWatcher] = []

    def _make(c: ButtonConfig, **kw: Any) -> ButtonWatcher:
        w = ButtonWatcher(c, sink, pin_factory, **kw)
        made.append(w)
        return w

    yield _make
    for w in made:
        w.close()


def in_thread(fn: Callable[[], None]) -> None:
    """Run ``fn`` on another thread (MockFactory runs callbacks on the driving thread)."""
    t = threading.Thread(target=fn, name="driver")
    t.start()
    t.join(WAIT)


def test_bounce_chatter_within_debounce_is_one_press(pin_factory: MockFactory, sink: Sink,
                                                     make: Callable[..., ButtonWatcher]) -> None:
    clock = ManualClock()
    w = make(cfg(hold_seconds=0, debounce_ms=30), clock=clock)
    pin = pin_factory.pin(PIN)

    def chatter() -> None:
        for i, level in enumerate([0, 1, 0, 1, 0, 1, 0]):
            clock.t = 1000.0 + i * 0.003  # 3 ms apart, all inside the 30 ms window
            pin.drive_low() if level == 0 else pin.drive_high()

    in_thread(chatter)
    assert sink.actions() == [ButtonAction.TRIGGER]
    assert w.is_pressed
    clock.t += 1.0
    sink.quiet_for(0.1)  # the settle check finds the pin still pressed: nothing new
    assert w.is_pressed
    in_thread(pin.drive_high)
    clock.t += 1.0
    in_thread(pin.drive_low)  # a second real press is a second trigger
    assert sink.actions() == [ButtonAction.TRIGGER, ButtonAction.TRIGGER]


def test_release_hidden_in_chatter_is_not_lost(pin_factory: MockFactory, sink: Sink,
                                               make: Callable[..., ButtonWatcher]) -> None:
    w = make(cfg(hold_seconds=1.0, debounce_ms=50, patrol_checkin=True))
    pin = pin_factory.pin(PIN)

    def tap() -> None:
        pin.drive_low()
        pin.drive_high()  # within the debounce window: ignored, then re-read when it ends

    in_thread(tap)
    assert sink.wait_for(ButtonAction.CHECKIN).held_seconds >= 0.04
    assert not w.is_pressed
    assert ButtonAction.TRIGGER not in sink.actions()


def test_hold_triggers_on_timer_thread(pin_factory: MockFactory, sink: Sink,
                                       make: Callable[..., ButtonWatcher]) -> None:
    w = make(cfg(hold_seconds=0.1))
    pin = pin_factory.pin(PIN)
    before = w.last_activity_mono
    in_thread(pin.drive_low)
    assert w.is_pressed and w.last_activity_mono > before
    sig = sink.wait_for(ButtonAction.TRIGGER)
    assert sig.button == "pos-utama" and sig.incident_type == "PANIC" and sig.presses == 1
    assert sig.held_seconds >= 0.1
    assert sink.threads[0] not in ("driver", "MainThread")
    in_thread(pin.drive_high)
    sink.quiet_for(0.05)
    assert sink.actions() == [ButtonAction.TRIGGER]  # no CHECKIN, no second trigger


def test_short_press_does_nothing(pin_factory: MockFactory, sink: Sink,
                                  make: Callable[..., ButtonWatcher]) -> None:
    make(cfg(hold_seconds=0.3))
    pin = pin_factory.pin(PIN)
    in_thread(pin.drive_low)
    time.sleep(0.05)
    in_thread(pin.drive_high)
    sink.quiet_for(0.4)  # past the hold: the cancelled timer must not fire


def test_repress_does_not_inherit_the_cancelled_hold_timer(
        pin_factory: MockFactory, sink: Sink, make: Callable[..., ButtonWatcher]) -> None:
    make(cfg(hold_seconds=0.3))
    pin = pin_factory.pin(PIN)
    in_thread(pin.drive_low)
    time.sleep(0.15)
    in_thread(pin.drive_high)
    in_thread(pin.drive_low)  # pressed again while the first press's timer is still pending
    sink.quiet_for(0.2)  # the first timer's moment passes: the new press is only ~0.2 s old
    sig = sink.wait_for(ButtonAction.TRIGGER)
    assert sig.held_seconds >= 0.3


def test_hold_zero_triggers_on_press(pin_factory: MockFactory, sink: Sink,
                                     make: Callable[..., ButtonWatcher]) -> None:
    make(cfg(hold_seconds=0))
    in_thread(pin_factory.pin(PIN).drive_low)
    assert sink.actions() == [ButtonAction.TRIGGER]
    assert sink.threads == ["driver"]  # synchronous on the (mock) callback thread


def test_short_press_on_patrol_button_is_checkin(pin_factory: MockFactory, sink: Sink,
                                                 make: Callable[..., ButtonWatcher]) -> None:
    make(cfg(hold_seconds=0.3, patrol_checkin=True, incident="PATROLI"))
    pin = pin_factory.pin(PIN)
    in_thread(pin.drive_low)
    time.sleep(0.03)
    in_thread(pin.drive_high)
    sig = sink.wait_for(ButtonAction.CHECKIN)
    assert sig.incident_type == "PATROLI" and 0.02 <= sig.held_seconds < 0.3
    # a long press on the same button is a TRIGGER and its release is not a check-in
    in_thread(pin.drive_low)
    sink.wait_for(ButtonAction.TRIGGER)
    in_thread(pin.drive_high)
    sink.quiet_for(0.05)
    assert sink.actions() == [ButtonAction.CHECKIN, ButtonAction.TRIGGER]


def test_three_taps_within_window_trigger(pin_factory: MockFactory, sink: Sink,
                                          make: Callable[..., ButtonWatcher]) -> None:
    make(cfg(hold_seconds=0.05, press_count=3, press_window_seconds=3.0))
    pin = pin_factory.pin(PIN)
    for _ in range(2):
        in_thread(pin.drive_low)
        time.sleep(0.015)
        in_thread(pin.drive_high)
        time.sleep(0.015)
    assert sink.actions() == []
    in_thread(pin.drive_low)
    sig = sink.wait_for(ButtonAction.TRIGGER)
    assert sig.presses == 3 and sig.held_seconds >= 0.05


def test_three_taps_spread_beyond_window_do_not_trigger(
        pin_factory: MockFactory, sink: Sink, make: Callable[..., ButtonWatcher]) -> None:
    clock = ManualClock()
    make(cfg(hold_seconds=0.05, press_count=3, press_window_seconds=1.5), clock=clock)
    pin = pin_factory.pin(PIN)
    for i in range(3):
        clock.t = 1000.0 + 2.0 * i  # taps 2 s apart: never 3 inside 1.5 s
        in_thread(pin.drive_low)
        if i < 2:
            clock.t += 0.02
            in_thread(pin.drive_high)
    sink.quiet_for(0.3)  # the third press is held well past hold_seconds: still nothing


def test_nc_press_and_release_triggers_on_release(pin_factory: MockFactory, sink: Sink,
                                                  make: Callable[..., ButtonWatcher]) -> None:
    pin = pin_factory.pin(PIN, pin_class=LoopPin)
    w = make(cfg(normally_closed=True, hold_seconds=0.1, tamper_after_seconds=2.0))
    assert not w.is_pressed and sink.actions() == []  # closed loop at rest: quiet
    in_thread(pin.drive_high)  # the person opens the loop
    assert w.is_pressed
    time.sleep(0.15)
    assert sink.actions() == []  # cannot tell a press from a cut wire yet
    in_thread(pin.drive_low)
    sig = sink.wait_for(ButtonAction.TRIGGER)
    assert sig.held_seconds >= 0.1 and sig.presses == 1
    sink.quiet_for(0.05)
    assert sink.actions() == [ButtonAction.TRIGGER]


def test_nc_short_open_does_not_trigger(pin_factory: MockFactory, sink: Sink,
                                        make: Callable[..., ButtonWatcher]) -> None:
    pin = pin_factory.pin(PIN, pin_class=LoopPin)
    make(cfg(normally_closed=True, hold_seconds=0.2, tamper_after_seconds=2.0))
    in_thread(pin.drive_high)
    time.sleep(0.03)
    in_thread(pin.drive_low)
    sink.quiet_for(0.1)


def test_nc_open_too_long_is_tamper_then_cleared(pin_factory: MockFactory, sink: Sink,
                                                 make: Callable[..., ButtonWatcher]) -> None:
    pin = pin_factory.pin(PIN, pin_class=LoopPin)
    make(cfg(normally_closed=True, hold_seconds=0.05, tamper_after_seconds=0.2))
    in_thread(pin.drive_high)  # wire cut
    tamper = sink.wait_for(ButtonAction.TAMPER)
    assert tamper.held_seconds >= 0.2
    in_thread(pin.drive_low)  # repaired
    sink.wait_for(ButtonAction.TAMPER_CLEARED)
    assert sink.actions() == [ButtonAction.TAMPER, ButtonAction.TAMPER_CLEARED]
    # after repair a normal press works again
    in_thread(pin.drive_high)
    time.sleep(0.08)
    in_thread(pin.drive_low)
    sink.wait_for(ButtonAction.TRIGGER)


def test_nc_loop_open_at_start_is_tamper(pin_factory: MockFactory, sink: Sink,
                                         make: Callable[..., ButtonWatcher]) -> None:
    # a plain mock pin is pulled high: for an NC button that is an open loop
    w = make(cfg(normally_closed=True, tamper_after_seconds=5.0))
    assert sink.actions() == [ButtonAction.TAMPER]
    assert w.is_pressed
    in_thread(pin_factory.pin(PIN).drive_low)
    assert sink.actions() == [ButtonAction.TAMPER, ButtonAction.TAMPER_CLEARED]
    assert not w.is_pressed


def test_set_hold_seconds_lengthens_the_hold(pin_factory: MockFactory, sink: Sink,
                                             make: Callable[..., ButtonWatcher]) -> None:
    w = make(cfg(hold_seconds=0.05))
    w.set_hold_seconds(0.4)
    assert w.hold_seconds == 0.4
    pin = pin_factory.pin(PIN)
    start = time.monotonic()
    in_thread(pin.drive_low)
    sink.quiet_for(0.2)  # the old 50 ms hold no longer triggers
    sig = sink.wait_for(ButtonAction.TRIGGER)
    assert sig.held_seconds >= 0.4 and time.monotonic() - start >= 0.4
    with pytest.raises(ConfigError):
        w.set_hold_seconds(-1)


def test_hold_override_in_constructor(pin_factory: MockFactory, sink: Sink,
                                      make: Callable[..., ButtonWatcher]) -> None:
    w = make(cfg(hold_seconds=2.0), hold_seconds=0.05)
    assert w.hold_seconds == 0.05
    in_thread(pin_factory.pin(PIN).drive_low)
    sink.wait_for(ButtonAction.TRIGGER, timeout=1.5)  # far sooner than the config's 2 s


def test_callback_may_call_back_into_the_watcher(pin_factory: MockFactory) -> None:
    done = threading.Event()
    seen: list[bool] = []
    holder: list[ButtonWatcher] = []

    def on_signal(sig: ButtonSignal) -> None:
        seen.append(holder[0].is_pressed)
        holder[0].set_hold_seconds(1.0)
        done.set()

    w = ButtonWatcher(cfg(hold_seconds=0.05), on_signal, pin_factory)
    holder.append(w)
    try:
        in_thread(pin_factory.pin(PIN).drive_low)
        assert done.wait(WAIT)
        assert seen == [True] and w.hold_seconds == 1.0
    finally:
        w.close()


def test_close_cancels_pending_hold(pin_factory: MockFactory, sink: Sink) -> None:
    w = ButtonWatcher(cfg(hold_seconds=0.1), sink, pin_factory)
    in_thread(pin_factory.pin(PIN).drive_low)
    w.close()
    sink.quiet_for(0.25)
