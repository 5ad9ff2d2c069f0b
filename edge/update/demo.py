"""Fleet-update demo: ``python -m edge.update.demo [--state DIR]`` (docs/updates.md).

Central (``ca init``, ``release keygen``, ingest over the production Mosquitto config, the mTLS
release server) and three simulated posts, each enrolled with a real bundle, running the agent
from ``/opt``-style ``current`` links under a supervisor with the updater beside it. Then:

1. release 0.1.0 is built from this tree and installed on every post (first install);
2. 0.1.1 (this tree, version bumped) goes to the canary ring: the canary updates, passes its own
   check (relay read back, buttons, outbox, broker, central's ack); advancing to ``all`` before
   that is refused; then every post updates;
3. 0.1.2 carries a siren regression: the canary's own check fails, it rolls back by itself, the
   rollout halts, and no other post ever installs it.

Wheels come from this virtualenv (offline); the posts' release venvs are real venvs.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

from central_sync.broker import LocalMosquitto, production_broker
from central_sync.errors import CentralError
from central_sync.pki import PkiFiles
from central_sync.release.rollout import RolloutStore
from central_sync.release.serve import ReleaseServer, server_context
from central_sync.release.wheelhouse import build_wheelhouse
from edge import __version__
from edge.demo import POSTS, post_toml, say
from edge.errors import ControlError
from edge.signing import load_verify_key
from edge.update.fetch import ReleaseClient, ServerTls
from edge.update.health import control_requester
from edge.update.install import InstallOptions
from edge.update.supervisor import Supervisor
from edge.update.switch import Layout
from edge.update.updater import Updater

ROOT = Path(__file__).resolve().parent.parent.parent
PY = sys.executable


def _run(*args: str) -> str:
    res = subprocess.run([PY, "-m", *args], capture_output=True, text=True, timeout=900,
                         cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def source_tree(dest: Path, version: str, *, break_siren: bool = False) -> Path:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    init = dest / "edge" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{__version__}"', f'"{version}"'))
    if break_siren:  # the regression: the relay is never switched on
        siren = dest / "edge" / "drivers" / "siren.py"
        siren.write_text(siren.read_text().replace("            self._relay.on()\n",
                                                   "            self._relay.off()\n", 1))
    return dest


class UpdateDemo:
    def __init__(self, state: Path) -> None:
        self.state = state
        self.cfg = state / "central" / "central.toml"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.supervisors: list[Supervisor] = []
        self.updaters: list[Updater] = []
        self.broker: LocalMosquitto | None = None
        self.server: ReleaseServer | None = None

    def start(self) -> None:
        if self.state.exists():
            shutil.rmtree(self.state)
        self.cfg.parent.mkdir(parents=True)
        port = 8883  # a placeholder until the broker runs (it picks a free port: see below)
        pki = self.cfg.parent / "pki"
        self.cfg.write_text(f"""database = "{self.cfg.parent / 'central.db'}"
