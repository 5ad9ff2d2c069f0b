"""Files that ship inside the package for installing a post: the systemd units and the broker
configs (``edge/_install``, links to the top-level ``systemd/`` and ``broker/`` in a checkout;
real files in the wheel).

``kentongan-edge install-unit [--prefix /]`` writes ``kentongan-edge.service`` to
``{prefix}/etc/systemd/system/`` with ``ExecStart`` pointing at the ``kentongan-edge`` of the
environment it runs from, and the config and credential paths under ``prefix``, so the unit
always matches what ``install-bundle --prefix`` wrote (docs/install-pi.md, step 6).
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

__all__ = ["install_unit", "packaged", "render_unit"]

UNIT_DIR = "etc/systemd/system"
DEFAULT_EXEC = "/opt/kentongan/current/bin/"


def packaged(name: str) -> Traversable:
    """A shipped file, e.g. ``systemd/kentongan-edge.service`` or ``broker/mosquitto.conf``."""
    node = resources.files("edge") / "_install"
    for part in name.split("/"):
        node = node / part
    if not node.is_file():
        raise FileNotFoundError(f"{name} is not shipped in the kentongan package")
    return node


def render_unit(unit: str = "kentongan-edge.service", *, prefix: Path = Path("/"),
                bin_dir: Path | None = None) -> str:
    """The unit text with ``ExecStart`` in ``bin_dir`` and ``/etc/kentongan`` under ``prefix``."""
    text = packaged(f"systemd/{unit}").read_text()
    if bin_dir is not None:
        text = text.replace(DEFAULT_EXEC, f"{str(bin_dir).rstrip('/')}/")
    if prefix != Path("/"):
        base = str(prefix).rstrip("/")
        text = text.replace(" /etc/kentongan/", f" {base}/etc/kentongan/")
        text = text.replace(":/etc/kentongan/", f":{base}/etc/kentongan/")
    return text


def install_unit(prefix: Path = Path("/"), unit: str = "kentongan-edge.service",
                 bin_dir: Path | None = None) -> Path:
    """Write the rendered unit to ``{prefix}/etc/systemd/system/`` (0644); return its path."""
    if bin_dir is None:
        here = Path(sys.executable).parent
        bin_dir = here if (here / unit.split(".")[0]).exists() else None
    dest = Path(prefix) / UNIT_DIR / unit
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(render_unit(unit, prefix=Path(prefix), bin_dir=bin_dir))
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    return dest


def _cmd_install_unit(args: argparse.Namespace) -> int:
    unit = "kentongan-central.service" if args.central else "kentongan-edge.service"
    path = install_unit(Path(args.prefix), unit)
    print(f"installed {path}")
    print(f"next: systemctl daemon-reload && systemctl enable --now {unit.split('.')[0]}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("install-unit", help="install the systemd unit shipped in the "
                              "package (ExecStart = this environment)")
    p.add_argument("--prefix", default="/", help="install root (default /)")
    p.add_argument("--central", action="store_true", help="the central unit instead")
    p.set_defaults(func=_cmd_install_unit)
