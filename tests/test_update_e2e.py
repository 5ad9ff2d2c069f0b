"""End to end on the real project: central (CA from ``ca init``, ingest over the production
Mosquitto config) and its release server; a simulated post enrolled with a real bundle runs the
agent from ``current`` under the supervisor and the updater beside it.

* 0.1.0 installed, then 0.1.1: installed offline into its own venv, switched, the restarted
  agent chirps (relay read back), reads its buttons, opens its outbox, connects to the broker and
  gets its update SELFTEST event acknowledged by central -> healthy, good = 0.1.1.
* 0.1.2 with a siren regression (the relay never switches on): its own check fails, the post
  switches back to 0.1.1 by itself, restarts it and reports why (rollout report + an event
  central stores)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_release_build import copy_tree
from update_helpers import BASE_PYTHON, REPO, Pki, Server, wait_for

from central_sync.broker import LocalMosquitto, production_broker
from central_sync.pki import PkiFiles
from central_sync.registry import Registry
from central_sync.release.wheelhouse import build_wheelhouse
from edge.demo import post_toml
from edge.signing import load_verify_key
from edge.update.fetch import ReleaseClient, ServerTls
from edge.update.health import control_requester
from edge.update.install import InstallOptions
from edge.update.supervisor import Supervisor
from edge.update.switch import Layout
from edge.update.updater import Updater

PY = sys.executable
NODE = "smg-upd-rw01-rt01"
#: Download rate limit (bytes/s): the limiter is on, but a release carries the whole wheelhouse
#: (~35 MB), and at 4 MB/s its three downloads were half of this test's minute. The bucket's
#: pacing itself is tested with a fake clock (test_update_switch.py).
RATE = 40_000_000


def cli(mod: str, *args: str) -> str:
    res = subprocess.run([PY, "-m", mod, *args], capture_output=True, text=True, timeout=900,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr
    return res.stdout


def source(d: Path, base: Path, version: str, *, break_siren: bool = False) -> Path:
    src = copy_tree(d)
    init = src / "edge" / "__init__.py"
    init.write_text(init.read_text().replace(f'"{_version()}"', f'"{version}"'))
    if break_siren:  # a regression: the relay is never switched on
        siren = src / "edge" / "drivers" / "siren.py"
        text = siren.read_text()
        assert "            self._relay.on()\n" in text
        siren.write_text(text.replace("            self._relay.on()\n",
                                      "            self._relay.off()\n", 1))
    return src


def _version() -> str:
    from edge import __version__

    return __version__


class World:
    def __init__(self, d: Path) -> None:
        self.d = d
        self.cfg = d / "central" / "central.toml"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.broker: LocalMosquitto | None = None
        self.server: Server | None = None

    def central_events(self) -> list[dict[str, Any]]:
        out = cli("central_sync.cli", "events", "--config", str(self.cfg), "--json", "--limit",
                  "100000")
        return [json.loads(x) for x in out.splitlines() if x.strip()]

    def close(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.server is not None:
            self.server.close()
        if self.broker is not None:
            self.broker.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("e2e")
    w = World(d)
    port = 8883  # a placeholder until the broker runs (it picks a free port: see below)
    pki_dir = d / "central" / "pki"
    w.cfg.parent.mkdir(parents=True)
    w.cfg.write_text(f"""database = "{d / 'central' / 'central.db'}"