[broker]
host = "127.0.0.1"
port = {port}
client_id = "central-update-demo"
[broker.tls]
ca_file = "{pki / 'ca.crt'}"
cert_file = "{pki / 'central-mqtt.crt'}"
key_file = "{pki / 'central-mqtt.key'}"
[pki]
dir = "{pki}"
broker_hosts = ["127.0.0.1", "localhost"]
broker_port = {port}
""")
        say("Central: ca init, release keygen (release key apart from the command key)")
        _run("central_sync.cli", "ca", "init", "--config", str(self.cfg))
        print(_run("central_sync.cli", "release", "keygen", "--config", str(self.cfg)).strip())
        files = PkiFiles(pki)
        self.broker = production_broker(self.state / "broker", ca_file=files.ca_cert,
                                        cert_file=files.broker_cert, key_file=files.broker_key,
                                        crl_file=files.crl).start()
        # [broker] port and [pki] broker_port: the port the broker actually got.
        self.cfg.write_text(self.cfg.read_text().replace(f"port = {port}\n", f"port = {self.broker.port}\n"))
        log = (self.state / "central.log").open("ab")
        self.procs.append(subprocess.Popen([PY, "-m", "central_sync.cli", "run", "--config",
                                            str(self.cfg)], stdout=log,
                                           stderr=subprocess.STDOUT, cwd=ROOT))
        say("Building releases 0.1.0, 0.1.1 and 0.1.2 (siren regression) from this tree")
        wheelhouse = self.state / "wheelhouse"
        build_wheelhouse(wheelhouse)
        for version, broken in (("0.1.0", False), ("0.1.1", False), ("0.1.2", True)):
            src = source_tree(self.state / f"src-{version}", version, break_siren=broken)
            out = _run("central_sync.cli", "release", "build", "--config", str(self.cfg),
                       "--project", str(src), "--platform", "host", "--wheelhouse",
                       str(wheelhouse), "--min-from", "0.1.0")
            print(out.strip())
        releases = self.cfg.parent / "releases"
        ctx = server_context(files.ca_cert, pki / "release-server.crt",
                             pki / "release-server.key", files.crl)
        self.store = RolloutStore(releases / "rollout.db")
        self.server = ReleaseServer(("127.0.0.1", 0), releases, self.store, ctx)
        self.server.serve_in_thread()
        url = f"https://127.0.0.1:{self.server.server_address[1]}"
        print(f"release server {url} (client certificates required)")
        say("Enrolling three posts; the first is named canary")
        for node_id, name, rw, rt in POSTS:
            d = self.state / node_id
            d.mkdir()
            _run("central_sync.cli", "enrol", node_id, "--kelurahan", "33.74.10.1005", "--rw",
                 str(rw), "--rt", str(rt), "--name", name, "--out", str(d / "b.bundle"),
                 "--config", str(self.cfg))
            _run("edge.cli", "install-bundle", str(d / "b.bundle"), "--prefix", str(d / "root"))
            installed = tomllib.loads((d / "root" / "etc" / "kentongan" / "node.toml")
                                      .read_text())
            cfg = d / "node.toml"
            cfg.write_text(post_toml(node_id, name, rw, rt, d / "state", port, installed)
                           .replace("[siren]\n", "[siren]\ntest_max_seconds = 0.5\n"))
            keys = d / "root" / "etc" / "kentongan" / "keys"
            layout = Layout(d / "opt")
            sup = Supervisor([str(layout.current / "bin" / "kentongan-edge"), "run",
                              "--simulate", "--config", str(cfg)], restart_sec=0.5,
                             log=d / "agent.log", status_file=d / "supervisor.json")
            self.supervisors.append(sup)
            self.updaters.append(Updater(
                layout, ReleaseClient(url, ServerTls(keys / "ca.crt", keys / "node.crt",
                                                     keys / "node.key"), rate_bytes_per_s=0),
                load_verify_key(pki / "release.pub"), sup, control_requester(d / "state"),
                sync_enabled=True, install=InstallOptions(
                    python=getattr(sys, "_base_executable", sys.executable),
                    system_site_packages=False, nice=10, compile=False),
                health_window=180))
        self.store.set_canary(POSTS[0][0])

    def update_all(self) -> None:
        for (node_id, _n, _rw, _rt), upd in zip(POSTS, self.updaters, strict=True):
            try:
                out = upd.check_once()
            except Exception as exc:  # shown, the demo goes on
                out = f"error: {exc}"
            print(f"  {node_id}: {out}")

    def rollout(self, version: str, ring: str) -> bool:
        try:
            r = self.store.start(version, ring)
        except CentralError as exc:
            print(f"  rollout {version} -> {ring} refused: {exc}")
            return False
        print(f"  rollout {version} -> ring {ring}: {r.status}")
        return True

    def scenario(self) -> None:
        say("0.1.0 to all posts (first install), agents started from /opt/.../current")
        self.store.start("0.1.0", "all", force=True)
        self.update_all()
        for sup in self.supervisors:
            sup.start()
        say("0.1.1 to the canary ring")
        self.rollout("0.1.1", "canary")
        self.rollout("0.1.1", "all")  # refused: the canary has not reported healthy yet
        self.update_all()
        say("canary healthy: 0.1.1 advances to every post")
        self.rollout("0.1.1", "all")
        self.update_all()
        say("0.1.2 (siren regression) to the canary ring")
        self.rollout("0.1.2", "canary")
        self.update_all()
        say("the rollout halted by itself; the other posts are never offered 0.1.2")
        self.update_all()
        print(_run("central_sync.cli", "release", "status", "--config", str(self.cfg)))
        self.show_versions()

    def show_versions(self) -> None:
        for (node_id, _n, _rw, _rt), upd in zip(POSTS, self.updaters, strict=True):
            try:
                v = upd.request({"op": "status"}, 5)["status"]["version"]
            except (ControlError, OSError, KeyError):
                v = "?"
            print(f"  {node_id}: current {upd.running()}, agent reports {v}")

    def stop(self) -> None:
        for sup in self.supervisors:
            sup.stop()
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.broker is not None:
            self.broker.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="kentongan fleet-update demo")
    ap.add_argument("--state", default=str(ROOT / "demo-state-updates"))
    args = ap.parse_args(argv)
    demo = UpdateDemo(Path(args.state))
    try:
        demo.start()
        demo.scenario()
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
