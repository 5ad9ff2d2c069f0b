"""Siren activations in the store, on SQLite and PostgreSQL alike: a group's commands recorded in
one call, command results (in one batch) joined to them, incremental reads, stop marking."""

from __future__ import annotations

import time

from central_sync.routing import make_command
from central_sync.store import Store
from edge.sync.wire import CommandResult


def test_activation_commands_and_results(any_store: Store) -> None:
    t = any_store.siren_tables()
    assert t.add_activation("group-1", kind="group", scope="rw:33.74/5", label="rw:33.74/5",
                            incident_id=None, created_by="op", created_at=100.0)
    assert not t.add_activation("group-1", kind="group", scope="x", label="x", incident_id=None,
                                created_by="other", created_at=200.0)
    cmds = [make_command(f"pos-{i:03d}", "sound", {"incident_type": "BENCANA"}, issuer="web:op")
            for i in range(250)]
    t.add_commands("group-1", "start", cmds, issued_by="op")
    t.add_commands("group-1", "start", cmds[:3], issued_by="op")  # again: no duplicates
    assert t.counts("group-1") == {"sent": 250}
    assert len(any_store.list_commands("pos-007")) == 1
    before = time.time()
    any_store.record_command_results(
        [CommandResult(command_id=c.command_id, node_id=c.node_id, ok=i % 10 != 0,
                       detail="sounding" if i % 10 else "busy", at=1.0)
         for i, c in enumerate(cmds[:100])]
        + [CommandResult(command_id="never-sent-0001", node_id="pos-999", ok=True, at=1.0)],
        before + 1)
    assert t.counts("group-1") == {"ok": 90, "failed": 10, "sent": 150}
    rows = t.posts("group-1")
    assert len(rows) == 250 and rows[0]["node_id"] == "pos-000" and rows[0]["ok"] is False
    assert rows[1]["status"] == "ok" and rows[1]["detail"] == "sounding"
    assert len(t.posts("group-1", answered_after=before)) == 100
    assert t.posts("group-1", answered_after=before + 2) == []
    assert t.started("group-1")["pos-001"] == [cmds[1].command_id]
    assert t.mark_stopped("group-1", "op", 300.0) and not t.mark_stopped("group-1", "op", 301.0)
    row = t.get("group-1")
    assert row is not None and row["stopped_at"] == 300.0 and row["created_by"] == "op"


def test_incident_warnings_are_found_by_incident(any_store: Store) -> None:
    t = any_store.siren_tables()
    t.add_activation("incident-i1", kind="incident", scope="incident:i1", label="PANIC pos-a",
                     incident_id="i1", created_by="central:routing", created_at=1.0)
    cmd = make_command("pos-b", "sound", {}, issuer="central:routing")
    t.add_commands("incident-i1", "start", [cmd], issued_by="central:routing", link_only=True)
    # Linked, not recorded: the publisher records the command row itself.
    assert t.started("incident-i1") == {"pos-b": [cmd.command_id]}
    assert t.counts("incident-i1") == {}
    any_store.record_command(cmd, issued_by="central:routing")
    assert t.counts("incident-i1") == {"sent": 1}
    assert [r["activation_id"] for r in t.of_incident("i1")] == ["incident-i1"]
    assert t.of_incident("i2") == [] and [r["activation_id"] for r in t.recent(5)] == ["incident-i1"]
