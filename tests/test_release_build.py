"""``kentongan-central release build|list|verify`` on the real project (offline: a local
wheelhouse repacked from this virtualenv), a cross-platform manifest (host + the Pi's aarch64),
the release installed into a real virtualenv on a post, and ``--version`` on both commands."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from update_helpers import BASE_PYTHON, REPO, Pki, Server, fixture_project

from central_sync.registry import Registry
from central_sync.release.wheelhouse import build_wheelhouse
from edge import __version__
from edge.signing import load_verify_key
from edge.update.fetch import ReleaseClient, ServerTls
from edge.update.install import InstallOptions
from edge.update.manifest import manifest_from_bytes
from edge.update.supervisor import SupervisorClient
from edge.update.switch import Layout
from edge.update.updater import Updater

PY = sys.executable


def central(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([PY, "-m", "central_sync.cli", *args], capture_output=True, text=True,
                         timeout=900, cwd=REPO)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def copy_tree(dest: Path) -> Path:
    """The project's tracked files (what a release is built from)."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    return dest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("build")
    cfg = d / "central.toml"
    cfg.write_text(f'database = "{d / "central.db"}"\n[pki]\ndir = "pki"\n'
                   'broker_hosts = ["127.0.0.1", "localhost"]\n')
    central("ca", "init", "--config", str(cfg))
    out = central("release", "keygen", "--config", str(cfg)).stdout
    assert "release key fingerprint" in out
    wheelhouse = d / "wheelhouse"
    build_wheelhouse(wheelhouse)
    src = copy_tree(d / "src")
    out = central("release", "build", "--config", str(cfg), "--project", str(src),
                  "--platform", "host", "--wheelhouse", str(wheelhouse),
                  "--min-from", "0.1.0").stdout
    assert f"release {__version__}" in out and "app-only download" in out
    return cfg, d / "releases"


def test_build_list_verify_and_tamper(built: tuple[Path, Path]) -> None:
    cfg, root = built
    m = manifest_from_bytes((root / __version__ / "manifest.json").read_bytes())
    app = m.app_file()
    assert app.startswith(f"kentongan-{__version__}-")
    assert m.files[app].size <= 10 * 1024 * 1024  # app-only release download target
    names = {n.split("-")[0].lower() for n in m.platforms[next(iter(m.platforms))]}
    assert {"kentongan", "cryptography", "pydantic", "paho_mqtt", "gpiozero"} <= names
    listed = [json.loads(x) for x in central("release", "list", "--config", str(cfg),
                                             "--json").stdout.splitlines()]
    assert [x["version"] for x in listed] == [__version__]
    assert "hashes OK" in central("release", "verify", "--config", str(cfg)).stdout
    wheel = root / __version__ / "wheels" / app
    data = wheel.read_bytes()
    try:
        wheel.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        res = central("release", "verify", "--config", str(cfg), check=False)
        assert res.returncode == 2 and "does not match the manifest" in res.stderr
    finally:
        wheel.write_bytes(data)
    res = central("release", "build", "--config", str(cfg), "--project",
                  str(root.parent / "src"), "--platform", "host", "--wheelhouse",
                  str(root.parent / "wheelhouse"), check=False)
    assert res.returncode == 2 and "already exists" in res.stderr


def test_cross_platform_manifest_lists_aarch64(built: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, _root = built
    root = tmp_path / "rel"
    src = fixture_project(tmp_path / "kfix", "4.0.0")
    empty = tmp_path / "empty"
    empty.mkdir()
    # pure-Python fixture: pip's cross-platform download resolves it for the Pi offline
    from central_sync.release.build import BuildOptions, build_release
    from central_sync.release.manifest import load_release_key, verify_release_dir

    pki = cfg.parent / "pki"
    m = build_release(BuildOptions(project_dir=src, root=root, platforms=("host", "aarch64"),
                                   wheelhouse=empty, package="kfix"), load_release_key(pki))
    assert "aarch64" in m.platforms and m.platforms["aarch64"] == [m.app_file()]
    verify_release_dir(root / "4.0.0", pki / "release.pub")


def test_real_release_installs_into_a_venv_on_a_post(built: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    cfg, root = built
    pki = Pki.__new__(Pki)
    pki.dir = cfg.parent / "pki"


    pki.registry = Registry(sqlite3.connect(tmp_path / "reg.db"))
    keys = pki.enrol("pos-real-01", tmp_path / "prefix")
    srv = Server(pki, root, tmp_path / "rollout.db")
    try:
        srv.store.start(__version__, "all", force=True)
        client = ReleaseClient(srv.url, ServerTls(keys / "ca.crt", keys / "node.crt",
                                                  keys / "node.key"))
        layout = Layout(tmp_path / "opt")
        upd = Updater(layout, client, load_verify_key(pki.dir / "release.pub"),
                      SupervisorClient(tmp_path / "none.json"), lambda r, t: {},
                      sync_enabled=False,
                      install=InstallOptions(python=BASE_PYTHON, system_site_packages=False,
                                             nice=0, compile=False))
        assert "first install" in upd.check_once()
    finally:
        srv.close()
    exe = layout.current / "bin" / "kentongan-edge"
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"kentongan-edge {__version__}", out.stderr
    out = subprocess.run([str(layout.current / "bin" / "python"), "-c",
                          "import edge, sys; print(edge.__file__)"], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.stdout.startswith(str(layout.current / "lib"))  # its own copy, not this checkout
    # The installed release carries the updater itself (what the units run from `good`).
    upd = layout.good / "bin" / "kentongan-update"
    out = subprocess.run([str(upd), "adopt", __version__, "--root", str(layout.root)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0 and "adopted" in out.stdout, out.stderr
    out = subprocess.run([str(upd), "adopt", "9.9.9", "--root", str(layout.root)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 1 and "does not hold kentongan 9.9.9" in out.stderr
    assert layout.link_target(layout.current) == __version__


def test_version_flags() -> None:
    for mod, name in (("central_sync.cli", "kentongan-central"), ("edge.cli", "kentongan-edge"),
                      ("edge.update.cli_update", "kentongan-update")):
        res = subprocess.run([PY, "-m", mod, "--version"], capture_output=True, text=True,
                             timeout=60, cwd=REPO)
        assert res.stdout.strip() == f"{name} {__version__}", res.stderr


def test_rollout_cli_canary_rollout_status(built: tuple[Path, Path]) -> None:
    cfg, _root = built
    out = central("release", "canary", "pos-canary-01", "--config", str(cfg)).stdout
    assert "pos-canary-01" in out
    res = central("release", "rollout", __version__, "--ring", "all", "--config", str(cfg),
                  check=False)
    assert res.returncode == 2 and "start" in res.stderr and "canary first" in res.stderr
    out = central("release", "rollout", __version__, "--ring", "canary", "--config",
                  str(cfg)).stdout
    assert f"rollout of {__version__} to ring canary started" in out
    status = json.loads(central("release", "status", "--json", "--config", str(cfg)).stdout)
    assert status["rollout"]["version"] == __version__ and status["rollout"]["ring"] == "canary"
    assert status["rollout"]["status"] == "active"
    res = central("release", "rollout", "9.9.9", "--ring", "canary", "--config", str(cfg),
                  check=False)
    assert res.returncode == 2 and "no release 9.9.9" in res.stderr
