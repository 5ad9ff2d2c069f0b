"""Helpers for the update tests: a real CA with release keys and enrolled node certificates, a
release server on loopback, tiny fixture releases, and simulated posts running the updater.

Fixture releases (package ``kfix``, no dependencies) keep installs cheap: each is a real wheel
built and signed by ``release build``, installed by the real installer into a real venv. Its
console script ``kfix-agent`` runs the REAL agent code of this checkout (``KFIX_PATH``) under the
release's version, so the health check talks to a real agent; ``BROKEN = "crash"`` makes a
release whose agent exits at once (crash loop).

Run as a script it is the updater process the kill tests SIGKILL::

    python tests/update_helpers.py POST_DIR SERVER_URL
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import sysconfig
import textwrap
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from central_sync.enrol import NodeInfo, enrol_node
from central_sync.pki import PkiSettings, init_ca
from central_sync.registry import Registry
from central_sync.release.build import BuildOptions, build_release
from central_sync.release.manifest import keygen, load_release_key
from central_sync.release.rollout import RolloutStore
from central_sync.release.serve import ReleaseServer, server_context
from edge.bundle import install_bundle
from edge.signing import load_verify_key
from edge.update.fetch import ReleaseClient, ServerTls
from edge.update.health import control_requester
from edge.update.install import InstallOptions
from edge.update.supervisor import Supervisor, SupervisorClient
from edge.update.switch import Layout
from edge.update.updater import Updater
from tests.waits import wait_for as wait_for  # re-exported for the update tests

REPO = Path(__file__).resolve().parent.parent
SITE = sysconfig.get_paths()["purelib"]
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)


# -- central side ----------------------------------------------------------------------------


@dataclass
class Pki:
    dir: Path
    registry: Registry

    @classmethod
    def create(cls, d: Path) -> Pki:
        init_ca(PkiSettings(dir=d, broker_hosts=("127.0.0.1", "localhost")))
        keygen(d, ("127.0.0.1", "localhost"))
        return cls(d, Registry(sqlite3.connect(d / "registry.db", check_same_thread=False)))

    def enrol(self, node_id: str, prefix: Path) -> Path:
        """A real enrolment bundle installed under ``prefix``; returns its keys directory."""
        bundle = prefix.parent / f"{node_id}.bundle"
        enrol_node(PkiSettings(dir=self.dir, broker_hosts=("127.0.0.1",)), self.registry,
                   NodeInfo(node_id, "33.74.10.1005", 1, 1, f"Pos {node_id}"), bundle,
                   replace=self.registry.get(node_id) is not None)
        install_bundle(bundle, prefix)
        return prefix / "etc" / "kentongan" / "keys"


def fixture_project(d: Path, version: str, broken: str = "") -> Path:
    """Source tree of the tiny ``kfix`` package at ``version``."""
    if d.exists():
        shutil.rmtree(d)
    (d / "kfix").mkdir(parents=True)
    (d / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "kfix"
        version = "{version}"
        [project.scripts]
        kfix-agent = "kfix.agent:main"
        [tool.setuptools]
        packages = ["kfix"]
        """))
    (d / "kfix" / "__init__.py").write_text(f"__version__ = {version!r}\nBROKEN = {broken!r}\n")
    (d / "kfix" / "agent.py").write_text(textwrap.dedent("""
        import os
        import sys

        from kfix import BROKEN, __version__


        def main() -> None:
            if BROKEN == "crash":
                sys.exit(3)
            sys.path[:0] = os.environ["KFIX_PATH"].split(os.pathsep)
            import edge

            edge.__version__ = __version__  # the agent reports the release's version
            from edge.cli import main as edge_main

            sys.exit(edge_main())
        """))
    return d


def build_fixture(pki: Pki, root: Path, work: Path, version: str, *, broken: str = "",
                  min_from: str | None = None, platforms: tuple[str, ...] = ("host",)) -> None:
    project = fixture_project(work / f"src-{version}", version, broken)
    empty = work / "empty-wheelhouse"
    empty.mkdir(exist_ok=True)
    build_release(BuildOptions(project_dir=project, root=root, platforms=platforms,
                               wheelhouse=empty, offline=True, min_from_version=min_from,
                               package="kfix"), load_release_key(pki.dir))


