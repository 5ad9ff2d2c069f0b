"""A normal stop (SIGTERM, as systemd stops a unit) of a process serving the desk is clean: the
lifespan shutdown runs, the exit status is 0, and the log holds no ERROR and no traceback.
Real processes (``kentongan-central web`` and ``run``), real Mosquitto."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from central_sync.broker import LocalMosquitto
from tests.helpers_central import start, write_config
from tests.helpers_web import ready_port, web_toml
from tests.waits import wait_for


def _serves(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/login", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _events(log: Path) -> list[dict[str, object]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"level": "raw", "event": line})  # not a structured line (a bare traceback)
    return out


@pytest.mark.parametrize("command", ["web", "run"])
def test_sigterm_stops_the_desk_cleanly(tmp_path: Path, mosquitto: LocalMosquitto, command: str) -> None:
    ready = tmp_path / "web.ready"
    cfg = write_config(tmp_path / "central.toml", mosquitto.port)
    with cfg.open("a") as fh:
        fh.write(web_toml(ready))
    log = tmp_path / f"{command}.log"
    proc = start([command, "--config", str(cfg)], log)
    try:
        port = ready_port(ready, proc=proc, log=log)
        wait_for(lambda: _serves(port), 120, "the login page")
        wait_for(lambda: any(e.get("event") == "web_started" for e in _events(log)), 60, "the desk started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "CancelledError" not in text, text[-4000:]
    events = _events(log)
    bad = [e for e in events if str(e.get("level")).lower() in ("error", "critical", "raw")]
    assert not bad, bad
    names = [e.get("event") for e in events]
    assert "Application shutdown complete." in names  # uvicorn ran the lifespan shutdown
    assert names.index("Application shutdown complete.") < names.index("central_stopped")
