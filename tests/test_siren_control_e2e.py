"""Siren control end to end: real posts (agents on gpiozero MockFactory pins, relay pin history
asserted), real Mosquitto, real central (ingest + web app over HTTP).

* resolving an incident stops the RW warning central sounded at the neighbour, and only that
  (the neighbour in another RW never sounded; the origin's own alarm is not central's to stop);
* a group activation of an RW sounds exactly its posts, each post's confirmation shows on the
  activation API, and stopping the group stops them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from helpers_sirens import Central, Keys, Posts, post_config, wait_for

from central_sync.broker import LocalMosquitto


@pytest.fixture
def world(tmp_path: Path, mosquitto: LocalMosquitto) -> Iterator[tuple[Central, Posts]]:
    keys = Keys(tmp_path / "keys")
    central = Central(tmp_path, mosquitto, keys)
    posts = Posts()
    try:
        for node_id, rw, rt in (("pos-asal", 5, 3), ("pos-tetangga", 5, 4), ("pos-jauh", 6, 1)):
            posts.start(post_config(tmp_path / node_id, mosquitto.port, node_id, rw, rt, keys), central)
        http, _h = central.login("op")
        wait_for(lambda: {n["node_id"] for n in http.get("/api/nodes").json() if n.get("rw")}
                 >= {"pos-asal", "pos-tetangga", "pos-jauh"}, 60, "three posts known at central")
        http.close()
        yield central, posts
    finally:
        posts.close()
        central.close()
    assert central.error is None, central.error


def _playing(posts: Posts, node_id: str) -> bool:
    hw = posts.agents[node_id].hw
    return hw is not None and hw.siren.state().playing


def test_resolve_stops_the_neighbours_warning(world: tuple[Central, Posts]) -> None:
    central, posts = world
    http, csrf = central.login("op")
    origin = posts.agents["pos-asal"]
    assert origin.hw is not None and origin.hw.simulated is not None
    origin.hw.simulated.press("panic", 0.3)
    incident = wait_for(lambda: next((i for i in http.get("/api/incidents").json()
                                      if i["node_id"] == "pos-asal" and i["type"] == "PANIC"), None),
                        60, "the PANIC incident at the desk")
    # Central warned the other post of RW 5; its relay is really switching.
    wait_for(lambda: _playing(posts, "pos-tetangga"), 60, "the neighbour's warning siren")
    neighbour = posts.agents["pos-tetangga"].hw
    assert neighbour is not None and neighbour.siren.state().trigger is not None
    assert neighbour.siren.state().trigger.source == "command"
    assert 1 in [s.state for s in posts.relay("pos-tetangga").states]
    assert not _playing(posts, "pos-jauh")  # another RW: never warned

    inc_id = incident["incident_id"]
    assert http.post(f"/api/incidents/{inc_id}/ack", json={"note": ""}, headers=csrf).status_code == 200
    t0 = time.monotonic()
    r = http.post(f"/api/incidents/{inc_id}/resolve", json={"note": "patrol checked"}, headers=csrf)
    assert r.status_code == 200, r.text
    assert r.json()["sirens"] == {f"incident-{inc_id}": {"activation_id": f"incident-{inc_id}", "stops": 1}}
    wait_for(lambda: not _playing(posts, "pos-tetangga"), 30, "the neighbour's siren stopped")
    stopped_after = time.monotonic() - t0
    state = neighbour.siren.state()
    assert state.last_end_reason == "command" and not state.relay_on
    assert posts.relay("pos-tetangga").states[-1].state == 0
    # The stop command's answer is stored at central like any command result.
    act = wait_for(lambda: (a := http.get(f"/api/sirens/activations/incident-{inc_id}").json())
                   and a["stops"]["confirmed"] == 1 and a, 30, "the stop confirmed")
    assert act["counts"] == {"confirmed": 1, "failed": 0, "pending": 0, "merged": 0, "cancelled": 0, "total": 1}
    assert [p["node_id"] for p in act["posts"]] == ["pos-tetangga"]
    print(f"neighbour siren stopped {stopped_after:.2f} s after the resolve")


def test_group_activation_confirms_each_post_and_stops(world: tuple[Central, Posts]) -> None:
    central, posts = world
    http, csrf = central.login("op")
    r = http.post("/api/sirens/groups", headers=csrf, json={
        "scope": "rw", "kelurahan_code": "33.74.10.1001", "rw": 5, "incident_type": "BENCANA"})
    assert r.status_code == 200, r.text
    act_id = r.json()["activation_id"]
    assert r.json()["posts"] == 2
    status = wait_for(lambda: (s := http.get(f"/api/sirens/activations/{act_id}").json())
                      and s["counts"]["confirmed"] == 2 and s, 60, "both sirens confirmed")
    assert {p["node_id"]: p["state"] for p in status["posts"]} == {
        "pos-asal": "confirmed", "pos-tetangga": "confirmed"}
    assert _playing(posts, "pos-asal") and _playing(posts, "pos-tetangga")
    assert not _playing(posts, "pos-jauh")
    # Only answers received after a time: what the page polls with.
    later = http.get(f"/api/sirens/activations/{act_id}",
                     params={"answered_after": status["now"] + 1}).json()
    assert later["posts"] == [] and later["counts"]["confirmed"] == 2

    r = http.post(f"/api/sirens/activations/{act_id}/stop", headers=csrf)
    assert r.status_code == 200 and r.json()["stops"] == 2
    wait_for(lambda: not _playing(posts, "pos-asal") and not _playing(posts, "pos-tetangga"), 30,
             "the group's sirens stopped")
    for node_id in ("pos-asal", "pos-tetangga"):
        assert posts.relay(node_id).states[-1].state == 0
    wait_for(lambda: http.get(f"/api/sirens/activations/{act_id}").json()["stops"]["confirmed"] == 2,
             30, "both stops confirmed")
    # Audit log: who started and stopped what.
    boss, _h = central.login("boss")
    actions = [(row["action"], row["actor"]) for row in central.store.audit_tables().recent(20)]
    assert ("siren_group_start", "op") in actions and ("siren_group_stop", "op") in actions
    boss.close()
    # The activation page renders with the counts.
    page = http.get(f"/sirens/{act_id}")
    assert page.status_code == 200 and 'id="n-confirmed">2<' in page.text


def test_siren_self_tests_reach_the_post_page(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    """Each post runs its silent test from its own config; a pass and a fault (a feedback
    contact that never follows the relay's pulse) arrive at central and show on /posts."""
    keys = Keys(tmp_path / "keys")
    central = Central(tmp_path, mosquitto, keys)
    posts = Posts()
    try:
        def soon() -> str:  # a few seconds after the post has started (its schedule is set then)
            return (datetime.now() + timedelta(seconds=8)).time().replace(microsecond=0).isoformat()

        posts.start(post_config(tmp_path / "baik", mosquitto.port, "pos-baik", 7, 1, keys,
                                self_test={"silent_at": soon()}), central)
        posts.start(post_config(tmp_path / "rusak", mosquitto.port, "pos-rusak", 7, 2, keys,
                                self_test={"silent_at": soon(), "feedback_pin": 22, "pulse_ms": 20}), central)
        passed = wait_for(lambda: central.store.last_event_times("SIREN_TEST").get("pos-baik"), 60,
                          "the good post's SIREN_TEST at central")
        faults = wait_for(lambda: (f := central.store.last_event_times("SIREN_FAULT")).get("pos-rusak") and f,
                          60, "the faulty post's SIREN_FAULT at central")
        assert "pos-baik" not in faults and passed > 0
        [fault] = [e for e in central.store.list_events(node_id="pos-rusak", limit=1000)
                   if e["type"] == "SIREN_FAULT"]
        assert fault["payload"]["test"] == "silent" and "feedback_follows_pulse" in fault["payload"]["detail"]
        # The faulty post's relay was really pulsed (and released).
        assert [s.state for s in posts.relay("pos-rusak").states][-2:] == [1, 0]
        http, _h = central.login("op")
        page = http.get("/posts", params={"lang": "en"}).text
        row = page[page.index('data-node-id="pos-rusak"'):]
        assert "siren-fault" in row[:row.index("</tr>")]
        good = page[page.index('data-node-id="pos-baik"'):]
        assert "siren-fault" not in good[:good.index("</tr>")]
    finally:
        posts.close()
        central.close()
    assert central.error is None, central.error
