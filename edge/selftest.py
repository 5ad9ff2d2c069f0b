"""Technician self-test: ``kentongan-edge selftest --config PATH [--json] [--simulate]``.

Prints one line per check with pass / warn / fail / skip and, for anything not passing, a fix
hint. Exit status is 1 when a *required* check fails (warnings never fail the run), 2 when the
config itself cannot be loaded.

Checks (in order): config, certificate, clock, disk, siren, buttons (one per button), camera,
modem, broker. Run it with the agent stopped (``systemctl stop kentongan-edge``): the agent holds
the GPIO pins and the modem port. ``--simulate`` uses gpiozero MockFactory pins (NC loops primed
closed), the fake camera and a FakeModem, so the whole flow can be rehearsed on a laptop.

Modules: this one holds the host checks (certificate, clock, disk), the runner and the CLI;
``selftest_hw`` the hardware checks, ``selftest_broker`` the broker round trip (its definition
is there), ``selftest_result`` the result types (all re-exported here).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge.config import NodeConfig, check_state_dir, load_config
from edge.credentials import credential_path, describe_unreadable
from edge.errors import ConfigError, KentonganError
from edge.selftest_broker import check_broker
from edge.selftest_hw import check_buttons, check_camera, check_modem, check_siren
from edge.selftest_result import FAIL, PASS, SKIP, WARN, CheckResult, SelftestOptions

__all__ = [
    "FAIL", "PASS", "SKIP", "WARN", "CheckResult", "SelftestOptions", "check_broker", "check_buttons",
    "check_camera", "check_certificate", "check_clock", "check_disk", "check_modem", "check_siren",
    "exit_code", "format_results", "record_selftest", "register", "run_selftest",
]

CERT_WARN_DAYS = 30


# -- host checks -------------------------------------------------------------------------------


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
    from edge.errors import ControlError
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
