"""The unit files and broker configs ship in the package: importable as resources (edge/_install)
and present in a wheel built from this tree."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge.install_files import packaged, render_unit

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["systemd/kentongan-edge.service", "systemd/kentongan-central.service",
           "broker/mosquitto.conf", "broker/mosquitto-dev.conf", "broker/acl"]


@pytest.mark.parametrize("name", SHIPPED)
def test_resource_is_the_checkout_file(name: str) -> None:
    assert packaged(name).read_text() == (ROOT / name).read_text()


def test_rendered_unit_points_at_this_environment_and_prefix(tmp_path: Path) -> None:
    text = render_unit(prefix=tmp_path, bin_dir=Path("/srv/venv/bin"))
    assert f"ExecStart=/srv/venv/bin/kentongan-edge run --config {tmp_path}/etc/kentongan/node.toml" in text
    assert f"LoadCredential=node.key:{tmp_path}/etc/kentongan/keys/node.key" in text


def test_wheel_contains_units_and_broker_configs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT),
                           "-w", str(tmp_path)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and any(s in proc.stderr for s in (
            "No matching distribution", "Could not find a version", "NewConnectionError")):
        pytest.skip(f"cannot fetch the build backend (setuptools) from PyPI: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("kentongan-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in SHIPPED:
        assert f"edge/_install/{name}" in names, name
