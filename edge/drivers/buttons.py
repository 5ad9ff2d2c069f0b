"""Panic-button logic over gpiozero: debounce, hold-to-trigger, multi-tap, patrol check-in, tamper.

A "logical press" is a person pressing the button, whatever the wiring:

* Normally-open (default): pressing closes the contact; gpiozero's ``is_pressed`` is the logical
  press. TRIGGER fires once the press has lasted ``hold_seconds`` (a timer cancelled on release;
  ``hold_seconds == 0`` fires on press). With ``press_count = N`` the N-th press within
  ``press_window_seconds`` must be held that long.
* Normally-closed (``cfg.normally_closed``): the loop is closed at rest (gpiozero reads
  "pressed") and a person pressing OPENS it. At the moment the loop opens we cannot tell a press
  from a cut wire, so an NC button triggers ON RELEASE: TRIGGER when the loop was open for at
  least ``hold_seconds`` and closed again before ``tamper_after_seconds``. A loop open longer than
  ``tamper_after_seconds`` is TAMPER (never TRIGGER), also when it is already open at start; the
  loop closing again after a TAMPER is TAMPER_CLEARED.

A short press (released before it could trigger) on a ``patrol_checkin`` button is CHECKIN. With
``press_count > 1`` the taps belong to the trigger sequence, so no CHECKIN is emitted.

Debounce is ours (gpiozero's ``bounce_time`` does nothing on mock pins): an edge closer than
``debounce_ms`` to the last accepted edge is ignored, and the pin is read again when the debounce
window ends so a real change hidden in the chatter is not lost.

``on_signal`` runs on gpiozero's callback thread or a timer thread, never with our lock held. A
TAMPER for a loop already open at start is delivered from the constructor.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gpiozero import Button

from edge.config import ButtonConfig
from edge.errors import ConfigError
from edge.logs import log_event

logger = logging.getLogger(__name__)

MAX_HOLD_SECONDS = 300.0
_GPIOZERO_HOLD_POLL = 0.05


class ButtonAction(StrEnum):
    TRIGGER = "TRIGGER"
    CHECKIN = "CHECKIN"
    TAMPER = "TAMPER"
    TAMPER_CLEARED = "TAMPER_CLEARED"


@dataclass(frozen=True)
class ButtonSignal:
    """Something a button did that the alarm engine must act on."""

    button: str
    action: ButtonAction
    incident_type: str
    held_seconds: float
    presses: int
    at_mono: float


class ButtonWatcher:
    """Turns raw edges of one gpiozero Button into ``ButtonSignal``s."""

    def __init__(
        self,
        cfg: ButtonConfig,
        on_signal: Callable[[ButtonSignal], None],
        pin_factory: Any = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        hold_seconds: float | None = None,
    ) -> None:
        self.cfg = cfg
        self._on_signal = on_signal
        self._clock = clock
        self._lock = threading.Lock()
        self._hold = cfg.hold_seconds if hold_seconds is None else self._checked(hold_seconds)
        self._debounce = cfg.debounce_ms / 1000.0
        self._nc = cfg.normally_closed
        self._closed = False
        self._pressed = False  # accepted (debounced) logical state
        self._last_edge = float("-inf")
        self._press_started = 0.0
        self._presses: deque[float] = deque()
        self._triggered = False  # this press already produced TRIGGER
        self._tampered = False
        self._gen = 0  # bumped on every accepted edge: stale timers see a different value
        self._timers: list[threading.Timer] = []
        self._settle_pending = False
        self.last_activity_mono = clock()
        # hold_time only paces gpiozero's own HoldThread (we do not use when_held); its default
        # of 1 s makes close() wait up to 1 s while the contact is closed (NC buttons at rest).
        self._button = Button(cfg.pin, pull_up=cfg.pull_up, bounce_time=None,
                              hold_time=_GPIOZERO_HOLD_POLL, pin_factory=pin_factory)
        self._button.when_pressed = self._raw_pressed
        self._button.when_released = self._raw_released
        signals: list[ButtonSignal] = []
        with self._lock:
            if self._read_logical():
                self._pressed = True
                self._press_started = self.last_activity_mono
                if self._nc:
                    self._tampered = True
                    signals.append(self._signal(ButtonAction.TAMPER, self.last_activity_mono))
        self._deliver(signals)

    # -- public API -------------------------------------------------------------------------

    @property
    def is_pressed(self) -> bool:
        """Logical (debounced, wiring-aware) press: for NC buttons, the loop is open."""
        with self._lock:
            return self._pressed

    @property
    def hold_seconds(self) -> float:
        with self._lock:
            return self._hold

    def set_hold_seconds(self, seconds: float) -> None:
        """Change the hold (central lengthens it after false alarms); used from the next press."""
        seconds = self._checked(seconds)
        with self._lock:
            self._hold = seconds
        log_event(logger, "button_hold_changed", button=self.cfg.name, hold_seconds=seconds)

    def close(self) -> None:
        """Cancel timers and release the pin."""
        with self._lock:
            self._closed = True
            self._gen += 1
            timers, self._timers = self._timers, []
        for t in timers:
            t.cancel()
        self._button.close()

    def __enter__(self) -> ButtonWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- edges --------------------------------------------------------------------------------

    @staticmethod
    def _checked(seconds: float) -> float:
        if not 0 <= seconds <= MAX_HOLD_SECONDS:
            raise ConfigError(f"must be between 0 and {MAX_HOLD_SECONDS:g}", "hold_seconds")
        return float(seconds)

    def _read_logical(self) -> bool:
        pressed = bool(self._button.is_pressed)
        return not pressed if self._nc else pressed

    def _raw_pressed(self) -> None:
        self._raw_edge(not self._nc)

    def _raw_released(self) -> None:
        self._raw_edge(self._nc)

    def _raw_edge(self, logical: bool) -> None:
        now = self._clock()
        signals: list[ButtonSignal] = []
        with self._lock:
            if self._closed or logical == self._pressed:
                return
            if now - self._last_edge < self._debounce:
                if not self._settle_pending:
                    self._settle_pending = True
                    self._start_timer(self._last_edge + self._debounce - now, self._settle, None)
                return
            self._accept(logical, now, signals)
        self._deliver(signals)

    def _settle(self, _gen: int | None) -> None:
        """End of a debounce window: accept the level the pin has settled at, if it changed."""
        signals: list[ButtonSignal] = []
        with self._lock:
            self._settle_pending = False
            if self._closed:
                return
            logical = self._read_logical()
            if logical != self._pressed:
                self._accept(logical, self._clock(), signals)
        self._deliver(signals)

    def _accept(self, pressed: bool, now: float, signals: list[ButtonSignal]) -> None:
        """An accepted logical edge (lock held); appends signals to deliver after unlocking."""
        self._pressed = pressed
        self._last_edge = now
        self.last_activity_mono = now
        self._gen += 1
        if pressed:
            self._on_press(now, signals)
        else:
            self._on_release(now, signals)

    def _on_press(self, now: float, signals: list[ButtonSignal]) -> None:
        self._press_started = now
        self._triggered = False
        window = self.cfg.press_window_seconds
        self._presses.append(now)
        while self._presses and now - self._presses[0] > window:
            self._presses.popleft()
        if self._nc:
            self._start_timer(self.cfg.tamper_after_seconds, self._tamper_due, self._gen)
            return
        if len(self._presses) >= self.cfg.press_count:
            if self._hold <= 0:
                self._fire_trigger(now, signals)
            else:
                self._start_timer(self._hold, self._hold_due, self._gen)

    def _on_release(self, now: float, signals: list[ButtonSignal]) -> None:
        held = now - self._press_started
        if self._nc:
            if self._tampered:
                self._tampered = False
                self._presses.clear()
                signals.append(self._signal(ButtonAction.TAMPER_CLEARED, now, held))
                return
            if held >= self._hold and len(self._presses) >= self.cfg.press_count:
                self._fire_trigger(now, signals, held)
                return
        if not self._triggered and self.cfg.patrol_checkin and self.cfg.press_count == 1:
            signals.append(self._signal(ButtonAction.CHECKIN, now, held))

    def _fire_trigger(self, now: float, signals: list[ButtonSignal],
                      held: float | None = None) -> None:
        self._triggered = True
        presses = len(self._presses)
        self._presses.clear()
        signals.append(self._signal(ButtonAction.TRIGGER, now,
                                    now - self._press_started if held is None else held, presses))

    # -- timers ---------------------------------------------------------------------------------

    def _start_timer(self, delay: float, fn: Callable[[int | None], None],
                     gen: int | None) -> None:
        self._timers = [t for t in self._timers if t.is_alive()]
        t = threading.Timer(max(0.0, delay), fn, args=(gen,))
        t.daemon = True
        t.name = f"button-{self.cfg.name}"
        self._timers.append(t)
        t.start()

    def _hold_due(self, gen: int | None) -> None:
        signals: list[ButtonSignal] = []
        with self._lock:
            if self._closed or gen != self._gen or not self._pressed or self._triggered:
                return
            self._fire_trigger(self._clock(), signals)
        self._deliver(signals)

    def _tamper_due(self, gen: int | None) -> None:
        signals: list[ButtonSignal] = []
        with self._lock:
            if self._closed or gen != self._gen or not self._pressed or self._tampered:
                return
            self._tampered = True
            now = self._clock()
            signals.append(self._signal(ButtonAction.TAMPER, now, now - self._press_started))
        self._deliver(signals)

    # -- delivery -------------------------------------------------------------------------------

    def _signal(self, action: ButtonAction, now: float, held: float = 0.0,
                presses: int | None = None) -> ButtonSignal:
        count = len(self._presses) if presses is None else presses
        return ButtonSignal(self.cfg.name, action, self.cfg.incident.value, max(0.0, held),
                            count, now)

    def _deliver(self, signals: list[ButtonSignal]) -> None:
        """Log and hand signals to ``on_signal``; called WITHOUT the lock held."""
        for sig in signals:
            log_event(logger, "button_signal", button=sig.button, action=sig.action.value,
                      incident_type=sig.incident_type, held_seconds=round(sig.held_seconds, 3),
                      presses=sig.presses)
            try:
                self._on_signal(sig)
            except Exception:
                logger.exception("button on_signal callback failed")
