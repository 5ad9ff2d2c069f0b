"""Technician self-test: ``kentongan-edge selftest --config PATH [--json] [--simulate]``.

Prints one line per check with pass / warn / fail / skip and, for anything not passing, a fix
hint. Exit status is 1 when a *required* check fails (warnings never fail the run), 2 when the
config itself cannot be loaded.

Checks (in order): config, certificate, clock, disk, siren, buttons (one per button), camera,
modem, broker. Run it with the agent stopped (``systemctl stop kentongan-edge``): the agent holds
the GPIO pins and the modem port. ``--simulate`` uses gpiozero MockFactory pins (NC loops primed
closed), the fake camera and a FakeModem, so the whole flow can be rehearsed on a laptop.

Broker check (definition): TLS connect with the node's own certificate (MQTT 5), subscribe to
``{prefix}/selftest/{node_id}/echo`` (the ACL grants each node read/write there and nowhere else
besides its own up/down trees), publish a random nonce at QoS 1, and require a successful PUBACK
and the nonce back within the timeout. It proves the CA, the certificate, the CRL and the ACL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.config import NodeConfig, check_state_dir, load_config
from edge.credentials import credential_path, describe_unreadable
from edge.errors import ConfigError, KentonganError

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
CERT_WARN_DAYS = 30


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # pass | warn | fail | skip
    detail: str
    hint: str = ""
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.status == FAIL and self.required


@dataclass
class SelftestOptions:
    simulate: bool = False
    pin_factory: Any = None  # a gpiozero factory to use (tests); else MockFactory when simulating
    primed: bool = False  # set when we made the MockFactory: rest-state wiring is simulated
    broker_timeout: float = 5.0
    sound_siren: bool = True
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)


# -- individual checks ------------------------------------------------------------------------


def check_certificate(cfg: NodeConfig, opts: SelftestOptions) -> CheckResult:
    tls = cfg.sync.tls
    if tls is None:
        return CheckResult("certificate", SKIP, "no sync.tls (development node)",
                           "install an enrolment bundle for production", required=False)
    try:
        key_bytes = credential_path(tls.key_file).read_bytes()
    except OSError as exc:
        return CheckResult("certificate", FAIL, f"cannot read the TLS key: "
                           f"{describe_unreadable(tls.key_file, exc)}",
                           "as the service user, run through systemd so the key arrives as a "
                           "credential (docs/install-pi.md, 'Self-test as the service user')")
    try:
        cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
        ca = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
        key = serialization.load_pem_private_key(key_bytes, None)
    except (OSError, ValueError, TypeError) as exc:
        return CheckResult("certificate", FAIL, f"cannot read TLS files: {exc}",
                           "reinstall the bundle: kentongan-edge install-bundle BUNDLE --force")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        return CheckResult("certificate", FAIL, "certificate does not match the TLS key",
                           "reinstall the bundle (cert and key come from different enrolments)")
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:
        return CheckResult("certificate", FAIL, "certificate not issued by the installed CA",
                           "reinstall the bundle from this post's central")
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn_value = str(cn[0].value) if cn else "?"
    if cn_value != cfg.node.node_id:
        return CheckResult("certificate", FAIL, f"certificate is for {cn_value}"
                           f", config says {cfg.node.node_id}", "install this post's own bundle")
    if tls.crl_file is not None and tls.crl_file.exists():
        try:
            crl = x509.load_pem_x509_crl(tls.crl_file.read_bytes())
        except ValueError as exc:
            return CheckResult("certificate", FAIL, f"CRL unreadable: {exc}",
                               "replace sync.tls.crl_file with central's current crl.pem")
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return CheckResult("certificate", FAIL, "certificate is REVOKED",
                               "this post was revoked at central: ask central to enrol it again "
                               "and install the new bundle")
    now = opts.now()
    left = cert.not_valid_after_utc - now
    until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    if left.total_seconds() <= 0:
        return CheckResult("certificate", FAIL, f"certificate EXPIRED on {until}",
                           "ask central for 'kentongan-central renew' (delivered online) or a new "
                           "bundle; also check the clock")
    if cert.not_valid_before_utc > now:
        return CheckResult("certificate", FAIL, "certificate not valid yet (clock wrong?)",
                           "fix the clock (NTP) and run again")
    if left.days < CERT_WARN_DAYS:
        return CheckResult("certificate", WARN, f"expires in {left.days} days ({until})",
                           "ask central to renew: kentongan-central renew NODE_ID")
    return CheckResult("certificate", PASS, f"valid until {until}, CN {cfg.node.node_id}")


def check_clock(cfg: NodeConfig, opts: SelftestOptions) -> CheckResult:
    from edge.clock import Clock

    quality = Clock().quality()
    now = opts.now()
    if now.year < 2024:
        return CheckResult("clock", FAIL, f"clock reads {now:%Y-%m-%d}", "enable NTP "
                           "(timedatectl set-ntp true) or fit an RTC", required=False)
    if quality != "synced":
        return CheckResult("clock", WARN, "not NTP-synchronised", "check network and "
                           "'timedatectl status'; events carry time_quality=unsynced meanwhile",
                           required=False)
    return CheckResult("clock", PASS, "NTP-synchronised", required=False)


def check_disk(cfg: NodeConfig, opts: SelftestOptions) -> CheckResult:
    state = cfg.storage.state_dir
    probe = state if state.exists() else next((p for p in state.parents if p.exists()), Path("/"))
    usage = shutil.disk_usage(probe)
    free_mb = usage.free / 1e6
    need = cfg.storage.min_free_mb
    quota = cfg.storage.disk_quota_mb
    detail = f"{free_mb:.0f} MB free on {probe}, quota {quota:.0f} MB, minimum free {need:.0f} MB"
    if free_mb < need:
        return CheckResult("disk", FAIL, detail, "free space or lower storage.disk_quota_mb")
    if not state.exists():
        return CheckResult("disk", WARN, detail + f"; {state} does not exist yet",
                           "it is created on first start (systemd StateDirectory)")
    if not os.access(state, os.W_OK):
        return CheckResult("disk", FAIL, f"{state} not writable", "run as the service user or "
                           "fix ownership (chown kentongan: /var/lib/kentongan)")
    if free_mb < quota:
        return CheckResult("disk", WARN, detail, "disk smaller than the quota: eviction will "
                           "start before the quota is used")
    return CheckResult("disk", PASS, detail)


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


def check_broker(cfg: NodeConfig, opts: SelftestOptions) -> CheckResult:
    if not cfg.sync.enabled:
        return CheckResult("broker", SKIP, "sync disabled", "", required=False)

    from edge.sync.mqtt import connect_spec
    from edge.sync.transport import TransportError, make_paho_client, paho_connect

    where = f"{cfg.sync.broker_host}:{cfg.sync.broker_port}"
    spec = connect_spec(cfg.sync, f"{cfg.node.node_id}-selftest-{secrets.token_hex(3)}",
                        clean_start=True, session_expiry_s=0)
    try:
        client = make_paho_client(spec)
    except TransportError as exc:
        return CheckResult("broker", FAIL, f"cannot build the TLS connection: {exc}",
                           "the sync service fails the same way: see 'fix' of the certificate "
                           "line")
    topic = f"{cfg.sync.topic_prefix}/selftest/{cfg.node.node_id}/echo"
    nonce = secrets.token_hex(8).encode()
    cv = threading.Condition()
    state: dict[str, Any] = {"connected": None, "suback": False, "puback": None, "echo": False}

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any = None) -> None:
        with cv:
            state["connected"] = not rc.is_failure
            state["connect_rc"] = str(rc)
            cv.notify_all()

    def on_disconnect(*a: Any) -> None:
        with cv:
            if state["connected"] is None:
                state["connected"] = False
            cv.notify_all()

    def on_subscribe(*a: Any) -> None:
        with cv:
            state["suback"] = True
            cv.notify_all()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, p: Any = None) -> None:
        with cv:
            state["puback"] = rc
            cv.notify_all()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        with cv:
            state["echo"] = state["echo"] or msg.payload == nonce
            cv.notify_all()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.on_subscribe, client.on_publish = on_subscribe, on_publish
    client.on_message = on_message
    hint_tls = "check sync.broker_host/port, the node certificate (revoked? expired?) and the clock"
    try:
        paho_connect(client, spec)
    except (ssl.SSLError, OSError) as exc:
        return CheckResult("broker", FAIL, f"cannot connect to {where}: {exc}", hint_tls)
    client.loop_start()
    try:
        deadline = time.monotonic() + opts.broker_timeout
        with cv:
            cv.wait_for(lambda: state["connected"] is not None,
                        max(0.0, deadline - time.monotonic()))
            if not state["connected"]:
                return CheckResult("broker", FAIL, f"TLS/MQTT connection to {where} refused "
                                   f"({state.get('connect_rc', 'no CONNACK')})", hint_tls)
        client.subscribe(topic, qos=1)
        with cv:
            cv.wait_for(lambda: state["suback"], max(0.0, deadline - time.monotonic()))
        client.publish(topic, nonce, qos=1)
        with cv:
            cv.wait_for(lambda: state["puback"] is not None and state["echo"],
                        max(0.0, deadline - time.monotonic()))
            puback, echo = state["puback"], state["echo"]
    finally:
        client.disconnect()
        client.loop_stop()
    if puback is None:
        return CheckResult("broker", FAIL, "no PUBACK", "broker overloaded or link too slow")
    if puback.is_failure:
        return CheckResult("broker", FAIL, f"publish refused: {puback}", "broker ACL lacks "
                           "'pattern readwrite kentongan/v1/selftest/%u/#' (broker/acl)")
    if not echo:
        return CheckResult("broker", FAIL, "published but the echo never came back",
                           "check the broker ACL read rules (broker/acl)")
    return CheckResult("broker", PASS, f"mTLS to {where} as {cfg.node.node_id}, publish/subscribe "
                       "round trip ok")


# -- runner -----------------------------------------------------------------------------------


def run_selftest(cfg: NodeConfig, opts: SelftestOptions | None = None) -> list[CheckResult]:
    """Run every check; a check that raises unexpectedly is reported as failed, never skipped."""
    opts = opts or SelftestOptions()
    results = [CheckResult("config", PASS, f"valid, node {cfg.node.node_id} "
                           f"({cfg.node.display_name})")]
    single: list[tuple[str, Callable[[NodeConfig, SelftestOptions], CheckResult]]] = [
        ("certificate", check_certificate), ("clock", check_clock), ("disk", check_disk),
        ("siren", check_siren)]
    for name, fn in single:
        results.append(_guard(name, lambda fn=fn: [fn(cfg, opts)]))  # type: ignore[misc]
    results.extend(_guard_many("buttons", lambda: check_buttons(cfg, opts)))
    for name, fn in [("camera", check_camera), ("modem", check_modem), ("broker", check_broker)]:
        results.append(_guard(name, lambda fn=fn: [fn(cfg, opts)]))  # type: ignore[misc]
    return results


def _guard_many(name: str, fn: Callable[[], list[CheckResult]]) -> list[CheckResult]:
    try:
        return fn()
    except Exception as exc:  # a check must never take the others down
        return [CheckResult(name, FAIL, f"check crashed: {type(exc).__name__}: {exc}",
                            "report this with the output of --json")]


def _guard(name: str, fn: Callable[[], list[CheckResult]]) -> CheckResult:
    return _guard_many(name, fn)[0]


def exit_code(results: list[CheckResult]) -> int:
    return 1 if any(r.failed for r in results) else 0


def format_results(results: list[CheckResult]) -> str:
    marks = {PASS: "[ OK ]", WARN: "[WARN]", FAIL: "[FAIL]", SKIP: "[SKIP]"}
    lines = []
    for r in results:
        opt = "" if r.required or r.status in (PASS, SKIP) else " (optional)"
        lines.append(f"{marks[r.status]} {r.name:<18} {r.detail}{opt}")
        if r.hint and r.status != PASS:
            lines.append(f"       fix: {r.hint}")
    failed = [r.name for r in results if r.failed]
    lines.append("RESULT: " + (f"FAILED ({', '.join(failed)})" if failed else "all required "
                               "checks passed"))
    return "\n".join(lines)


def _cmd_selftest(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
        check_state_dir(cfg)
    except ConfigError as exc:
        result = CheckResult("config", FAIL, str(exc), "fix the named key in the config file")
        print(json.dumps([asdict(result)]) if args.json else format_results([result]))
        return 2
    results = run_selftest(cfg, SelftestOptions(simulate=args.simulate,
                                                sound_siren=not args.no_siren))
    if args.json:
        print(json.dumps({"node_id": cfg.node.node_id, "ok": exit_code(results) == 0,
                          "checks": [asdict(r) for r in results]}, indent=2))
    else:
        print(format_results(results))
    sys.stdout.flush()
    record_selftest(cfg, results)
    return exit_code(results)


def record_selftest(cfg: NodeConfig, results: list[CheckResult]) -> None:
    """Record the checklist as a SELFTEST event so central's post overview shows the last
    self-test: through the running agent's control socket, else straight into the outbox."""
    from edge.control import request, socket_path
    from edge.errors import ControlError, KentonganError
    from edge.outbox import EventDraft, Outbox

    payload = {"ok": exit_code(results) == 0, "failed": [r.name for r in results if r.failed],
               "checks": {r.name: r.status for r in results}}
    try:
        reply = request(socket_path(cfg.storage.state_dir),
                        {"op": "record_selftest", "payload": payload}, timeout=10)
        if reply.get("ok"):
            return
    except ControlError:
        pass
    try:
        state = Path(cfg.storage.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        ob = Outbox(state / "outbox.db", cfg.node.node_id)
        try:
            ob.record(EventDraft("SELFTEST", 4, payload))
        finally:
            ob.close()
    except (KentonganError, OSError) as exc:
        print(f"note: self-test result not recorded: {exc}", file=sys.stderr)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("selftest", help="technician checklist: siren, buttons, camera, "
                              "modem, broker, clock, disk, certificate")
    p.add_argument("--config", required=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--simulate", action="store_true", help="mock pins, fake camera and modem")
    p.add_argument("--no-siren", action="store_true", help="do not chirp the siren")
    p.set_defaults(func=_cmd_selftest)
