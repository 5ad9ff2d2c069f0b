"""Field failures at the agent level, in-process on MockFactory pins: a dead camera or a dead
modem is logged and reported as an event, and the alarm is unaffected."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from edge.agent import Agent
from edge.config import NodeConfig, parse_config
from edge.drivers.camera import FakeCamera


def node_config(state: Path, **extra: Any) -> NodeConfig:
    data: dict[str, Any] = {
        "node": {"node_id": "fault-post", "kelurahan_code": "33.74.10.1005", "rw": 1, "rt": 2,
                 "display_name": "Pos Uji Gangguan"},
        "buttons": [{"name": "panic", "pin": 17, "incident": "PANIC", "hold_seconds": 0.2}],
        "siren": {"pin": 18, "quiet_hours": {"enabled": False}},
        "camera": {"backend": "fake", "width": 64, "height": 48, "frames_per_alarm": 2,
                   "frame_interval_ms": 0},
        "storage": {"state_dir": str(state)},
        "sync": {"enabled": False},
    }
    data.update(extra)
    return parse_config(data)


async def wait_for(pred: Any, timeout: float = 15.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        got = await asyncio.to_thread(pred)
        if got:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_dead_camera_is_reported_and_the_siren_still_sounds(tmp_path: Path) -> None:
    async def scenario() -> None:
        agent = Agent(node_config(tmp_path / "state"), simulate=True)
        await agent.start()
        try:
            assert agent.hw is not None and agent.hw.simulated is not None
            cam = agent.hw.camera
            assert isinstance(cam, FakeCamera)
            cam.fail_next(10)
            await asyncio.to_thread(agent.hw.simulated.press, "panic", 0.4)
            assert agent.hw.siren.state().playing
            assert agent.outbox is not None
            outbox = agent.outbox
            by_type = await wait_for(
                lambda: (t := outbox.counts()["by_type"]) and "CAMERA_FAULT" in t and t)
            assert "PANIC" in by_type
            assert agent.snapshots is not None and agent.snapshots.counts().get("ready", 0) == 0
        finally:
            await agent.stop()

    asyncio.run(scenario())


def test_dead_modem_is_reported_and_the_siren_still_sounds(tmp_path: Path) -> None:
    async def scenario() -> None:
        cfg = node_config(tmp_path / "state", modem={
            "enabled": True, "port": str(tmp_path / "no-such-tty"), "at_timeout_seconds": 0.2,
            "watchdog_interval_seconds": 0.1, "watchdog_failures": 1,
            "sms_recipients": [{"name": "Ketua RT", "number": "+6281200000001"}]})
        agent = Agent(cfg, simulate=False)
        # No Pi here: build the real agent but on MockFactory pins for the buttons and relay.
        from gpiozero import Device
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        saved = Device.pin_factory
        Device.pin_factory = MockFactory(pin_class=MockPWMPin)
        try:
            await agent.start()
            try:
                assert agent.hw is not None and agent.hw.modem is not None
                assert agent.outbox is not None
                outbox = agent.outbox
                await wait_for(lambda: "MODEM_FAULT" in outbox.counts()["by_type"])
                pin = Device.pin_factory.pin(17)
                await asyncio.to_thread(pin.drive_low)
                await asyncio.sleep(0.4)
                assert agent.hw.siren.state().playing
                await asyncio.to_thread(pin.drive_high)
            finally:
                await agent.stop()
        finally:
            Device.pin_factory.close()
            Device.pin_factory = saved

    asyncio.run(scenario())


def test_a_dead_siren_player_is_reported_once_as_siren_fault(tmp_path: Path) -> None:
    """The siren's player thread ending (as it does on a relay error) is a SIREN_FAULT event,
    which central turns into a system incident; reported once, not at every check."""
    async def scenario() -> None:
        agent = Agent(node_config(tmp_path / "state"), simulate=True)
        await agent.start()
        try:
            assert agent.hw is not None and agent.outbox is not None
            assert agent.check_siren() is False  # a healthy siren is not a fault
            await asyncio.to_thread(agent.hw.siren.close)  # the player thread ends
            assert agent.check_siren() is True
            assert agent.check_siren() is False
            outbox = agent.outbox
            by_type = await wait_for(lambda: (t := outbox.counts()["by_type"]) and "SIREN_FAULT" in t and t)
            assert by_type["SIREN_FAULT"]["ready"] + by_type["SIREN_FAULT"]["in_flight"] == 1
        finally:
            await agent.stop()

    asyncio.run(scenario())