class Server:
    def __init__(self, pki: Pki, root: Path, db: Path) -> None:
        self.store = RolloutStore(db)
        ctx = server_context(pki.dir / "ca.crt", pki.dir / "release-server.crt",
                             pki.dir / "release-server.key", pki.dir / "crl.pem")
        self.srv = ReleaseServer(("127.0.0.1", 0), root, self.store, ctx)
        self.url = f"https://127.0.0.1:{self.srv.server_address[1]}"
        self.srv.serve_in_thread()

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
        self.store.close()


# -- post side -------------------------------------------------------------------------------


def post_toml(node_id: str, state: Path, keys: Path) -> str:
    return textwrap.dedent(f"""
        config_version = 1
        [node]
        node_id = "{node_id}"
        kelurahan_code = "33.74.10.1005"
        rw = 1
        rt = 1
        display_name = "Pos {node_id}"
        [[buttons]]
        name = "panic"
        pin = 17
        incident = "PANIC"
        hold_seconds = 2.0
        normally_closed = true
        [siren]
        pin = 18
        test_max_seconds = 0.3
        [siren.quiet_hours]
        enabled = false
        [camera]
        backend = "none"
        [storage]
        state_dir = "{state}"
        [sync]
        enabled = false
        [sync.tls]
        ca_file = "{keys / 'ca.crt'}"
        cert_file = "{keys / 'node.crt'}"
        key_file = "{keys / 'node.key'}"
        """)


class Post:
    """A simulated post: update root, node config, the agent under a ``Supervisor``."""

    def __init__(self, d: Path, node_id: str, pki: Pki, url: str, *, entry: str = "kfix-agent",
                 window: float = 30.0) -> None:
        self.dir, self.node_id, self.url, self.window = d, node_id, url, window
        d.mkdir(parents=True, exist_ok=True)
        self.keys = pki.enrol(node_id, d / "prefix")
        shutil.copyfile(pki.dir / "release.pub", d / "release.pub")  # trust-release-key
        self.layout = Layout(d / "opt")
        self.layout.ensure()
        self.cfg = d / "node.toml"
        self.cfg.write_text(post_toml(node_id, d / "state", self.keys))
        (d / "post.json").write_text(json.dumps({"node_id": node_id, "url": url,
                                                  "window": window, "entry": entry}))
        self.entry = entry
        self.supervisor: Supervisor | None = None

    @property
    def status_file(self) -> Path:
        return self.dir / "supervisor.json"

    def start_agent(self) -> Supervisor:
        argv = [str(self.layout.current / "bin" / self.entry), "run", "--simulate", "--config",
                str(self.cfg)]
        env = {**os.environ, "KFIX_PATH": os.pathsep.join([str(REPO), SITE])}
        self.supervisor = Supervisor(argv, restart_sec=0.2, stop_timeout=10,
                                     log=self.dir / "agent.log", env=env,
                                     status_file=self.status_file).start()
        return self.supervisor

    def stop_agent(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None

    def updater(self, rate: float = 0) -> Updater:
        return make_updater(self.dir, self.url, rate=rate)

    def agent_version(self) -> str | None:
        from edge.errors import ControlError

        try:
            reply = control_requester(self.dir / "state")({"op": "status"}, 5)
        except (ControlError, OSError):
            return None
        return str(reply.get("status", {}).get("version"))


def make_updater(d: Path, url: str, *, rate: float = 0) -> Updater:
    info = json.loads((d / "post.json").read_text())
    keys = d / "prefix" / "etc" / "kentongan" / "keys"
    client = ReleaseClient(url, ServerTls(keys / "ca.crt", keys / "node.crt", keys / "node.key"),
                           rate_bytes_per_s=rate)
    return Updater(Layout(d / "opt"), client, load_verify_key(d / "release.pub"),
                   SupervisorClient(d / "supervisor.json"), control_requester(d / "state"),
                   sync_enabled=False,
                   install=InstallOptions(python=BASE_PYTHON, system_site_packages=False,
                                          nice=0, compile=False),
                   health_window=float(info["window"]), crash_loop_restarts=3,
                   crash_loop_seconds=30)


if __name__ == "__main__":
    post_dir, server_url = Path(sys.argv[1]), sys.argv[2]
    print(make_updater(post_dir, server_url).check_once(), flush=True)
