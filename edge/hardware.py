"""Builds the post's devices: real ones on a Pi, gpiozero MockFactory pins and the fake camera and
modem when simulating. Everything behind the same driver interfaces."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPWMPin

from edge.config import ButtonConfig, ModemConfig, NodeConfig
from edge.drivers.camera import Camera, make_camera
from edge.drivers.modem import Modem
from edge.drivers.siren import SirenPlayer
from edge.errors import ControlError, DriverError
from edge.logs import log_event

log = logging.getLogger("kentongan.hardware")


class WiredMockPin(MockPWMPin):
    """A MockFactory pin that models a wired switch: once a simulated switch drives a level, the
    pull resistor set up by gpiozero (which MockPin models by driving the pin) does not override
    it. A closed normally-closed loop therefore reads closed from the start, as on real wiring."""

    driven: bool | None = None

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        if self.driven is not None:
            if self.driven:
                self.drive_high()
            else:
                self.drive_low()


class SimulatedInputs:
    """Presses simulated buttons by driving MockFactory pins, wiring-aware (pull-up, NC loops)."""

    def __init__(self, factory: MockFactory, buttons: list[ButtonConfig]) -> None:
        self.factory = factory
        self.buttons = {b.name: b for b in buttons}
        self._lock = threading.Lock()

    def _closed_high(self, b: ButtonConfig) -> bool:
        # With the pull-up a closed switch pulls the pin to GND (low); without, to 3V3 (high).
        return not b.pull_up

    def _drive(self, b: ButtonConfig, closed: bool) -> None:
        pin = self.factory.pin(b.pin)
        high = self._closed_high(b) if closed else not self._closed_high(b)
        pin.driven = high
        if high:
            pin.drive_high()
        else:
            pin.drive_low()

    def prime(self) -> None:
        """Put every loop in its rest state: NC loops closed, NO contacts open."""
        for b in self.buttons.values():
            self._drive(b, closed=b.normally_closed)

    def set_pressed(self, name: str, pressed: bool) -> None:
        b = self.button(name)
        # Pressing a NO contact closes it; pressing a NC contact opens the loop.
        self._drive(b, closed=pressed != b.normally_closed)

    def button(self, name: str) -> ButtonConfig:
        try:
            return self.buttons[name]
        except KeyError:
            known = ", ".join(sorted(self.buttons)) or "none configured"
            raise ControlError(f"unknown button {name!r}; known buttons: {known}") from None

    def press(self, name: str, hold: float) -> None:
        """Blocking: press, hold, release (call from a worker thread, like real GPIO edges)."""
        self.button(name)
        with self._lock:
            self.set_pressed(name, True)
            time.sleep(max(0.0, hold))
            self.set_pressed(name, False)


@dataclass
class Hardware:
    """The devices of one post."""

    pin_factory: Any
    siren: SirenPlayer
    camera: Camera | None
    modem: Modem | None
    simulated: SimulatedInputs | None = None
    closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for closer in reversed(self.closers):
            with contextlib.suppress(Exception):
                closer()


def _make_modem(cfg: ModemConfig, simulate: bool, closers: list[Any]) -> Modem | None:
    if not cfg.enabled:
        return None
    port_cfg = cfg
    if simulate:
        from edge.drivers.fake_modem import FakeModem

        fake = FakeModem()
        fake.start()
        closers.append(fake.stop)
        port_cfg = cfg.model_copy(update={"port": fake.port})
    modem = Modem(port_cfg)
    try:
        modem.open()
    except DriverError as exc:
        # A dead modem must not stop the post: the watchdog keeps trying.
        log_event(log, "modem_open_failed", logging.WARNING, error=str(exc))
    closers.append(modem.close)
    return modem


def build_hardware(
    cfg: NodeConfig, *, simulate: bool, on_siren_change: Any = None
) -> Hardware:
    """Create the pin factory, siren, camera and modem for this post."""
    closers: list[Any] = []
    factory: Any = None
    simulated: SimulatedInputs | None = None
    if simulate:
        factory = MockFactory(pin_class=WiredMockPin)
        simulated = SimulatedInputs(factory, list(cfg.buttons))
        simulated.prime()
    siren = SirenPlayer(cfg.siren, pin_factory=factory, on_change=on_siren_change)
    closers.append(siren.close)
    cam_cfg = cfg.camera
    if simulate and cam_cfg.backend == "picamera2":
        cam_cfg = cam_cfg.model_copy(update={"backend": "fake"})
    camera: Camera | None
    try:
        camera = make_camera(cam_cfg, cfg.node.node_id)
    except DriverError as exc:
        log_event(log, "camera_unavailable", logging.WARNING, error=str(exc))
        camera = None
    if camera is not None:
        closers.append(camera.close)
    modem = _make_modem(cfg.modem, simulate, closers)
    return Hardware(factory, siren, camera, modem, simulated, closers)
