"""The post as installed by docs/install-pi.md, against the PRODUCTION broker config and a real
central: ``install-bundle --group kentongan`` into a prefix (keys root-owned 0600), the agent run
as the unprivileged ``kentongan`` user with ``CREDENTIALS_DIRECTORY`` filled the way systemd's
``LoadCredential=`` fills it.

First without the TLS key credential (a unit missing its LoadCredential line): the post must say
why it cannot connect, in ``status``, in its log (once, not once per retry) and in ``selftest``
run as the service user. Then with the credentials: it connects and its events are acked."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_install import (
    EDGE_CLI,
    SERVICE_USER,
    as_user,
    enrol,
    ensure_service_user,
    fill_credentials,
    make_central,
    root_skip_reason,
    service_cli,
    start_production_broker,
    world_readable_tmpdir,
)
from helpers_sync import wait_until

from central_sync.config import CentralConfig
from central_sync.store import CentralStore
from tests.helpers_central import IngestInThread

SKIP = root_skip_reason()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=str(SKIP))

NODE = "rt07-inst"
#: kentongan-edge as the service user runs it (only when the layout can be built at all).
USER_CLI: list[str] = (service_cli() or []) if SKIP is None else []


class RealCentral(IngestInThread):
    """IngestService + CentralStore over mutual TLS with central's own certificate."""

    def __init__(self, db: Path, port: int, ca: Path, cert: Path, key: Path) -> None:
        super().__init__(CentralConfig.model_validate({
            "database": str(db), "broker": {
                "host": "127.0.0.1", "port": port, "client_id": "central-inst",
                "reconnect_max_seconds": 1.0,
                "tls": {"ca_file": str(ca), "cert_file": str(cert), "key_file": str(key)}}}), CentralStore(db))
        self.start()

    def wait_connected(self, timeout: float = 30, what: str = "central connected over mTLS") -> None:
        super().wait_connected(timeout, what)

    def types(self) -> list[str]:
        return [e["type"] for e in self.store.list_events(node_id=NODE, limit=1000)]


class Agent:
    def __init__(self, config: Path, creds: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.fh = log.open("wb")
        self.proc = subprocess.Popen(
            as_user(SERVICE_USER, [*USER_CLI, "run", "--config", str(config), "--simulate"],
                    {"CREDENTIALS_DIRECTORY": str(creds)}),
            stdout=self.fh, stderr=subprocess.STDOUT, start_new_session=True)

    def status(self) -> dict[str, Any]:
        out = subprocess.run(as_user(SERVICE_USER, [*USER_CLI, "status", "--config",
                                                    str(self.config), "--json"]),
                             capture_output=True, text=True, timeout=60)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}

    def sync(self) -> dict[str, Any]:
        return dict(self.status().get("sync") or {})

    def log_lines(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("event") == event:
                    out.append(rec)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.fh.close()


@pytest.fixture
def layout() -> Iterator[dict[str, Any]]:
    user = ensure_service_user()
    root = world_readable_tmpdir("kentongan-installed-")
    central = make_central(root / "central")
    broker = start_production_broker(central, root / "broker")
    try:
        bundle = enrol(central, NODE, root / f"{NODE}.bundle", broker.port)
        prefix = root / "prefix"
        out = subprocess.run([EDGE_CLI, "install-bundle", str(bundle), "--prefix", str(prefix),
                              "--group", SERVICE_USER, "--central-fingerprint",
                              central.fingerprint], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        etc = prefix / "etc" / "kentongan"
        state = prefix / "var" / "lib" / "kentongan"  # systemd's StateDirectory= does this
        state.mkdir(parents=True)
        os.chown(state, user.pw_uid, user.pw_gid)
        os.chmod(state, 0o750)
        yield {"user": user, "root": root, "central": central, "broker": broker,
               "etc": etc, "config": etc / "node.toml"}
    finally:
        broker.stop()
        if not os.environ.get("KEEP_INSTALL"):
            shutil.rmtree(root, ignore_errors=True)


def test_installed_post_says_why_it_cannot_connect_then_connects_with_credentials(
        layout: dict[str, Any]) -> None:
    etc, config, root, user = layout["etc"], layout["config"], layout["root"], layout["user"]
    keys = etc / "keys"
    for key in ("node.key", "signing.key"):
        st = (keys / key).stat()
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600, key
    f = layout["central"].files
    central = RealCentral(root / "central.db", layout["broker"].port, f.ca_cert, f.central_cert,
                          f.central_key)
    try:
        central.wait_connected()

        # 1. The unit forgot LoadCredential=node.key: the TLS key is unreadable for the user.
        partial = fill_credentials(root / "creds-partial", {"signing.key": keys / "signing.key"},
                                   user)
        agent = Agent(config, partial, root / "agent-1.log")
        try:
            wait_until(lambda: agent.sync().get("failures", 0) >= 3, 90,
                       what="several failed attempts shown by status")
            sync = agent.sync()
            assert sync["connected"] is False and sync["running"] is True
            assert sync["state"] == "retrying" and sync["reason"] == "key_unreadable"
            assert "permission denied" in sync["error"] and "node.key" in sync["error"]
            lines = agent.log_lines("sync_connect_failed")
            assert len(lines) == 1, lines  # rate-limited: one line for one repeating cause
            assert lines[0]["cause"] == "key_unreadable" and "LoadCredential" in lines[0]["error"]
            text = subprocess.run(as_user(SERVICE_USER, [*USER_CLI, "status", "--config",
                                                         str(config)]),
                                  capture_output=True, text=True, timeout=60).stdout
            assert "cause=key_unreadable" in text
        finally:
            agent.stop()
        selftest = [*USER_CLI, "selftest", "--config", str(config), "--simulate", "--no-siren",
                    "--json"]
        out = subprocess.run(as_user(SERVICE_USER, selftest,
                                     {"CREDENTIALS_DIRECTORY": str(partial)}),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1, out.stdout + out.stderr
        checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
        assert checks["certificate"]["status"] == "fail"
        assert "permission denied" in checks["certificate"]["detail"]
        assert checks["broker"]["status"] == "fail"

        # 2. Credentials as LoadCredential= provides them: selftest passes, the agent connects
        # and its events (BOOT, the SELFTEST record, a PANIC) are acknowledged by central.
        creds = fill_credentials(root / "creds", {"node.key": keys / "node.key",
                                                  "signing.key": keys / "signing.key"}, user)
        out = subprocess.run(as_user(SERVICE_USER, selftest, {"CREDENTIALS_DIRECTORY": str(creds)}),
                             capture_output=True, text=True, timeout=120)
        checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
        assert checks["certificate"]["status"] == "pass", checks["certificate"]
        assert checks["broker"]["status"] == "pass", checks["broker"]
        agent = Agent(config, creds, root / "agent-2.log")
        try:
            wait_until(lambda: agent.sync().get("connected") is True, 60, what="post connected")
            wait_until(lambda: "BOOT" in central.types(), 60, what="BOOT at central")
            press = subprocess.run(as_user(SERVICE_USER, [*USER_CLI, "sim", "press", "panic",
                                                          "--hold", "2.5", "--config",
                                                          str(config)]),
                                   capture_output=True, text=True, timeout=60)
            assert press.returncode == 0, press.stderr
            wait_until(lambda: "PANIC" in central.types(), 60, what="PANIC at central")
            wait_until(lambda: (agent.status().get("outbox") or {}).get("ready", 1) == 0
                       and agent.status()["outbox"].get("in_flight", 1) == 0, 60,
                       what="everything acked at the post")
            sync = agent.sync()
            assert sync["state"] == "connected" and sync["central"]["online"] == ["central-inst"]
            # It learnt central was online before publishing: nothing needed a second copy.
            assert sync["stats"]["central_resends"] == 0 and sync["stats"]["ack_timeouts"] == 0
        finally:
            agent.stop()
    finally:
        central.close()
