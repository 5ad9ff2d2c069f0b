"""Incident grouping, lifecycle, acknowledgement commands and false-alarm handling."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from central_sync.incidents import IncidentBook, IncidentError, State
from central_sync.store import Store
from central_sync.web.testing import WebEnv, event


@pytest.fixture
def book(any_store: Store) -> tuple[Store, IncidentBook]:
    """Grouping and lifecycle on every store backend."""
    return any_store, IncidentBook(any_store.desk(), group_window_s=600)


def _feed(store: Store, book: IncidentBook, *envs):
    ids, _ = store.insert_events(list(envs), time.time())
    return book.add_events(store.get_events(ids))


def test_grouping_by_post_type_and_window(book: tuple[Store, IncidentBook]) -> None:
    store, b = book
    t0 = 1_800_000_000.0
    changes = _feed(store, b, event("pos-a", "PANIC", at=t0), event("pos-a", "PANIC", at=t0 + 60),
                    event("pos-a", "PANIC", at=t0 + 500))
    assert len(changes) == 1 and changes[0].opened
    first = b.require(changes[0].incident_id)
    assert first.event_count == 3 and first.opened_at == t0 and first.last_event_at == t0 + 500
    # Window counts from the last event: +500+599 still joins, +500+601 does not.
    assert _feed(store, b, event("pos-a", "PANIC", at=t0 + 1099))[0].incident_id == first.incident_id
    later = _feed(store, b, event("pos-a", "PANIC", at=t0 + 1099 + 601))[0]
    assert later.opened and later.incident_id != first.incident_id
    # Another type or another post is another incident.
    other_type = _feed(store, b, event("pos-a", "KEBAKARAN", at=t0 + 10))[0]
    other_post = _feed(store, b, event("pos-b", "PANIC", at=t0 + 10))[0]
    assert len({first.incident_id, other_type.incident_id, other_post.incident_id}) == 3
    # Patrol check-ins and routine system events make no incident; tamper, siren fault, storage
    # quarantine and a dead modem open system incidents (issue 11).
    assert _feed(store, b, event("pos-a", "PATROLI", at=t0), event("pos-a", "BOOT", at=t0),
                 event("pos-a", "SELFTEST", at=t0)) == []
    faults = _feed(store, b, *(event("pos-a", kind, at=t0) for kind in
                               ("TAMPER", "SIREN_FAULT", "STORAGE_QUARANTINED", "MODEM_FAULT")))
    assert len(faults) == 4 and all(c.opened for c in faults)
    assert sorted(b.require(c.incident_id).type for c in faults) == [
        "MODEM_FAULT", "SIREN_FAULT", "STORAGE_QUARANTINED", "TAMPER"]
    # Listing: open first, most urgent (P1) before P2..., newest first within a priority.
    listed = [i.incident_id for i in b.incidents()]
    assert listed.index(later.incident_id) < listed.index(first.incident_id)


def test_duplicates_are_ignored_and_node_incident_id_is_kept(
        book: tuple[Store, IncidentBook]) -> None:
    store, b = book
    env = event("pos-a", "PENCURIAN", incident_id="node-inc-0001")
    ids, _ = store.insert_events([env], time.time())
    rows = store.get_events(ids)
    [change] = b.add_events(rows)
    assert change.incident_id == "node-inc-0001"
    assert b.add_events(rows) == []                      # redelivery after a reconnect
    assert b.require("node-inc-0001").event_count == 1


def test_aman_closes_the_posts_open_incidents(book: tuple[Store, IncidentBook]) -> None:
    store, b = book
    t0 = time.time()
    panic = _feed(store, b, event("pos-a", "PANIC", at=t0))[0].incident_id
    fire = _feed(store, b, event("pos-a", "KEBAKARAN", at=t0))[0].incident_id
    elsewhere = _feed(store, b, event("pos-b", "PANIC", at=t0))[0].incident_id
    changes = _feed(store, b, event("pos-a", "AMAN", at=t0 + 30))
    assert {c.incident_id for c in changes} == {panic, fire} and all(c.closed for c in changes)
    assert b.require(panic).state is State.RESOLVED and b.require(fire).state is State.RESOLVED
    assert b.require(elsewhere).state is State.NEW
    assert b.history(panic)[-1]["actor"] == "post:pos-a"
    # A new PANIC after the all-clear is a new incident.
    assert _feed(store, b, event("pos-a", "PANIC", at=t0 + 40))[0].incident_id != panic


def test_lifecycle_steps_and_illegal_ones(book: tuple[Store, IncidentBook]) -> None:
    store, b = book
    inc = _feed(store, b, event("pos-a", "PANIC"))[0].incident_id
    with pytest.raises(IncidentError):
        b.step(inc, State.RESOLVED, "op", "")            # must be acknowledged first
    b.step(inc, State.ACKNOWLEDGED, "op", "on my way")
    with pytest.raises(IncidentError):
        b.step(inc, State.ACKNOWLEDGED, "op", "again")
    done = b.step(inc, State.RESOLVED, "op2", "pelaku kabur")
    assert done.state is State.RESOLVED and done.closed_at is not None
    with pytest.raises(IncidentError):
        b.step(inc, State.FALSE_ALARM, "op", "")
    assert [(h["step"], h["actor"], h["note"]) for h in b.history(inc)] == [
        ("new", "post:pos-a", "PANIC"), ("acknowledged", "op", "on my way"),
        ("resolved", "op2", "pelaku kabur")]
    with pytest.raises(IncidentError) as err:
        b.step("nope", State.ACKNOWLEDGED, "op", "")
    assert err.value.not_found


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    e = WebEnv(tmp_path / "central.db", {"false_alarm_threshold": 2,
                                          "false_alarm_hold_seconds": 4})
    e.node("pos-a")
    e.user("op", "operator")
    yield e
    e.close()


def test_ack_sends_incident_ack_to_the_post(env: WebEnv) -> None:
    op, csrf = env.client("op")
    inc = env.incident_of(env.events(event("pos-a", "PANIC"))[0])
    h = {"X-CSRF-Token": csrf}
    r = op.post(f"/api/incidents/{inc}/ack", json={"note": "unit 3 dispatched"}, headers=h)
    assert r.status_code == 200 and r.json()["incident"]["state"] == "acknowledged"
    [(cmd, issued_by)] = env.sender.sent
    assert cmd.action == "incident_ack" and cmd.node_id == "pos-a" and issued_by == "op"
    assert cmd.params == {"incident_id": inc, "operator": "op", "note": "unit 3 dispatched"}
    assert cmd.expires_at > cmd.issued_at
    assert op.post(f"/api/incidents/{inc}/ack", json={}, headers=h).status_code == 409
    assert op.post("/api/incidents/none/ack", json={}, headers=h).status_code == 404
    assert op.post(f"/api/incidents/{inc}/resolve", json={"note": "ok"},
                   headers=h).json()["incident"]["state"] == "resolved"
    detail = op.get(f"/api/incidents/{inc}").json()
    assert [h["step"] for h in detail["history"]] == ["new", "acknowledged", "resolved"]


def test_false_alarms_past_threshold_raise_the_panic_hold(env: WebEnv) -> None:
    op, csrf = env.client("op")
    h = {"X-CSRF-Token": csrf}
    t0 = time.time()
    results = []
    for n in range(3):
        inc = env.incident_of(env.events(event("pos-a", "PANIC", at=t0 + n * 3600))[0])
        assert op.post(f"/api/incidents/{inc}/ack", json={}, headers=h).status_code == 200
        results.append(op.post(f"/api/incidents/{inc}/false-alarm", json={"note": "anak-anak"},
                               headers=h).json())
    assert results[0].get("warning") is None
    assert "2 false alarms" in results[1]["warning"]
    configs = env.sender.actions("config")
    assert len(configs) == 1                           # once per window, not on every press
    assert configs[0].node_id == "pos-a" and configs[0].params == {"hold_seconds": 4.0}
    assert results[2]["warning"]
    assert any("false alarms" in w["message"] for w in op.get("/api/warnings").json())
    assert "false alarms" in op.get("/").text


def test_start_up_groups_events_already_in_the_store(tmp_path: Path) -> None:
    first = WebEnv(tmp_path / "central.db")
    first.store.insert_events([event("pos-a", "PANIC"), event("pos-a", "PANIC")], time.time())
    first.close()
    second = WebEnv(tmp_path / "central.db")            # app start-up catches up
    try:
        [inc] = second.ctx.desk.book.incidents()
        assert inc.event_count == 2 and inc.type == "PANIC"
        assert second.sender.sent == []                 # old news is not re-routed
    finally:
        second.close()


def test_another_posts_reuse_of_an_event_id_is_its_own_event(book: tuple[Store, IncidentBook]) -> None:
    """Events and incident membership are keyed per post: a post reusing another post's event id
    neither hides that post's event from the desk nor joins its incident."""
    store, b = book
    mine = event("pos-a", "PANIC")
    theirs = event("pos-b", "PENCURIAN").model_copy(update={"event_id": mine.event_id})
    first = _feed(store, b, theirs)   # the copy arrives first
    second = _feed(store, b, mine)
    assert len(first) == 1 and len(second) == 1 and first[0].incident_id != second[0].incident_id
    assert b.incident_of_event(mine.event_id, "pos-a") == second[0].incident_id
    assert b.incident_of_event(mine.event_id, "pos-b") == first[0].incident_id
    assert b.require(second[0].incident_id).node_id == "pos-a"
