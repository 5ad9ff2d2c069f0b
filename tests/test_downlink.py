"""Downlink commands over a real Mosquitto: valid ones run, expired / mis-targeted / duplicate /
badly signed ones are rejected with a CommandResult and a security event; junk is ignored."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_sync import PahoAcker, make_command, node_config, running_service, wait_until

from central_sync.broker import LocalMosquitto
from edge.clock import Clock
from edge.errors import SecurityError
from edge.outbox import Outbox
from edge.sync.service import SyncService
from edge.sync.wire import Command

NODE = "pos-rt03"


class Handler:
    def __init__(self) -> None:
        self.handled: list[Command] = []

    async def handle(self, cmd: Command) -> tuple[bool, str, dict[str, Any]]:
        self.handled.append(cmd)
        if cmd.action == "test":
            raise RuntimeError("siren relay stuck")
        return True, "done", {"action": cmd.action}


def _verify(cmd: Command) -> None:
    if cmd.issuer == "forger":
        raise SecurityError("bad_signature", "signature does not verify")


@pytest.fixture
def node(tmp_path: Path, mosquitto: LocalMosquitto) -> Iterator[tuple[SyncService, Handler,
                                                                      PahoAcker, list[Any]]]:
    ob = Outbox(tmp_path / "outbox.db", NODE, clock=Clock(forced_quality="synced"))
    handler = Handler()
    security: list[Any] = []
    svc = SyncService(node_config(mosquitto.port, NODE), ob, snapshots=None, clock=ob.clock,
                      status_provider=lambda: {}, command_handler=handler,
                      verify_command=_verify,
                      security_event=lambda kind, info: security.append((kind, info)))
    acker = PahoAcker(mosquitto.port)
    with running_service(svc):
        wait_until(lambda: svc.connected, 10, what="node connected")
        yield svc, handler, acker, security
    acker.close()
    ob.close()


def _result(acker: PahoAcker, command_id: str, timeout: float = 10) -> dict[str, Any]:
    wait_until(lambda: any(r["command_id"] == command_id for r in acker.results), timeout,
               what=f"result for {command_id}")
    return next(r for r in acker.results if r["command_id"] == command_id)


def test_valid_command_is_handled(node: Any) -> None:
    _svc, handler, acker, security = node
    cmd = make_command(NODE, "status")
    acker.send_command(cmd)
    r = _result(acker, cmd.command_id)
    assert r["ok"] is True and r["detail"] == "done" and r["data"] == {"action": "status"}
    assert r["node_id"] == NODE
    assert [c.command_id for c in handler.handled] == [cmd.command_id]
    assert security == []


def test_expired_command_rejected(node: Any) -> None:
    _svc, handler, acker, security = node
    cmd = make_command(NODE, "sound", ttl=60, issued_at=time.time() - 600)
    acker.send_command(cmd)
    r = _result(acker, cmd.command_id)
    assert r["ok"] is False and r["detail"] == "expired"
    assert handler.handled == []
    assert security and security[0][0] == "command_rejected"
    assert security[0][1]["reason"] == "expired"


def test_mis_targeted_command_rejected(node: Any) -> None:
    _svc, handler, acker, security = node
    cmd = make_command("pos-rt04", "sound")
    acker.send_command(cmd, topic_node=NODE)  # on our topic, addressed to another node
    r = _result(acker, cmd.command_id)
    assert r["ok"] is False and r["detail"] == "wrong_node"
    assert handler.handled == []
    assert security[0][1]["target"] == "pos-rt04"


def test_duplicate_command_rejected_and_handled_once(node: Any) -> None:
    _svc, handler, acker, _security = node
    cmd = make_command(NODE, "stop")
    acker.send_command(cmd)
    _result(acker, cmd.command_id)
    acker.send_command(cmd)
    wait_until(lambda: sum(r["command_id"] == cmd.command_id for r in acker.results) == 2, 10,
               what="second result")
    results = [r for r in acker.results if r["command_id"] == cmd.command_id]
    assert [r["ok"] for r in results] == [True, False]
    assert results[1]["detail"] == "duplicate"
    assert len(handler.handled) == 1


def test_bad_signature_rejected_and_does_not_burn_the_id(node: Any) -> None:
    _svc, handler, acker, security = node
    forged = make_command(NODE, "sound", command_id="cmd-shared-id").model_copy(
        update={"issuer": "forger"})
    acker.send_command(forged)
    r = _result(acker, "cmd-shared-id")
    assert r["ok"] is False and r["detail"] == "bad_signature"
    assert handler.handled == []
    assert security[0][1]["reason"] == "bad_signature"
    genuine = make_command(NODE, "sound", command_id="cmd-shared-id")
    acker.send_command(genuine)
    wait_until(lambda: len(handler.handled) == 1, 10, what="genuine command handled")


def test_handler_error_and_malformed_payloads_do_not_crash(node: Any) -> None:
    svc, _handler, acker, _security = node
    for junk in (b"not json", b"[]", b'{"v": 9, "kind": "command"}', b'{"v":1,"kind":"ack"}'):
        acker.send_raw(NODE, junk)
    failing = make_command(NODE, "test")
    acker.send_command(failing)
    r = _result(acker, failing.command_id)
    assert r["ok"] is False and "siren relay stuck" in r["detail"]
    ok = make_command(NODE, "status")
    acker.send_command(ok)
    assert _result(acker, ok.command_id)["ok"] is True
    assert svc.commands.malformed == 4
    assert svc.connected
