"""Siren control at the desk, over the real app and store (SQLite), with the command boundary
recorded: who may sound which group, the city-wide confirmation, the audit log, and the stops
sent on resolve / false alarm naming exactly the warnings central sent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from central_sync.web.testing import WebEnv, event
from edge.sync.wire import CommandResult


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    e = WebEnv(tmp_path / "central.db")
    for name, role, rts in (("op", "operator", ()), ("root", "admin", ()),
                            ("rt1", "rt_admin", ("33.74.01.1001/5/3",))):
        e.user(name, role, rts)
    e.node("pos-a", "33.74.01.1001/5/3")
    e.node("pos-b", "33.74.01.1001/5/4")
    e.node("pos-c", "33.74.01.1001/6/1")
    e.node("pos-d", "33.74.02.2002/1/1")
    try:
        yield e
    finally:
        e.close()


def _wait_sent(env: WebEnv, n: int) -> None:
    deadline = time.monotonic() + 30
    while len(env.sender.sent) < n and time.monotonic() < deadline:
        time.sleep(0.02)


def test_group_scopes_roles_and_city_confirmation(env: WebEnv) -> None:
    op, op_csrf = env.client("op")
    root, root_csrf = env.client("root")
    rt, rt_csrf = env.client("rt1")
    h_op, h_root, h_rt = ({"X-CSRF-Token": t} for t in (op_csrf, root_csrf, rt_csrf))
    body = {"scope": "kelurahan", "kelurahan_code": "33.74.01.1001"}
    assert rt.post("/api/sirens/groups", headers=h_rt, json=body).status_code == 403
    assert op.post("/api/sirens/groups", json=body).status_code == 403  # no CSRF token
    r = op.post("/api/sirens/groups", headers=h_op, json=body)
    assert r.status_code == 200 and r.json()["posts"] == 3
    assert sorted(c.node_id for c in env.sender.actions("sound")) == ["pos-a", "pos-b", "pos-c"]
    assert {c.params["incident_type"] for c in env.sender.actions("sound")} == {"BENCANA"}
    # Narrower scopes.
    env.sender.sent.clear()
    r = op.post("/api/sirens/groups", headers=h_op, json={
        "scope": "rt", "kelurahan_code": "33.74.01.1001", "rw": 5, "rt": 4, "incident_type": "KEBAKARAN"})
    assert r.json()["posts"] == 1 and [c.node_id for c in env.sender.actions()] == ["pos-b"]
    assert op.post("/api/sirens/groups", headers=h_op,
                   json={"scope": "rw", "kelurahan_code": "33.74.01.1001"}).status_code == 422
    assert op.post("/api/sirens/groups", headers=h_op, json={
        "scope": "rw", "kelurahan_code": "99.99.99.9999", "rw": 1}).status_code == 409
    # The whole city: admins only, and only once confirmed.
    env.sender.sent.clear()
    assert op.post("/api/sirens/groups", headers=h_op,
                   json={"scope": "city", "confirm": True}).status_code == 403
    assert root.post("/api/sirens/groups", headers=h_root, json={"scope": "city"}).status_code == 409
    assert env.sender.sent == []
    r = root.post("/api/sirens/groups", headers=h_root, json={"scope": "city", "confirm": True})
    assert r.status_code == 200 and r.json()["posts"] == 4
    act_id = r.json()["activation_id"]
    # Recorded before publishing: every post pending, then confirmed as results arrive.
    status = op.get(f"/api/sirens/activations/{act_id}").json()
    assert status["counts"] == {"confirmed": 0, "failed": 0, "pending": 4, "merged": 0, "cancelled": 0, "total": 4}
    cmds = {c.node_id: c for c in env.sender.actions("sound")}
    env.store.record_command_results([
        CommandResult(command_id=cmds["pos-a"].command_id, node_id="pos-a", ok=True, detail="sounding", at=1.0),
        CommandResult(command_id=cmds["pos-b"].command_id, node_id="pos-b", ok=False, detail="busy", at=1.0),
        # A post answering for another post's command changes nothing.
        CommandResult(command_id=cmds["pos-c"].command_id, node_id="pos-d", ok=True, detail="x", at=1.0),
    ], time.time())
    status = op.get(f"/api/sirens/activations/{act_id}").json()
    assert status["counts"] == {"confirmed": 1, "failed": 1, "pending": 2, "merged": 0, "cancelled": 0, "total": 4}
    assert {p["node_id"]: p["state"] for p in status["posts"]} == {
        "pos-a": "confirmed", "pos-b": "failed", "pos-c": "pending", "pos-d": "pending"}
    # Stop the group: one targeted stop per post, naming its sound command.
    env.sender.sent.clear()
    assert rt.post(f"/api/sirens/activations/{act_id}/stop", headers=h_rt).status_code == 403
    r = op.post(f"/api/sirens/activations/{act_id}/stop", headers=h_op)
    assert r.status_code == 200 and r.json()["stops"] == 4
    stops = {c.node_id: c.params["command_ids"] for c in env.sender.actions("stop")}
    assert stops == {n: [c.command_id] for n, c in cmds.items()}
    assert op.post("/api/sirens/activations/group-nope/stop", headers=h_op).status_code == 404
    # Audit log.
    rows = [(r["actor"], r["action"], r["target"]) for r in env.ctx.audit.recent(50)]
    assert ("root", "siren_group_start", "city") in rows
    assert ("op", "siren_group_start", "kelurahan:33.74.01.1001") in rows
    assert ("op", "siren_group_stop", act_id) in rows
    # Pages.
    assert op.get("/sirens").status_code == 200
    assert rt.get("/sirens").status_code == 403
    assert op.get(f"/sirens/{act_id}").status_code == 200


@pytest.mark.parametrize("step", ["resolve", "false-alarm"])
def test_closing_an_incident_stops_its_warnings(env: WebEnv, step: str) -> None:
    op, csrf = env.client("op")
    h = {"X-CSRF-Token": csrf}
    [event_id] = env.events(event("pos-a", "PERAMPOKAN"))
    _wait_sent(env, 1)
    [warning] = env.sender.actions("sound")
    assert warning.node_id == "pos-b"
    inc_id = env.incident_of(event_id)
    assert op.post(f"/api/incidents/{inc_id}/ack", headers=h, json={}).status_code == 200
    env.sender.sent.clear()
    r = op.post(f"/api/incidents/{inc_id}/{step}", headers=h, json={"note": ""})
    assert r.status_code == 200, r.text
    [stop] = env.sender.actions("stop")
    assert stop.node_id == "pos-b" and stop.params["command_ids"] == [warning.command_id]
    act = env.ctx.desk.sirens.status(f"incident-{inc_id}")
    assert act is not None and act["stopped_by"] == "op" and act["incident_id"] == inc_id


def test_an_incident_without_warnings_sends_no_stop(env: WebEnv) -> None:
    op, csrf = env.client("op")
    h = {"X-CSRF-Token": csrf}
    [event_id] = env.events(event("pos-c", "PANIC"))  # alone in its RW
    inc_id = env.incident_of(event_id)
    op.post(f"/api/incidents/{inc_id}/ack", headers=h, json={})
    env.sender.sent.clear()
    r = op.post(f"/api/incidents/{inc_id}/resolve", headers=h, json={})
    assert r.status_code == 200 and r.json()["sirens"] == {}
    assert env.sender.actions("stop") == []


def test_an_unanswered_command_past_its_expiry_reads_no_answer(env: WebEnv) -> None:
    op, csrf = env.client("op")
    r = op.post("/api/sirens/groups", headers={"X-CSRF-Token": csrf},
                json={"scope": "rt", "kelurahan_code": "33.74.01.1001", "rw": 6, "rt": 1})
    act_id = r.json()["activation_id"]
    [cmd] = env.sender.actions("sound")
    with env.store.connection() as conn:  # the command expired an hour ago, unanswered
        conn.execute("UPDATE commands SET expires_at = ? WHERE command_id = ?", (time.time() - 3600, cmd.command_id))
    status = op.get(f"/api/sirens/activations/{act_id}").json()
    assert [(p["node_id"], p["state"], p["post_name"]) for p in status["posts"]] == [
        ("pos-c", "no_answer", "Pos pos-c")]
    assert status["counts"]["pending"] == 1  # still counted as not confirmed
    page = op.get(f"/sirens/{act_id}", params={"lang": "en"}).text
    assert "no answer (expired)" in page and "RT 1 / RW 6" in page


def test_a_group_sounded_for_an_incident_stops_when_it_is_resolved(env: WebEnv) -> None:
    op, csrf = env.client("op")
    h = {"X-CSRF-Token": csrf}
    [event_id] = env.events(event("pos-c", "KEBAKARAN"))
    inc_id = env.incident_of(event_id)
    assert op.post("/api/sirens/groups", headers=h, json={
        "scope": "kelurahan", "kelurahan_code": "33.74.01.1001", "incident_id": "no-such"}).status_code == 404
    r = op.post("/api/sirens/groups", headers=h, json={
        "scope": "kelurahan", "kelurahan_code": "33.74.01.1001", "incident_id": inc_id})
    assert r.status_code == 200
    sounds = {c.node_id: c.command_id for c in env.sender.actions("sound") if c.params.get("reason") == "group"}
    assert sorted(sounds) == ["pos-a", "pos-b", "pos-c"]
    op.post(f"/api/incidents/{inc_id}/ack", headers=h, json={})
    env.sender.sent.clear()
    r = op.post(f"/api/incidents/{inc_id}/resolve", headers=h, json={})
    group_id = next(a for a in env.ctx.desk.sirens.recent() if a["kind"] == "group")["activation_id"]
    assert r.json()["sirens"][group_id]["stops"] == 3
    stops = {c.node_id: c.params["command_ids"] for c in env.sender.actions("stop")}
    for node_id, command_id in sounds.items():
        assert command_id in stops[node_id]
    assert op.post("/api/sirens/groups", headers=h, json={
        "scope": "kelurahan", "kelurahan_code": "33.74.01.1001", "incident_id": inc_id}).status_code == 409


def test_rw_warnings_go_out_as_one_recorded_batch(env: WebEnv) -> None:
    """A new incident's RW warnings are queued and published together (signed off the loop,
    recorded in one transaction), each recorded as sent and linked to the incident."""
    for rt in range(5, 9):
        env.node(f"pos-rw{rt}", f"33.74.01.1001/5/{rt}")
    [event_id] = env.events(event("pos-a", "PERAMPOKAN"))
    _wait_sent(env, 5)
    warnings = env.sender.actions("sound")
    assert sorted(c.node_id for c in warnings) == ["pos-b", "pos-rw5", "pos-rw6", "pos-rw7", "pos-rw8"]
    assert {issued for c, issued in env.sender.sent} == {"batch"}
    inc_id = env.incident_of(event_id)
    act = env.ctx.desk.sirens.status(f"incident-{inc_id}")
    assert act is not None and act["counts"] == {"confirmed": 0, "failed": 0, "pending": 5, "merged": 0,
                                                 "cancelled": 0, "total": 5}
