"""The self-test's hardware checks (``edge.selftest``): siren chirp, buttons at rest, camera
frame, modem AT/SIM/signal. Each drives the real driver (or, with ``--simulate``, gpiozero
MockFactory pins, the fake camera and a FakeModem); the agent must be stopped (it holds the pins
and the modem port).
"""

from __future__ import annotations

import time
from typing import Any

from edge.config import NodeConfig
from edge.errors import KentonganError
from edge.selftest_result import FAIL, PASS, SKIP, WARN, CheckResult, SelftestOptions


def _pin_factory(cfg: NodeConfig, opts: SelftestOptions) -> Any:
    if opts.pin_factory is not None:
        return opts.pin_factory
    if opts.simulate:
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        from edge.hardware import SimulatedInputs

        factory = MockFactory(pin_class=MockPWMPin)
        SimulatedInputs(factory, list(cfg.buttons)).prime()
        opts.pin_factory = factory
        opts.primed = True
        return factory
    return None


def check_siren(cfg: NodeConfig, opts: SelftestOptions) -> CheckResult:
    if not opts.sound_siren:
        return CheckResult("siren", SKIP, "not sounded (--no-siren)", "", required=False)
    from edge.drivers.siren import SirenPlayer, Trigger
    from edge.incidents import IncidentType

    try:
        player = SirenPlayer(cfg.siren, pin_factory=_pin_factory(cfg, opts))
    except Exception as exc:
        return CheckResult("siren", FAIL, f"cannot drive GPIO {cfg.siren.pin}: {exc}",
                           "stop the agent (systemctl stop kentongan-edge); check the user is in "
                           "group gpio and siren.pin")
    try:
        limit = cfg.siren.test_max_seconds
        # P3 so that quiet hours do not suppress a chirp the technician asked for.
        act = player.play(cfg.siren.pattern_for(IncidentType.TEST), Trigger("test", "selftest", "TEST"), priority=3,
                          max_seconds=limit)
        deadline = time.monotonic() + limit + 1.0
        while player.state().playing and time.monotonic() < deadline:
            time.sleep(0.02)
        st = player.state()
        toggled = [on for _, on in st.history]
    finally:
        player.close()
    if act.suppressed:
        return CheckResult("siren", FAIL, f"chirp suppressed ({act.suppressed})",
                           "check the siren config")
    if True in toggled and False in toggled and not st.relay_on:
        return CheckResult("siren", PASS, f"relay on GPIO {cfg.siren.pin} switched on and off "
                           f"(chirp <= {limit:g}s); confirm you heard it")
    return CheckResult("siren", FAIL, f"relay did not toggle (history {toggled})",
                       "check relay wiring, siren.active_high and the 12 V supply")


def check_buttons(cfg: NodeConfig, opts: SelftestOptions) -> list[CheckResult]:
    if not cfg.buttons:
        return [CheckResult("buttons", WARN, "no buttons configured", "add [[buttons]]",
                            required=False)]
    from gpiozero import Button

    out = []
    factory = _pin_factory(cfg, opts)
    for b in cfg.buttons:
        name = f"button {b.name}"
        try:
            dev = Button(b.pin, pull_up=b.pull_up, pin_factory=factory)
        except Exception as exc:
            out.append(CheckResult(name, FAIL, f"cannot read GPIO {b.pin}: {exc}",
                                   "stop the agent; check buttons pin and group gpio"))
            continue
        if opts.primed:  # opening the device resets the mock pull: put the rest state back
            from edge.hardware import SimulatedInputs

            SimulatedInputs(factory, [b]).prime()
        try:
            closed = bool(dev.is_pressed)
        finally:
            dev.close()
        if b.normally_closed:
            if closed:
                out.append(CheckResult(name, PASS, f"NC loop closed on GPIO {b.pin}"))
            else:
                out.append(CheckResult(name, FAIL, f"NC loop OPEN on GPIO {b.pin} (tamper)",
                                       "find the cut or loose wire in the button loop"))
        elif closed:
            out.append(CheckResult(name, WARN, f"contact closed on GPIO {b.pin} (held or stuck)",
                                   "release the button; if it stays closed, check for a short"))
        else:
            out.append(CheckResult(name, PASS, f"open at rest on GPIO {b.pin}; press it to test "
                                   "the alarm path end to end"))
    return out


def check_camera(cfg: NodeConfig, opts: SelftestOptions) -> CheckResult:
    if cfg.camera.backend == "none":
        return CheckResult("camera", SKIP, "camera disabled", "", required=False)
    from edge.drivers.camera import make_camera

    cam_cfg = cfg.camera
    if opts.simulate and cam_cfg.backend == "picamera2":
        cam_cfg = cam_cfg.model_copy(update={"backend": "fake"})
    try:
        cam = make_camera(cam_cfg, cfg.node.node_id)
        assert cam is not None
        try:
            frame = cam.capture_jpeg()
        finally:
            cam.close()
    except Exception as exc:
        return CheckResult("camera", FAIL, f"no frame: {exc}", "check the ribbon cable, "
                           "'rpicam-hello', and that python3-picamera2 is installed",
                           required=False)
    if not frame.startswith(b"\xff\xd8"):
        return CheckResult("camera", FAIL, "frame is not a JPEG", "check camera.backend",
                           required=False)
    return CheckResult("camera", PASS, f"captured a {len(frame)} byte JPEG", required=False)


def check_modem(cfg: NodeConfig, opts: SelftestOptions) -> CheckResult:
    if not cfg.modem.enabled:
        return CheckResult("modem", SKIP, "modem disabled", "", required=False)
    from edge.drivers.modem import Modem

    fake = None
    mcfg = cfg.modem
    if opts.simulate:
        from edge.drivers.fake_modem import FakeModem

        fake = FakeModem(boot_s=0.0).start()
        mcfg = mcfg.model_copy(update={"port": fake.port})
    modem = Modem(mcfg)
    try:
        modem.open()
        if not modem.ping():
            return CheckResult("modem", FAIL, f"no answer to AT on {mcfg.port}",
                               "check the USB cable and power; the watchdog resets it in service")
        sim = modem.sim_ready()
        sq = modem.signal_quality()
    except KentonganError as exc:
        return CheckResult("modem", FAIL, f"{mcfg.port}: {exc}", "check modem.port (ls "
                           "/dev/ttyUSB*) and group dialout")
    finally:
        modem.close()
        if fake is not None:
            fake.stop()
    if not sim:
        return CheckResult("modem", FAIL, "no SIM / SIM not ready", "insert the SIM, check its "
                           "PIN is off")
    if sq.dbm is None:
        return CheckResult("modem", WARN, "no signal (CSQ 99)", "move the antenna; SMS "
                           "fallback will not work", required=False)
    return CheckResult("modem", PASS, f"AT ok, SIM ready, signal {sq.dbm} dBm (CSQ {sq.rssi})")
