"""The CRL renews itself before it expires: ``kentongan-central ca crl --renew-if-due`` (run
daily by systemd/kentongan-crl-renew.timer) and the broker-side reload units."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509

from central_sync.cli import main as central_main
from central_sync.enrol import crl_renewal_due
from central_sync.pki import CertificateAuthority, PkiFiles, PkiSettings

UNITS = Path(__file__).resolve().parent.parent / "systemd"


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "etc" / "central.toml"
    path.parent.mkdir()
    # relative paths: against the config file's directory, not the working directory
    path.write_text('database = "central.db"\n[pki]\ndir = "pki"\ncrl_days = 90\n')
    assert central_main(["ca", "init", "--config", str(path)]) == 0
    return path


def _next_update(path: Path) -> float:
    nu = x509.load_pem_x509_crl(path.read_bytes()).next_update_utc
    assert nu is not None
    return nu.timestamp()


def test_renewal_due_only_near_next_update(conf: Path) -> None:
    settings = PkiSettings(dir=conf.parent / "pki", crl_days=90)
    due, why = crl_renewal_due(settings)
    assert not due and "more days" in why
    # 90-day CRL: renewed in its last 30 days
    assert not crl_renewal_due(settings, now=time.time() + 59 * 86400)[0]
    assert crl_renewal_due(settings, now=time.time() + 61 * 86400)[0]


def test_renewal_due_when_missing_or_foreign(conf: Path, tmp_path: Path) -> None:
    settings = PkiSettings(dir=conf.parent / "pki", crl_days=90)
    files = PkiFiles(settings.dir)
    other = CertificateAuthority.create("Other")
    other.write_crl(files.crl, [], 90)
    assert crl_renewal_due(settings) == (True, "CRL not signed by this CA")
    files.crl.unlink()
    assert crl_renewal_due(settings)[0]


def test_cli_renews_an_expiring_crl_and_installs_it(conf: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    files = PkiFiles(conf.parent / "pki")
    broker_copy = tmp_path / "broker" / "crl.pem"
    broker_copy.parent.mkdir()
    args = ["ca", "crl", "--renew-if-due", "--install-to", str(broker_copy), "--config", str(conf)]
    assert central_main(args) == 0
    assert "not renewed" in capsys.readouterr().out and not broker_copy.exists()

    ca = CertificateAuthority.load(files)
    ca.write_crl(files.crl, [], days=0)  # about to expire
    assert central_main(args) == 0
    assert "renewing the CRL" in capsys.readouterr().out
    assert _next_update(files.crl) > time.time() + 89 * 86400
    assert broker_copy.read_bytes() == files.crl.read_bytes()
    assert broker_copy.stat().st_mode & 0o777 == 0o644


def test_timer_runs_the_renewal_daily() -> None:
    timer = (UNITS / "kentongan-crl-renew.timer").read_text()
    assert "OnCalendar=daily" in timer and "Persistent=true" in timer
    service = (UNITS / "kentongan-crl-renew.service").read_text()
    assert "ca crl --renew-if-due --install-to /etc/mosquitto/kentongan/crl.pem" in service
    path_unit = (UNITS / "kentongan-broker-crl.path").read_text()
    assert "PathChanged=/etc/mosquitto/kentongan/crl.pem" in path_unit
    assert "reload mosquitto" in (UNITS / "kentongan-broker-crl.service").read_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_crl_units_verify(tmp_path: Path) -> None:
    names = ["kentongan-crl-renew.service", "kentongan-crl-renew.timer",
             "kentongan-broker-crl.path", "kentongan-broker-crl.service"]
    for unit in names:
        lines = [("ExecStart=/bin/true " + ln.split(" ", 1)[1]) if ln.startswith("ExecStart=")
                 else ln for ln in (UNITS / unit).read_text().splitlines()]
        (tmp_path / unit).write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / u) for u in names)],
                          capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                if any(u in ln for u in names)]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
