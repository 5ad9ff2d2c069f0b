"""systemd units of a scaled-out central: the ingest worker template, the web unit and the
target that groups them (verified by systemd-analyze when present)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from central_sync.cli import build_parser

UNITS = Path(__file__).resolve().parent.parent / "systemd"


def _directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


@pytest.mark.parametrize("unit", ["kentongan-ingest@.service", "kentongan-ingest-p1.service",
                                  "kentongan-central-web.service"])
def test_scaleout_units_are_hardened_notify_services(unit: str) -> None:
    d = _directives(UNITS / unit)
    assert d["Type"] == ["notify"] and d["Restart"] == ["always"] and int(d["WatchdogSec"][0]) > 0
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes")):
        assert d[key] == [value], key
    assert d["User"] == ["kentongan-central"]
    assert any("central-mqtt.key" in c for c in d["LoadCredential"])
    # The command line the unit runs is one the CLI accepts.
    argv = d["ExecStart"][0].split()[1:]
    argv = [a.replace("%i", "3") for a in argv]
    args = build_parser().parse_args(argv)
    assert args.command in ("ingest", "web")
    if unit == "kentongan-ingest-p1.service":  # the P1 lane alone, ahead of the bulk workers for CPU
        assert (args.lane, args.worker_id) == ("p1", "p1")
        assert int(d["CPUWeight"][0]) > 100 and int(d["Nice"][0]) < 0
    elif args.command == "web":  # interactive: ahead of the bulk workers, behind the P1 lane
        p1 = _directives(UNITS / "kentongan-ingest-p1.service")
        assert 100 < int(d["CPUWeight"][0]) < int(p1["CPUWeight"][0])
        assert int(p1["Nice"][0]) < int(d["Nice"][0]) < 0
    elif args.command == "ingest":  # bulk only: the P1 process consumes the P1 channel
        assert (args.lane, args.worker_id) == ("bulk", "3")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit,instance", [("kentongan-ingest@.service", "kentongan-ingest@1.service"),
                                           ("kentongan-ingest-p1.service", "kentongan-ingest-p1.service"),
                                           ("kentongan-central-web.service", "kentongan-central-web.service"),
                                           ("kentongan-central.target", "kentongan-central.target")])
def test_systemd_analyze_verify(unit: str, instance: str, tmp_path: Path) -> None:
    text = (UNITS / unit).read_text()
    lines = [("ExecStart=/bin/true " + ln.split(" ", 1)[1]) if ln.startswith("ExecStart=") else ln
             for ln in text.splitlines()]
    (tmp_path / instance).write_text("\n".join(lines) + "\n")
    if instance != unit:  # the template itself, beside its instance
        (tmp_path / unit).write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / instance)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                if instance in ln or unit in ln]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
