"""The post's targeted ``stop``: it ends only what the named ``sound`` commands started, a local
alarm that took over the siren keeps sounding, and a ``sound`` arriving after its stop is refused.
Real SirenPlayer on gpiozero MockFactory pins, real AlarmEngine and Outbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from edge.alarm import AlarmEngine
from edge.clock import Clock
from edge.commands import NodeCommands
from edge.config import NodeConfig, parse_config
from edge.drivers.siren import SirenPlayer, Trigger
from edge.incidents import IncidentType
from edge.outbox import Outbox
from edge.sync.wire import Command

NODE = "pos-stop-01"
RELAY = 18


def _cfg(state: Path) -> NodeConfig:
    return parse_config({
        "node": {"node_id": NODE, "kelurahan_code": "33.74.10.1001", "rw": 5, "rt": 3,
                 "display_name": "Pos Uji Sirene"},
        "siren": {"pin": RELAY, "quiet_hours": {"enabled": False}},
        "storage": {"state_dir": str(state)},
        "sync": {"enabled": False},
    })


@pytest.fixture
def post(tmp_path: Path, pin_factory: MockFactory) -> Iterator[tuple[NodeCommands, SirenPlayer]]:
    cfg = _cfg(tmp_path / "state")
    siren = SirenPlayer(cfg.siren, pin_factory=pin_factory)
    outbox = Outbox(tmp_path / "outbox.db", NODE, clock=Clock())
    engine = AlarmEngine(cfg, siren, outbox)
    cmds = NodeCommands(engine, {}, take_snapshot=_no_snapshot, status=dict)
    try:
        yield cmds, siren
    finally:
        siren.close()
        outbox.close()


async def _no_snapshot(_event_id: str | None, _priority: int) -> int:
    return 0


def _cmd(action: str, params: dict[str, Any], command_id: str) -> Command:
    now = time.time()
    return Command(command_id=command_id, node_id=NODE, action=action, params=params,
                   issued_at=now, expires_at=now + 60, issuer="central:test")


def _run(cmds: NodeCommands, cmd: Command) -> tuple[bool, str, dict[str, Any]]:
    return asyncio.run(cmds.handle(cmd))


def _warning(command_id: str) -> Command:
    return _cmd("sound", {"incident_type": "PANIC", "pattern": "2-2-2", "reason": "rw_warning"},
                command_id)


def test_targeted_stop_ends_the_warning_it_names(post: tuple[NodeCommands, SirenPlayer],
                                                 pin_factory: MockFactory) -> None:
    cmds, siren = post
    assert _run(cmds, _warning("warn-0001"))[:2] == (True, "sounding")
    assert siren.state().playing and pin_factory.pin(RELAY).state == 1
    ok, detail, data = _run(cmds, _cmd("stop", {"command_ids": ["warn-0001"]}, "stop-0001"))
    assert (ok, detail, data) == (True, "stopped", {"stopped": True})
    state = siren.state()
    assert not state.playing and not state.relay_on and pin_factory.pin(RELAY).state == 0
    assert state.last_end_reason == "command"
    # The relay really switched: on for the warning, off at the stop.
    levels = [s.state for s in pin_factory.pin(RELAY).states]
    assert 1 in levels and levels[-1] == 0


def test_targeted_stop_leaves_a_local_alarm_sounding(post: tuple[NodeCommands, SirenPlayer],
                                                     pin_factory: MockFactory) -> None:
    cmds, siren = post
    _run(cmds, _warning("warn-0002"))
    # A panic button at this post takes the siren over (P1, pre-empts the warning).
    local = cmds.engine.sound(IncidentType.PANIC, Trigger("button", "panic", "PANIC"))
    assert local.suppressed is None
    ok, detail, data = _run(cmds, _cmd("stop", {"command_ids": ["warn-0002"]}, "stop-0002"))
    assert ok and detail == "was not playing" and data == {"stopped": False}
    state = siren.state()
    assert state.playing and state.activation_id == local.activation_id


def test_sound_arriving_after_its_stop_is_refused(post: tuple[NodeCommands, SirenPlayer],
                                                  pin_factory: MockFactory) -> None:
    cmds, siren = post
    assert _run(cmds, _cmd("stop", {"command_ids": ["warn-late"]}, "stop-0003"))[:2] == (
        True, "was not playing")
    ok, detail, _data = _run(cmds, _warning("warn-late"))
    assert (ok, detail) == (False, "cancelled")
    assert not siren.state().playing and pin_factory.pin(RELAY).state == 0


@pytest.mark.parametrize("ids", [[], "warn-0001", [1, 2], ["x" * 65], [f"w{i}" for i in range(65)]])
def test_bad_command_ids_are_refused_clearly(post: tuple[NodeCommands, SirenPlayer], ids: Any) -> None:
    cmds, siren = post
    _run(cmds, _warning("warn-0004"))
    ok, detail, _data = _run(cmds, _cmd("stop", {"command_ids": ids}, "stop-bad"))
    assert not ok and "command_ids" in detail
    assert siren.state().playing


def test_plain_stop_still_stops_anything(post: tuple[NodeCommands, SirenPlayer]) -> None:
    cmds, siren = post
    cmds.engine.sound(IncidentType.PANIC, Trigger("button", "panic", "PANIC"))
    assert _run(cmds, _cmd("stop", {}, "stop-all"))[:2] == (True, "stopped")
    assert not siren.state().playing
