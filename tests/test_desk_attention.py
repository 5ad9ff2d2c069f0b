"""The P1 banner's body kept change by change (``web/attention.py``) and the stream's incident
event carrying its queue row (``routes_live``): the same answers as building them afresh, never
behind a change the page was told about, and the ETag the page revalidates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from central_sync.web.attention import AttentionView
from central_sync.web.auth import Principal
from central_sync.web.live import LiveChange
from central_sync.web.routes_live import ChangeResolver, incident_event
from central_sync.web.testing import WebEnv, event


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[WebEnv]:
    e = WebEnv(tmp_path / "central.db")
    e.user("op", "admin")
    e.user("rt", "rt_admin", ("33.74.01.1001/5/3",))
    e.node("pos-a")
    e.node("pos-b", "33.74.01.1001/6/1")
    e.node("pos-c", "33.74.01.1001/5/3")
    yield e
    e.close()


def _who(env: WebEnv, name: str) -> Principal:
    user = env.ctx.users.get(name)
    assert user is not None
    return Principal(user, "csrf", "test")


def _fresh(env: WebEnv, name: str) -> bytes:
    """The banner built from the store alone, as a new web process would."""
    return AttentionView().get(env.ctx, _who(env, name)).body


def test_banner_follows_changes_incrementally_and_matches_a_full_build(env: WebEnv) -> None:
    client, csrf = env.client("op")
    assert client.get("/fragments/attention").json() == []
    view = env.ctx.attention
    rebuilds = view.rebuilds
    a = env.incident_of(env.events(event("pos-a", "PANIC"))[0])
    env.events(event("pos-c", "LAKA_LANTAS"))  # P2: never on the banner
    b = env.incident_of(env.events(event("pos-b", "PANIC"))[0])
    r = client.get("/fragments/attention")
    assert r.status_code == 200
    got = r.json()
    assert [i["incident_id"] for i in got] == [a, b]  # oldest first
    assert got[0]["post_name"] == "Pos pos-a" and got[0]["rw"] == 5 and got[0]["type_name"]
    assert view.rebuilds == rebuilds and view.updates >= 1  # applied the changes, no rebuild
    assert r.content == _fresh(env, "op")
    # Acknowledged: off the banner at once (the change is applied before answering).
    assert client.post(f"/api/incidents/{a}/ack", json={"note": ""},
                       headers={"X-CSRF-Token": csrf}).status_code == 200
    r = client.get("/fragments/attention")
    assert [i["incident_id"] for i in r.json()] == [b]
    assert r.content == _fresh(env, "op")
    # Another event joining the open P1 changes the incident but not the banner's words.
    env.events(event("pos-b", "PANIC"))
    assert client.get("/fragments/attention").content == r.content


def test_banner_etag_gives_304_until_it_changes(env: WebEnv) -> None:
    client, _csrf = env.client("op")
    env.events(event("pos-a", "PANIC"))
    r = client.get("/fragments/attention")
    etag = r.headers["etag"]
    assert "no-cache" in r.headers["cache-control"]
    again = client.get("/fragments/attention", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    env.events(event("pos-a", "PANIC"))  # joins: same banner, same ETag
    assert client.get("/fragments/attention", headers={"If-None-Match": etag}).status_code == 304
    env.events(event("pos-c", "PANIC"))  # a new P1: a new body
    changed = client.get("/fragments/attention", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag
    assert len(changed.json()) == 2


def test_banner_rebuilds_when_the_ring_no_longer_reaches_back_and_keeps_scopes_apart(env: WebEnv) -> None:
    op, _ = env.client("op")
    rt, _ = env.client("rt")
    env.events(event("pos-a", "KEBAKARAN"))
    assert len(op.get("/fragments/attention").json()) == 1
    view = env.ctx.attention
    rebuilds = view.rebuilds
    # More changes than the hub keeps (a web process that was busy elsewhere): rebuilt, exact.
    ring = env.ctx.hub._ring
    for i in range(ring.maxlen or 0):
        env.ctx.hub.publish(f"inc-none-{i}", seq=env.ctx.hub.head + 1)
    env.events(event("pos-b", "KEBAKARAN"))
    body = op.get("/fragments/attention")
    assert view.rebuilds == rebuilds + 1 and len(body.json()) == 2
    assert body.content == _fresh(env, "op")
    # The RT admin of RW 5 RT 3 sees pos-a's and pos-c's fires, never RW 6's (nor crimes).
    env.events(event("pos-c", "KEBAKARAN"))
    env.node("pos-d", "33.74.01.1001/5/3")  # a new post: its labels rebuild the banner too
    env.events(event("pos-d", "PERAMPOKAN"))
    seen = {i["incident_id"] for i in rt.get("/fragments/attention").json()}
    assert seen == {i["incident_id"] for i in json.loads(_fresh(env, "rt"))}
    assert len(seen) == 2 and len(op.get("/fragments/attention").json()) == 4


def test_stream_event_carries_the_row_the_fragment_serves(env: WebEnv) -> None:
    client, _csrf = env.client("op")
    inc = env.incident_of(env.events(event("pos-a", "PANIC"))[0])
    fragment = client.get(f"/fragments/incidents/{inc}").text
    sse = incident_event(env.ctx, _who(env, "op"), LiveChange(env.ctx.hub.head, inc), ChangeResolver(env.ctx))
    assert sse is not None
    data = json.loads(str(sse.data))
    assert data["incident_id"] == inc and data["row"].strip() == fragment.strip()
    assert f'data-incident-id="{inc}"' in data["row"] and "Tanggapi" in data["row"]  # Bahasa Indonesia by default
