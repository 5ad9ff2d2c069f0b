"""The update units: systemd-analyze verify, ordering (recover before the agent), the updater
at idle priority running from `good`, and the agent's ExecStart through `current`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
NEW = ["kentongan-update.service", "kentongan-update-recover.service"]


def _d(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (UNITS / unit).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_update_units_order_and_priority() -> None:
    edge, upd, rec = (_d("kentongan-edge.service"), _d("kentongan-update.service"),
                      _d("kentongan-update-recover.service"))
    assert edge["ExecStart"][0].startswith("/opt/kentongan/current/bin/kentongan-edge run")
    assert "kentongan-update-recover.service" in edge["After"][0]
    assert "kentongan-edge.service" in rec["Before"][0] and rec["Type"] == ["oneshot"]
    assert rec["ExecStart"][0].startswith("/opt/kentongan/good/bin/kentongan-update recover")
    assert upd["ExecStart"][0].startswith("/opt/kentongan/good/bin/kentongan-update run")
    assert upd["IOSchedulingClass"] == ["idle"] and int(upd["Nice"][0]) >= 10
    assert upd["ReadWritePaths"] == ["/opt/kentongan"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit", NEW)
def test_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    lines = [(ln.split("=", 1)[0] + "=/bin/true " + ln.split(" ", 1)[1])
             if ln.startswith("ExecStart=") else ln
             for ln in (UNITS / unit).read_text().splitlines()]
    copy = tmp_path / unit
    copy.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=60)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if unit in ln]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr
