"""The simulated post end to end: `kentongan-edge run --simulate` as a real process, driven
through its control socket by `kentongan-edge sim press` / `status`, exactly as technicians and
the demo use it. No network at all: sync is disabled."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.control import socket_path
from tests.waits import wait_for

CLI = [sys.executable, "-m", "edge.cli"]


def post_config(tmp: Path, *, sync: bool = False, port: int = 1883, extra: str = "") -> Path:
    state = tmp / "state"
    text = f"""
config_version = 1
log_level = "DEBUG"
[node]
node_id = "test-post-01"
kelurahan_code = "33.74.10.1005"
rw = 5
rt = 3
display_name = "Pos Ronda Uji"
[[buttons]]
name = "panic"
pin = 17
incident = "PANIC"
hold_seconds = 0.3
normally_closed = true
tamper_after_seconds = 5
[[buttons]]
name = "aman"
pin = 23
incident = "AMAN"
hold_seconds = 0.2
[[buttons]]
name = "patrol"
pin = 22
incident = "PATROLI"
hold_seconds = 1.0
patrol_checkin = true
[siren]
pin = 18
max_on_seconds = 60
[siren.quiet_hours]
enabled = false
[camera]
backend = "fake"
width = 160
height = 120
frames_per_alarm = 2
frame_interval_ms = 10
[storage]
state_dir = "{state}"
[sync]
enabled = {"true" if sync else "false"}
broker_port = {port}
reconnect_min_seconds = 0.1
reconnect_max_seconds = 0.5
{extra}
"""
    p = tmp / "node.toml"
    p.write_text(text)
    return p


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def status(cfg: Path) -> dict[str, Any]:
    res = run_cli("status", "--config", str(cfg), "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


class Post:
    def __init__(self, cfg: Path, log: Path) -> None:
        self.cfg = cfg
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Post:
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen([*CLI, "run", "--simulate", "--config", str(self.cfg)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        state = self.cfg.parent / "state"
        wait_for(lambda: socket_path(state).exists() or self.proc.poll() is not None,  # type: ignore[union-attr]
                 what="control socket")
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
        return self

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(20)
        self.log.close()
        return rc

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


@pytest.fixture
def post(tmp_path: Path) -> Iterator[Post]:
    p = Post(post_config(tmp_path), tmp_path / "agent.log").start()
    try:
        yield p
    finally:
        if p.proc and p.proc.poll() is None:
            p.stop()


def test_panic_hold_sounds_siren_records_event_snapshot_and_all_clear(post: Post) -> None:
    res = run_cli("sim", "press", "panic", "--hold", "0.6", "--config", str(post.cfg))
    assert res.returncode == 0, res.stderr
    st = status(post.cfg)
    assert st["siren"]["playing"] is True
    assert st["siren"]["pattern"] == "titir"
    assert st["siren"]["trigger"] == {"source": "button", "detail": "panic",
                                      "incident_type": "PANIC"}
    assert any(on for _ago, on in st["siren"]["history"])
    assert "PANIC" in st["open_incidents"]
    wait_for(lambda: status(post.cfg)["outbox"]["by_type"].get("PANIC", {}).get("ready") == 1,
             what="PANIC event in the outbox")
    wait_for(lambda: status(post.cfg)["snapshots"].get("ready", 0) >= 2, what="2 snapshots")

    # The all-clear stops the siren (the single AMAN strike ends by itself) and closes the incident.
    assert run_cli("sim", "press", "aman", "--hold", "0.4", "--config", str(post.cfg)).returncode == 0
    wait_for(lambda: not status(post.cfg)["siren"]["playing"], what="siren to stop")
    st = status(post.cfg)
    assert st["open_incidents"] == {}
    assert st["siren"]["relay_on"] is False
    assert st["outbox"]["by_type"]["AMAN"]["ready"] == 1

    # Human-readable status works too.
    res = run_cli("status", "--config", str(post.cfg))
    assert res.returncode == 0 and "outbox" in res.stdout and "PANIC" in res.stdout
    assert post.stop() == 0
    logs = post.logs()
    activations = [r for r in logs if r.get("event") == "siren_activation"]
    assert activations and activations[0]["trigger_source"] == "button"
    assert activations[0]["trigger_detail"] == "panic"
    assert all(r.get("node_id") == "test-post-01" for r in logs if "event" in r)


def test_short_press_is_ignored_and_patrol_checkin_is_logged(post: Post) -> None:
    assert run_cli("sim", "press", "panic", "--hold", "0.05", "--config",
                   str(post.cfg)).returncode == 0
    assert run_cli("sim", "press", "patrol", "--hold", "0.1", "--config",
                   str(post.cfg)).returncode == 0
    wait_for(lambda: status(post.cfg)["outbox"]["by_type"].get("PATROLI", {}).get("ready") == 1,
             what="PATROLI check-in")
    st = status(post.cfg)
    assert st["siren"]["playing"] is False
    assert "PANIC" not in st["outbox"]["by_type"]


def test_unknown_button_is_a_clear_error(post: Post) -> None:
    res = run_cli("sim", "press", "doorbell", "--config", str(post.cfg))
    assert res.returncode == 2
    assert "unknown button 'doorbell'" in res.stderr and "panic" in res.stderr


def test_status_without_agent_reads_the_outbox(tmp_path: Path) -> None:
    cfg = post_config(tmp_path)
    res = run_cli("status", "--config", str(cfg))
    assert res.returncode == 0
    assert "NOT RUNNING" in res.stdout
    res = run_cli("sim", "press", "panic", "--config", str(cfg))
    assert res.returncode == 2 and "no agent is listening" in res.stderr


def test_corrupt_database_is_quarantined_and_the_siren_still_works(tmp_path: Path) -> None:
    cfg = post_config(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(b"this is not a database" * 100)
    p = Post(cfg, tmp_path / "agent.log").start()
    try:
        assert run_cli("sim", "press", "panic", "--hold", "0.5", "--config",
                       str(cfg)).returncode == 0
        st = status(cfg)
        assert st["siren"]["playing"] is True
        by_type = wait_for(lambda: status(cfg)["outbox"]["by_type"], what="events")
        assert "STORAGE_QUARANTINED" in by_type
        assert list(state.glob("outbox.db.corrupt-*"))
    finally:
        p.stop()


def test_nc_loop_cut_is_tamper_not_alarm(tmp_path: Path) -> None:
    cfg = post_config(tmp_path)
    text = cfg.read_text().replace("tamper_after_seconds = 5", "tamper_after_seconds = 0.5")
    cfg.write_text(text)
    p = Post(cfg, tmp_path / "agent.log").start()
    try:
        # Holding the NC loop open longer than tamper_after_seconds: a cut wire.
        assert run_cli("sim", "press", "panic", "--hold", "1.2", "--config",
                       str(cfg)).returncode == 0
        wait_for(lambda: status(cfg)["outbox"]["by_type"].get("TAMPER"), what="TAMPER event")
        st = status(cfg)
        assert "PANIC" not in st["outbox"]["by_type"]
        assert st["siren"]["playing"] is False
    finally:
        p.stop()


def test_control_socket_works_under_a_long_state_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("a-very-long-directory-name-for-a-state-dir-" * 3)
    deep.mkdir()
    cfg = post_config(deep)
    assert len(str(socket_path(deep / "state"))) > 108
    p = Post(cfg, tmp_path / "agent.log").start()
    try:
        assert run_cli("sim", "press", "patrol", "--hold", "0.1", "--config",
                       str(cfg)).returncode == 0
        assert status(cfg)["node_id"] == "test-post-01"
    finally:
        p.stop()


def test_selftest_result_is_recorded_on_the_post_for_central(post: Post) -> None:
    res = run_cli("selftest", "--config", str(post.cfg), "--simulate", "--json", timeout=120)
    report = json.loads(res.stdout)
    assert res.returncode == (0 if report["ok"] else 1)
    names = {c["name"] for c in report["checks"]}
    assert {"siren", "camera", "disk", "config"} <= names
    wait_for(lambda: status(post.cfg)["outbox"]["by_type"].get("SELFTEST"), what="SELFTEST event")
