"""``kentongan-central release build``: the project's wheel plus every dependency as wheels, for
each target platform, in one signed release directory.

* The project wheel: ``pip wheel --no-deps`` of the source tree (``--offline``: without build
  isolation, using the build machine's setuptools).
* Dependencies: ``pip download --only-binary=:all:`` of ``<package>==<version>`` with the
  project wheel on ``--find-links``; for another platform with ``--platform`` /
  ``--python-version`` / ``--implementation cp`` / ``--abi`` (pip's cross-download), e.g. the Pi's
  ``manylinux2014_aarch64``. ``--wheelhouse DIR`` adds ``--no-index --find-links DIR``: no
  network, every wheel must be in DIR.
* Pure wheels are shared by all platforms (same file, same hash).

The release directory is assembled under a temporary name and renamed into place once signed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_sync.release import ReleaseError
from central_sync.release.manifest import WHEELS, fsync_tree, sha256_file, write_signed
from edge.errors import KentonganError
from edge.update.manifest import FileEntry, Manifest, machine, parse_version

#: Platform key -> pip cross-download options. "host" = the build machine itself.
PLATFORMS: dict[str, list[str]] = {
    "aarch64": ["--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_17_aarch64",
                "--platform", "manylinux_2_28_aarch64", "--platform", "linux_aarch64"],
    "x86_64": ["--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64",
               "--platform", "manylinux_2_28_x86_64", "--platform", "linux_x86_64"],
}
WHEEL_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)-.+\.whl$")


@dataclass(frozen=True)
class BuildOptions:
    project_dir: Path
    root: Path
    platforms: Sequence[str] = ("host", "aarch64")
    wheelhouse: Path | None = None
    offline: bool = False
    min_from_version: str | None = None
    python_version: str = f"{sys.version_info.major}.{sys.version_info.minor}"
    package: str = "kentongan"
    notes: str = ""
    pip_timeout: float = 900.0


def _pip(args: list[str], timeout: float) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ReleaseError(f"pip {args[0]} took longer than {timeout:.0f}s") from None
    if res.returncode != 0:
        tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-8:])
        raise ReleaseError(f"pip {args[0]} failed:\n{tail}")


def build_project_wheel(opts: BuildOptions, out: Path) -> Path:
    args = ["wheel", "--no-deps", "-q", "-w", str(out), str(opts.project_dir)]
    if opts.offline or opts.wheelhouse is not None:
        args[1:1] = ["--no-build-isolation", "--no-index"]
    _pip(args, opts.pip_timeout)
    wheels = [p for p in out.glob("*.whl")
              if p.name.lower().startswith(opts.package.replace("-", "_").lower() + "-")]
    if len(wheels) != 1:
        raise ReleaseError(f"expected one {opts.package} wheel from {opts.project_dir}, got "
                           f"{[p.name for p in wheels]}")
    return wheels[0]


def download_platform(opts: BuildOptions, plat: str, app_dir: Path, version: str,
                      out: Path) -> list[Path]:
    args = ["download", "-q", "--only-binary=:all:", "--dest", str(out), "--find-links",
            str(app_dir)]
    if plat != "host":
        if plat not in PLATFORMS:
            raise ReleaseError(f"unknown platform {plat!r} (known: host, {', '.join(PLATFORMS)})")
        py = opts.python_version.replace(".", "")
        args += [*PLATFORMS[plat], "--python-version", opts.python_version,
                 "--implementation", "cp", "--abi", f"cp{py}", "--abi", "abi3", "--abi", "none"]
    if opts.wheelhouse is not None:
        args += ["--no-index", "--find-links", str(opts.wheelhouse)]
    elif opts.offline:
        args += ["--no-index"]
    args.append(f"{opts.package}=={version}")
    _pip(args, opts.pip_timeout)
    return sorted(out.glob("*.whl"))


def build_release(opts: BuildOptions, key: Ed25519PrivateKey) -> Manifest:
    """Build, sign and store one release under ``opts.root/<version>``; return its manifest."""
    opts.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=opts.root, prefix=".build-") as tmp_s:
        tmp = Path(tmp_s)
        app_dir = tmp / "app"
        app = build_project_wheel(opts, app_dir)
        m = WHEEL_RE.match(app.name)
        assert m is not None
        version = m.group("version")
        try:
            parse_version(version)
        except KentonganError as exc:
            raise ReleaseError(f"project version {version!r}: {exc}") from None
        if (opts.root / version).exists():
            raise ReleaseError(f"release {version} already exists under {opts.root} (bump the "
                               "version: a published release never changes)")
        stage = tmp / version
        wheels = stage / WHEELS
        wheels.mkdir(parents=True)
        files: dict[str, FileEntry] = {}
        platforms: dict[str, list[str]] = {}
        for plat in dict.fromkeys(opts.platforms):
            key_name = machine() if plat == "host" else plat
            got = download_platform(opts, plat, app_dir, version, tmp / f"dl-{key_name}")
            names = []
            for w in got:
                digest = sha256_file(w)
                if w.name in files and files[w.name].sha256 != digest:
                    raise ReleaseError(f"{w.name} differs between platforms")
                if w.name not in files:
                    shutil.copy2(w, wheels / w.name)
                    files[w.name] = FileEntry(digest, w.stat().st_size)
                names.append(w.name)
            platforms[key_name] = sorted(names)
        manifest = Manifest(package=opts.package, version=version,
                            min_from_version=opts.min_from_version or "0", files=files,
                            platforms=platforms, created_at=time.time(),
                            python=opts.python_version, notes=opts.notes)
        parse_version(manifest.min_from_version)
        write_signed(stage, manifest, key)
        fsync_tree(stage)
        stage.rename(opts.root / version)
    return manifest
