"""systemd units (verified by systemd-analyze when present) and the health-gated watchdog."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.watchdog import HealthWatchdog, SystemdNotifier, watchdog_interval

UNITS = Path(__file__).resolve().parent.parent / "systemd"


def _directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


@pytest.mark.parametrize("unit", ["kentongan-edge.service", "kentongan-central.service"])
def test_unit_hardening_and_watchdog(unit: str) -> None:
    d = _directives(UNITS / unit)
    assert d["Type"] == ["notify"] and d["Restart"] == ["always"]
    assert int(d["WatchdogSec"][0]) > 0
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                       ("PrivateTmp", "yes"), ("ProtectHome", "yes")):
        assert d[key] == [value], key
    assert d["StateDirectory"][0].startswith("kentongan")
    assert all(":" in c for c in d["LoadCredential"])
    if unit == "kentongan-edge.service":
        assert set(d["SupplementaryGroups"][0].split()) == {"gpio", "dialout", "video"}
        assert any("node.key" in c for c in d["LoadCredential"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("unit", ["kentongan-edge.service", "kentongan-central.service"])
def test_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    text = (UNITS / unit).read_text()
    # verify insists that ExecStart's binary exists: point it at one that does.
    lines = [("ExecStart=/bin/true " + ln.split(" ", 1)[1]) if ln.startswith("ExecStart=") else ln
             for ln in text.splitlines()]
    copy = tmp_path / unit
    copy.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True,
                          text=True, timeout=60)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if unit in ln]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


# -- watchdog against a real AF_UNIX datagram socket ------------------------------------------


class NotifySocket:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.sock.settimeout(0.05)
        self.path = path

    def drain(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return out


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    path = str(tmp_path / "notify") if request.param == "path" else \
        f"@kentongan-test-{os.getpid()}-{id(tmp_path)}"
    s = NotifySocket(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    yield s
    s.sock.close()


def test_notifier_is_noop_without_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = SystemdNotifier()
    assert not n.enabled and n.ready() is False and n.watchdog() is False


def test_watchdog_pings_only_while_all_checks_pass(notify_socket: NotifySocket,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    health = {"siren_thread": True}

    def outbox_writer() -> bool:
        return True

    def siren_thread() -> bool:
        return health["siren_thread"]

    wd = HealthWatchdog({"siren_thread": siren_thread, "outbox_writer": outbox_writer},
                        interval=0.02)

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        task = asyncio.create_task(wd.run())
        await asyncio.sleep(0.15)
        healthy = notify_socket.drain()
        health["siren_thread"] = False
        await asyncio.sleep(0.03)
        notify_socket.drain()  # a ping may have been in flight when the check flipped
        await asyncio.sleep(0.15)
        sick = notify_socket.drain()
        health["siren_thread"] = True
        await asyncio.sleep(0.1)
        recovered = notify_socket.drain()
        task.cancel()
        return healthy, sick, recovered

    with caplog.at_level("ERROR", logger="kentongan.watchdog"):
        healthy, sick, recovered = asyncio.run(scenario())
    assert healthy[0].startswith("READY=1")
    assert healthy.count("WATCHDOG=1") >= 3
    assert "WATCHDOG=1" not in sick
    assert any("unhealthy: siren_thread" in m for m in sick) or wd.failing == []
    assert "WATCHDOG=1" in recovered and not any(m.startswith("READY") for m in recovered)
    failed = [r for r in caplog.records if r.getMessage() == "watchdog_check_failed"]
    assert failed and failed[0].failed == ["siren_thread"]  # type: ignore[attr-defined]


def test_a_raising_check_counts_as_failed(notify_socket: NotifySocket) -> None:
    def broken() -> bool:
        raise RuntimeError("boom")

    wd = HealthWatchdog({"loop": lambda: True, "broken": broken}, interval=1)
    assert wd.tick() is False and wd.failing == ["broken"]
    assert "WATCHDOG=1" not in notify_socket.drain()


def test_interval_from_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_interval() == 15.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval(7) == 7
