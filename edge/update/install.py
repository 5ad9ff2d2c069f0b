"""Install a verified release into its own virtualenv, offline.

``python -m venv --without-pip [--system-site-packages] releases/<v>`` then the updater's own pip
installs into it (``pip --python releases/<v>/bin/python install --no-index --find-links
wheels/ <package>==<v>``): no network, only the wheels whose SHA-256 matched the signed
manifest, no pip inside the release (smaller, nothing to update there). The release directory is
built in place (virtualenvs are not relocatable) and becomes *complete* only when its marker is
written after everything is on disk; ``switch.recover`` deletes incomplete ones.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from edge.update import UpdateError
from edge.update.manifest import Manifest
from edge.update.switch import Layout, remove_tree

MANIFEST_COPY = "kentongan-manifest.json"


@dataclass(frozen=True)
class InstallOptions:
    python: str = "/usr/bin/python3"  # interpreter of the new venvs (Raspberry Pi OS python3)
    pip_python: str = sys.executable  # an interpreter with pip (the updater's own)
    system_site_packages: bool = True  # python3-lgpio / python3-picamera2 come from apt
    nice: int = 10  # installs run niced (and ionice idle where available)
    timeout: float = 1800.0
    find_links: Path | None = None  # default: the layout's wheels/ directory
    compile: bool = True  # byte-compile at install (the agent user cannot write __pycache__)


def _lowprio() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(OSError):
        os.nice(InstallOptions.nice)


def _run(cmd: list[str], opts: InstallOptions, what: str) -> str:
    if opts.nice and os.path.exists("/usr/bin/ionice"):
        cmd = ["/usr/bin/ionice", "-c", "3", *cmd]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=opts.timeout,
                             preexec_fn=_lowprio if opts.nice else None)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpdateError("install_failed", f"{what}: {exc}") from None
    if res.returncode != 0:
        tail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-4:])
        raise UpdateError("install_failed", f"{what} failed: {tail}")
    return res.stdout


def install_release(layout: Layout, manifest: Manifest, opts: InstallOptions) -> Path:
    """Build releases/<version> from the wheels in ``layout.wheels``; return its directory."""
    target = layout.release(manifest.version)
    if layout.is_complete(manifest.version):
        return target
    if target.exists():
        remove_tree(target)  # a half-built one from an earlier, interrupted try
    venv = [opts.python, "-m", "venv", "--without-pip"]
    if opts.system_site_packages:
        venv.append("--system-site-packages")
    _run([*venv, str(target)], opts, "python -m venv")
    py = target / "bin" / "python"
    _run([opts.pip_python, "-m", "pip", "--disable-pip-version-check", "--python", str(py),
          "install", "--no-index", "--find-links", str(opts.find_links or layout.wheels), "--no-cache-dir",
          "--no-warn-script-location", *([] if opts.compile else ["--no-compile"]),
          f"{manifest.package}=={manifest.version}"],
         opts, f"pip install {manifest.package}=={manifest.version}")
    got = _run([str(py), "-I", "-c", "import importlib.metadata as m, sys; "
                f"print(m.version({manifest.package!r}))"], opts, "version check").strip()
    if got != manifest.version:
        raise UpdateError("install_failed", f"installed {manifest.package} reports {got!r}, "
                          f"expected {manifest.version}")
    (target / MANIFEST_COPY).write_bytes(manifest.to_bytes())  # which wheels it was made of
    os.sync()  # every file of the venv on disk before the marker says it is complete
    layout.mark_complete(manifest.version)
    return target
