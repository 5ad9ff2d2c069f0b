"""The installed layout of a post, for tests: a central PKI, the PRODUCTION broker config on a
free loopback port, an enrolment bundle, the service user, and systemd-style credentials.

Creating the service user and root-owned keys needs root; callers skip otherwise."""

from __future__ import annotations

import atexit
import functools
import grp
import os
import pwd
import shutil
import site
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from central_sync.broker import PROD_ACL, LocalMosquitto, production_broker
from central_sync.enrol import NodeInfo, enrol_node
from central_sync.pki import PkiFiles, PkiSettings, init_ca, load_private_key
from central_sync.registry import Registry
from edge.signing import key_fingerprint

SERVICE_USER = "kentongan"
BIN = Path(sys.executable).parent
EDGE_CLI = str(BIN / "kentongan-edge")
#: Root of the checkout (for a service venv that imports it).
REPO = Path(__file__).resolve().parent.parent


def root_skip_reason() -> str | None:
    """Why the installed-layout tests cannot run here (None when they can)."""
    if os.geteuid() != 0:
        return "needs root: creates the service user and root-owned 0600 keys"
    for tool in ("useradd", "runuser"):
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux / passwd)"
    ensure_service_user()
    if service_cli() is None:
        return ("no Python the service user can run: the test interpreter is unreachable for "
                f"{SERVICE_USER} and /usr/bin/python{sys.version_info.major}."
                f"{sys.version_info.minor} is missing")
    return None


@functools.cache
def service_cli() -> list[str] | None:
    """``kentongan-edge`` as the service user can run it, or None.

    The test interpreter may live where an unprivileged user cannot reach (pyenv under /root).
    Then a venv is made from the system Python of the same version (like /opt/kentongan/current in
    docs/install-pi.md) whose site path includes this environment's packages and checkout."""
    user = SERVICE_USER
    probe = [sys.executable, "-c", "import edge.cli"]
    if subprocess.run(as_user(user, probe), capture_output=True, timeout=60).returncode == 0:
        return [sys.executable, "-m", "edge.cli"]
    system = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not system.exists():
        return None
    venv = world_readable_tmpdir("kentongan-service-venv-")
    atexit.register(shutil.rmtree, venv, True)
    made = subprocess.run([str(system), "-m", "venv", "--without-pip", str(venv / "venv")],
                          capture_output=True, timeout=120)
    if made.returncode != 0:
        return None
    py = venv / "venv" / "bin" / "python"
    site_dir = subprocess.run([str(py), "-c", "import sysconfig;print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, timeout=60).stdout.strip()
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    lines = [f"import site; site.addsitedir({p!r})" for p in ours]
    (Path(site_dir) / "kentongan-test.pth").write_text("\n".join(lines) + "\n")
    if subprocess.run(as_user(user, [str(py), *probe[1:]]), capture_output=True,
                      timeout=60).returncode != 0:
        return None
    return [str(py), "-m", "edge.cli"]


def ensure_service_user(name: str = SERVICE_USER) -> pwd.struct_passwd:
    """The unprivileged service user (created as docs/install-pi.md does, minus hardware groups
    this machine may lack); tolerant of a concurrent creation by another test run."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                    "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                   capture_output=True, timeout=60)
    grp.getgrnam(name)
    return pwd.getpwnam(name)


def world_readable_tmpdir(prefix: str) -> Path:
    """A directory the service user can traverse (pytest's tmp_path is root-only 0700)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o755)
    return d


@dataclass
class Central:
    settings: PkiSettings
    files: PkiFiles
    registry: Registry
    fingerprint: str


def make_central(root: Path) -> Central:
    settings = PkiSettings(dir=root / "pki", broker_hosts=("127.0.0.1",))
    files = init_ca(settings)
    reg = Registry(sqlite3.connect(root / "registry.db"))
    fp = key_fingerprint(load_private_key(files.command_key))  # type: ignore[arg-type]
    return Central(settings, files, reg, fp)


def start_production_broker(central: Central, workdir: Path) -> LocalMosquitto:
    f = central.files
    return production_broker(workdir, ca_file=f.ca_cert, cert_file=f.broker_cert,
                             key_file=f.broker_key, crl_file=f.crl, acl_file=PROD_ACL).start()


def enrol(central: Central, node_id: str, out: Path, port: int) -> Path:
    return enrol_node(central.settings, central.registry,
                      NodeInfo(node_id, "33.74.10.1001", 5, 7, f"Pos Ronda {node_id}"), out,
                      broker_host="127.0.0.1", broker_port=port)


def fill_credentials(dest: Path, keys: dict[str, Path], user: pwd.struct_passwd) -> Path:
    """What systemd's ``LoadCredential=NAME:PATH`` does: a private directory (0500) holding a
    0400 copy of each key, owned by the service user; the originals stay root 0600."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, src in keys.items():
        target = dest / name
        shutil.copyfile(src, target)
        os.chmod(target, 0o400)
        os.chown(target, user.pw_uid, user.pw_gid)
    os.chmod(dest, 0o500)
    os.chown(dest, user.pw_uid, user.pw_gid)
    return dest


def as_user(user: str, argv: list[str], env: dict[str, str] | None = None) -> list[str]:
    """``argv`` run as ``user`` (runuser), with a clean environment plus ``env``."""
    extra = [f"{k}={v}" for k, v in (env or {}).items()]
    return ["runuser", "-u", user, "--", "env", "-i", "PATH=/usr/bin:/bin", "LANG=C.UTF-8",
            *extra, *argv]
