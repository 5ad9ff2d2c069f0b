"""The RW-warning queue (``central_sync/siren_warnings.py``) over a real SQLite store: one warning
per post across incidents of one RW (the others recorded ``merged``), queued warnings of a closed
incident never sent (recorded ``cancelled``), and a shared warning stopped only when the last
incident it serves is closed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from central_sync.incidents import Incident
from central_sync.routing import make_command
from central_sync.siren_control import SirenControl
from central_sync.web.testing import RecordingSender, WebEnv, event
from edge.sync.wire import Command


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    e = WebEnv(tmp_path / "central.db", {"rw_warning_types": []})  # the desk's own queue stays out of it
    for i in range(1, 6):
        e.node(f"pos-{i}", f"33.74.01.1001/5/{i}")
    try:
        yield e
    finally:
        e.close()


def _incident(env: WebEnv, node_id: str) -> Incident:
    found = env.ctx.desk.book.get(env.incident_of(env.events(event(node_id, "PERAMPOKAN"))[0]))
    assert found is not None
    return found


def _warnings(incident: Incident, posts: list[str]) -> list[Command]:
    return [make_command(p, "sound", {"incident_type": incident.type, "reason": "rw_warning",
                                      "incident_id": incident.incident_id}, issuer="central:routing", ttl_s=60)
            for p in posts]


def _control(env: WebEnv) -> tuple[SirenControl, RecordingSender]:
    sender = RecordingSender()
    return SirenControl(env.store.siren_tables(), sender, ttl_s=60), sender


def test_one_warning_per_post_across_incidents_of_an_rw(env: WebEnv) -> None:
    control, sender = _control(env)
    a, b = _incident(env, "pos-1"), _incident(env, "pos-2")
    assert control.queue_incident_warnings(a, _warnings(a, ["pos-2", "pos-3", "pos-4"]))
    assert not control.queue_incident_warnings(b, _warnings(b, ["pos-1", "pos-3", "pos-4"]))  # already publishing
    assert len(control.warnings) == 3 + 1 and control.warnings.merged == 2
    assert asyncio.run(control.publish_warnings()) == 4
    sounds = sender.actions("sound")
    assert sorted(c.node_id for c in sounds) == ["pos-1", "pos-2", "pos-3", "pos-4"]  # one each
    by_post = {c.node_id: c for c in sounds}
    assert by_post["pos-3"].params["incident_id"] == a.incident_id  # the first incident's
    status_b = control.status(f"incident-{b.incident_id}")
    assert status_b is not None and status_b["counts"]["merged"] == 2 and status_b["counts"]["pending"] == 1
    assert {p["node_id"]: p["state"] for p in status_b["posts"]} == {
        "pos-1": "pending", "pos-3": "merged", "pos-4": "merged"}
    assert control.warnings.lag_s >= 0


def test_a_closed_incidents_queued_warnings_are_cancelled_not_sent(env: WebEnv) -> None:
    control, sender = _control(env)
    a, b = _incident(env, "pos-1"), _incident(env, "pos-2")
    control.queue_incident_warnings(a, _warnings(a, ["pos-3", "pos-4"]))
    control.queue_incident_warnings(b, _warnings(b, ["pos-4", "pos-5"]))
    out = asyncio.run(control.stop_incident(a.incident_id, "op"))  # closed before publishing
    assert out["cancelled"] == 1  # pos-3; pos-4's warning still serves b
    assert out[f"incident-{a.incident_id}"]["stops"] == 0  # nothing had gone out: nothing to stop
    asyncio.run(control.publish_warnings())
    assert sorted(c.node_id for c in sender.actions("sound")) == ["pos-4", "pos-5"]
    status_a = control.status(f"incident-{a.incident_id}")
    assert status_a is not None and status_a["counts"]["cancelled"] == 1
    assert {p["node_id"]: p["state"] for p in status_a["posts"]}["pos-3"] == "cancelled"
    assert sender.actions("stop") == []


def test_a_shared_warning_is_stopped_with_the_last_incident_it_serves(env: WebEnv) -> None:
    control, sender = _control(env)
    a, b = _incident(env, "pos-1"), _incident(env, "pos-2")
    control.queue_incident_warnings(a, _warnings(a, ["pos-3", "pos-4"]))
    control.queue_incident_warnings(b, _warnings(b, ["pos-4", "pos-5"]))
    asyncio.run(control.publish_warnings())
    sent = {c.node_id: c.command_id for c in sender.actions("sound")}
    asyncio.run(control.stop_incident(a.incident_id, "op"))
    stops = {c.node_id: c.params["command_ids"] for c in sender.actions("stop")}
    assert stops == {"pos-3": [sent["pos-3"]]}  # pos-4 still warns for b
    sender.sent.clear()
    asyncio.run(control.stop_incident(b.incident_id, "op"))
    stops = {c.node_id: c.params["command_ids"] for c in sender.actions("stop")}
    assert stops == {"pos-4": [sent["pos-4"]], "pos-5": [sent["pos-5"]]}  # a's command, as the post knows it