[broker]
host = "127.0.0.1"
port = {port}
client_id = "central-e2e"
[broker.tls]
ca_file = "{pki_dir / 'ca.crt'}"
cert_file = "{pki_dir / 'central-mqtt.crt'}"
key_file = "{pki_dir / 'central-mqtt.key'}"
[pki]
dir = "{pki_dir}"
broker_hosts = ["127.0.0.1", "localhost"]
broker_port = {port}
""")
    try:
        cli("central_sync.cli", "ca", "init", "--config", str(w.cfg))
        cli("central_sync.cli", "release", "keygen", "--config", str(w.cfg))
        files = PkiFiles(pki_dir)
        w.broker = production_broker(d / "broker", ca_file=files.ca_cert,
                                     cert_file=files.broker_cert, key_file=files.broker_key,
                                     crl_file=files.crl).start()
        # [broker] port and [pki] broker_port: the port the broker actually got.
        w.cfg.write_text(w.cfg.read_text().replace(f"port = {port}\n", f"port = {w.broker.port}\n"))
        log = (d / "central.log").open("ab")
        w.procs.append(subprocess.Popen([PY, "-m", "central_sync.cli", "run", "--config",
                                         str(w.cfg)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=REPO))
        wheelhouse = d / "wheelhouse"
        build_wheelhouse(wheelhouse)
        for version, broken in (("0.1.0", False), ("0.1.1", False), ("0.1.2", True)):
            src = source(d / f"src-{version}", d, version, break_siren=broken)
            cli("central_sync.cli", "release", "build", "--config", str(w.cfg), "--project",
                str(src), "--platform", "host", "--wheelhouse", str(wheelhouse))
        import sqlite3

        pki = Pki(pki_dir, Registry(sqlite3.connect(d / "central" / "central.db",
                                                    check_same_thread=False)))
        w.server = Server(pki, w.cfg.parent / "releases", d / "rollout.db")
        yield w
    finally:
        w.close()


def test_update_rolls_out_healthy_then_bad_release_rolls_back(world: World,
                                                              tmp_path: Path) -> None:
    d = tmp_path / "post"
    bundle = d / "post.bundle"
    d.mkdir()
    cli("central_sync.cli", "enrol", NODE, "--kelurahan", "33.74.10.1005", "--rw", "1", "--rt",
        "1", "--name", "Pos Update", "--out", str(bundle), "--config", str(world.cfg))
    cli("edge.cli", "install-bundle", str(bundle), "--prefix", str(d / "root"))
    installed = tomllib.loads((d / "root" / "etc" / "kentongan" / "node.toml").read_text())
    assert world.broker is not None and world.server is not None
    cfg = d / "node.toml"
    cfg.write_text(post_toml(NODE, "Pos Update", 1, 1, d / "state", world.broker.port,
                             installed).replace("[siren]\n", "[siren]\ntest_max_seconds = 0.5\n"))
    keys = d / "root" / "etc" / "kentongan" / "keys"
    layout = Layout(d / "opt")
    sup = Supervisor([str(layout.current / "bin" / "kentongan-edge"), "run", "--simulate",
                      "--config", str(cfg)], restart_sec=0.5, log=d / "agent.log",
                     status_file=d / "supervisor.json")
    request = control_requester(d / "state")
    updater = Updater(layout, ReleaseClient(world.server.url, ServerTls(
        keys / "ca.crt", keys / "node.crt", keys / "node.key"), rate_bytes_per_s=RATE),
        load_verify_key(world.cfg.parent / "pki" / "release.pub"), sup, request,
        sync_enabled=True, install=InstallOptions(python=BASE_PYTHON,
                                                  system_site_packages=False, nice=0,
                                                  compile=False),
        health_window=180, crash_loop_restarts=3, crash_loop_seconds=60)
    store = world.server.store
    store.set_canary(NODE)
    try:
        store.start("0.1.0", "canary")
        assert "first install" in updater.check_once()
        sup.start()

        def version() -> object:
            try:
                return request({"op": "status"}, 5)["status"]["version"]
            except Exception:
                return None

        wait_for(lambda: version() == "0.1.0", 120, "agent 0.1.0")
        store.start("0.1.1", "canary")
        out = updater.check_once()
        assert out.startswith("updated to 0.1.1") and "acknowledged by central" in out, out
        assert layout.link_target(layout.good) == "0.1.1"
        events = world.central_events()
        ok = [e for e in events if e["type"] == "SELFTEST" and e["payload"].get("kind") ==
              "update" and e["payload"].get("version") == "0.1.1"]
        assert ok and ok[0]["payload"]["ok"] is True
        assert store.start("0.1.1", "all").status == "active"  # canary healthy: ring advances

        store.start("0.1.2", "canary")
        t0 = time.monotonic()
        out = updater.check_once()
        took = time.monotonic() - t0
        assert out.startswith("rolled back from 0.1.2 to 0.1.1") and "siren" in out, out
        print(f"bad release -> previous version back and reported in {took:.1f}s")
        assert layout.link_target(layout.current) == "0.1.1"
        wait_for(lambda: version() == "0.1.1", 120, "agent back on 0.1.1")

        def reported() -> bool:
            return any(e["type"] == "SELFTEST" and e["payload"].get("kind") == "update"
                       and e["payload"].get("ok") is False
                       and e["payload"].get("rolled_back_to") == "0.1.1"
                       for e in world.central_events())

        wait_for(reported, 60, "rollback event at central")
        node = {n["node_id"]: n for n in store.nodes()}[NODE]
        assert node["report_state"] == "rolled_back" and "siren" in node["report_reason"]
        halted = store.latest("0.1.2")
        assert halted is not None and halted.status == "halted"
    finally:
        sup.stop()
