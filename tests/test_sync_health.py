"""Sync is never silent and never left dead: rate-limited cause logging, supervised restarts with
backoff, and the sync state in the agent's status, the watchdog checks and systemd's STATUS=."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest
from test_agent_faults import node_config

from central_sync.broker import free_port
from edge.agent import Agent
from edge.sync.health import RateLimitedLog, supervise
from edge.watchdog import HealthWatchdog, SystemdNotifier


def test_rate_limited_log_counts_repeats(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rl = RateLimitedLog(logging.getLogger("t.rl"), "sync_connect_failed", interval=300,
                        monotonic=lambda: now[0])
    with caplog.at_level("ERROR", logger="t.rl"):
        for _ in range(1000):  # a week of failed attempts at the backoff cap would be fewer
            rl("key_unreadable", error="x")
            now[0] += 1.0
        rl("unreachable")  # a new cause is logged at once
    lines = [r for r in caplog.records if r.getMessage() == "sync_connect_failed"]
    assert [r.cause for r in lines] == ["key_unreadable"] * 4 + ["unreachable"]
    assert [r.repeats for r in lines] == [0, 299, 299, 299, 99]


def test_supervise_restarts_a_crashed_task_with_backoff(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    crashes: list[tuple[str, float]] = []
    forever = asyncio.Event()

    async def flaky() -> None:
        runs.append(len(runs))
        if len(runs) <= 3:
            raise ValueError(f"boom {len(runs)}")
        await forever.wait()

    async def scenario() -> None:
        task = asyncio.create_task(supervise(
            "sync", flaky, on_crash=lambda e, d: crashes.append((str(e), d)),
            min_delay=0.01, max_delay=0.05))
        for _ in range(400):
            if len(runs) == 4:
                break
            await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level("ERROR"):
        asyncio.run(scenario())
    assert len(runs) == 4 and [c for c, _ in crashes] == ["boom 1", "boom 2", "boom 3"]
    assert all(0.01 <= d <= 0.05 for _, d in crashes)
    logged = [r for r in caplog.records if r.getMessage() == "task_crashed"]
    assert logged and "ValueError" in logged[0].traceback
    assert len(logged) == 1  # same cause: rate-limited


def test_degraded_goes_to_status_without_stopping_pings(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    problem: list[str | None] = ["sync retrying: key_unreadable"]
    wd = HealthWatchdog({"sync": lambda: True}, interval=1, notifier=SystemdNotifier(path),
                        degraded=lambda: problem[0])
    try:
        assert wd.tick() is True
        got = [sock.recv(4096).decode() for _ in range(2)]
        assert got == ["STATUS=degraded: sync retrying: key_unreadable",
                       "WATCHDOG=1"]
        problem[0] = None
        assert wd.tick() is True
        assert [sock.recv(4096).decode() for _ in range(2)] == ["STATUS=healthy", "WATCHDOG=1"]
    finally:
        sock.close()


def test_agent_status_and_health_say_why_sync_cannot_start(tmp_path: Path) -> None:
    missing = tmp_path / "keys"
    cfg = node_config(tmp_path / "state", sync={
        "enabled": True, "broker_port": free_port(), "reconnect_min_seconds": 0.05,
        "reconnect_max_seconds": 0.2,
        "tls": {"ca_file": str(missing / "ca.crt"), "cert_file": str(missing / "node.crt"),
                "key_file": str(missing / "node.key")}})

    async def scenario() -> None:
        agent = Agent(cfg, simulate=True)
        await agent.start()
        try:
            for _ in range(200):
                if agent.status()["sync"].get("failures", 0) >= 2:
                    break
                await asyncio.sleep(0.05)
            sync = agent.status()["sync"]
            assert sync["connected"] is False and sync["running"] is True
            assert sync["state"] == "retrying" and sync["reason"] == "ca_unreadable"
            assert "ca.crt does not exist" in sync["error"]
            assert agent.sync_alive()  # retrying is alive: the watchdog keeps pinging
            problem = agent.health_problem()
            assert problem is not None and "ca_unreadable" in problem
        finally:
            await agent.stop()
        assert not agent.sync_alive()  # and a dead sync task is a failed watchdog check

    asyncio.run(scenario())
