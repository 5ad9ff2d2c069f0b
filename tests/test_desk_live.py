"""The desk's live stream: ids, replay from Last-Event-ID, resync when replay is impossible, over
real HTTP (uvicorn on a loopback port, httpx reading the event stream) and a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from central_sync.web.app import create_app
from central_sync.web.live import LiveHub, parse_event_id
from central_sync.web.routes_live import events_for
from central_sync.web.testing import WebEnv, event
from tests.helpers_web import listener, port_of
from tests.waits import wait_for as _wait_for


class FakeClock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_ids_increase_strictly_even_within_one_microsecond() -> None:
    clock = FakeClock()
    hub = LiveHub(clock=clock)
    ids = [hub.publish(f"inc-{i}") for i in range(5)]
    assert ids == sorted(set(ids)) and len(ids) == 5
    clock.t -= 10            # the wall clock steps back: ids still increase
    assert hub.publish("inc-x") > ids[-1]


def test_replay_after_last_event_id_is_latest_per_incident_in_order() -> None:
    hub = LiveHub(replay=100)
    a = hub.publish("inc-a")
    b = hub.publish("inc-b")
    hub.publish("inc-a")
    c = hub.publish("inc-c")
    missed = hub.missed_since(a)
    assert missed is not None
    assert [m.incident_id for m in missed] == ["inc-b", "inc-a", "inc-c"]
    assert missed[-1].seq == c and missed[0].seq == b
    assert hub.missed_since(c) == []                 # up to date
    assert hub.missed_since(None) is None            # no id: the page must read the queue


def test_resync_when_the_ring_no_longer_holds_the_gap() -> None:
    hub = LiveHub(replay=16)
    first = hub.publish("inc-0")
    for i in range(1, 40):
        hub.publish(f"inc-{i}")
    assert hub.missed_since(first) is None           # evicted from the ring
    assert hub.missed_since(hub.head + 10**9) is None  # an id this hub never gave out
    recent = hub.missed_since(hub.head - 1)
    assert recent is not None and len(recent) == 1


def test_a_restarted_process_starts_above_old_ids_and_asks_for_resync() -> None:
    clock = FakeClock()
    old = LiveHub(clock=clock)
    last_seen = old.publish("inc-a")
    old.publish("inc-b")                             # the browser missed this one
    clock.t += 5                                     # the web process restarts
    new = LiveHub(clock=clock)
    assert new.head > last_seen
    assert new.missed_since(last_seen) is None       # cannot know what happened: resync
    assert new.publish("inc-c") > last_seen


def test_event_id_parsing_rejects_garbage() -> None:
    assert parse_event_id("1795992513353905") == 1795992513353905
    for bad in (None, "", "abc", "-1", "1" * 30, "1.5"):
        assert parse_event_id(bad) is None


def test_a_slow_subscriber_is_told_to_resync(tmp_path: Path) -> None:
    env = WebEnv(tmp_path / "central.db")
    try:
        env.node("pos-a", "33.74.10.1005/5/3")
        env.user("op", "operator")
        client, _ = env.client("op")
        principal = _principal(env, client)

        async def run() -> list[str]:
            hub = LiveHub(max_queue=2)
            out: list[str] = []
            async with hub.subscribe(hub.head) as sub:
                for i in range(5):
                    hub.publish(f"inc-{i}")
                await asyncio.sleep(0)                 # let call_soon_threadsafe deliver
                gen = events_for(env.ctx, principal, sub, wait_s=0.05)
                async for ev in gen:
                    out.append(ev.event or "")
                    if ev.event == "resync":
                        break
                await gen.aclose()
            return out

        kinds = asyncio.run(run())
        assert kinds[0] == "hello" and "resync" in kinds
    finally:
        env.close()


def _principal(env: WebEnv, client: Any) -> Any:
    from central_sync.web.auth import COOKIE

    token = client.cookies.get(COOKIE)
    found = env.ctx.sessions.lookup(token, "testclient")
    assert found is not None
    return found


# -- over HTTP ----------------------------------------------------------------------------------

class Served:
    def __init__(self, env: WebEnv, app: Any = None) -> None:
        sock = listener()  # bound before the server starts: nobody can take the port meanwhile
        self.port = port_of(sock)
        self.server = uvicorn.Server(uvicorn.Config(app or env.app, host="127.0.0.1", port=self.port,
                                                    log_config=None, access_log=False,
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "web server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[WebEnv, httpx.Client]]:
    env = WebEnv(tmp_path / "central.db")
    env.node("pos-a", "33.74.10.1005/5/3")
    env.node("pos-b", "33.74.10.1005/5/4")
    env.user("op", "operator")
    with Served(env) as srv, httpx.Client(base_url=f"http://127.0.0.1:{srv.port}",
                                          timeout=20) as http:
        r = http.post("/api/login", json={"username": "op", "password": WebEnv.PASSWORD})
        assert r.status_code == 200, r.text
        yield env, http
    env.close()


def _read_events(http: httpx.Client, headers: dict[str, str], until: Any,
                 params: dict[str, str] | None = None,
                 timeout: float = 20.0) -> list[dict[str, Any]]:
    """Parse the event stream (as a browser would) until ``until(events)`` is true."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    with http.stream("GET", "/api/stream", headers=headers, params=params) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line == "":
                if current:
                    events.append(current)
                    current = {}
                    if until(events):
                        return events
            elif not line.startswith(":"):
                field, _, value = line.partition(":")
                current[field] = value[1:] if value.startswith(" ") else value
            assert time.monotonic() < deadline, f"stream timed out; got {events}"
    return events


def test_stream_replays_what_a_client_missed(served: tuple[WebEnv, httpx.Client]) -> None:
    env, http = served
    first = env.events(event("pos-a", "PANIC"))
    seen = env.ctx.hub.head                               # the browser saw up to here
    missed_ids = env.events(event("pos-b", "KEBAKARAN")) + env.events(event("pos-b", "PANIC"))
    wanted = {env.incident_of(i) for i in missed_ids}
    got = _read_events(http, {"Last-Event-ID": str(seen)},
                       lambda evs: len([e for e in evs if e.get("event") == "incident"]) >= 2)
    hello = got[0]
    assert hello["event"] == "hello" and hello["retry"] == "2000"
    assert json.loads(hello["data"])["replayed"] == 2
    incidents = [e for e in got if e.get("event") == "incident"]
    assert {json.loads(e["data"])["incident_id"] for e in incidents} == wanted
    assert env.incident_of(first[0]) not in {json.loads(e["data"])["incident_id"]
                                             for e in incidents}
    ids = [int(e["id"]) for e in incidents]
    assert ids == sorted(ids) and ids[0] > seen


def test_stream_query_parameter_works_like_the_header(
        served: tuple[WebEnv, httpx.Client]) -> None:
    env, http = served
    seen = env.ctx.hub.head
    env.events(event("pos-a", "PANIC"))
    got = _read_events(http, {}, lambda evs: any(e.get("event") == "incident" for e in evs),
                       params={"last_event_id": str(seen)})
    assert any(e.get("event") == "incident" for e in got)


def test_foreign_last_event_id_gets_resync(served: tuple[WebEnv, httpx.Client]) -> None:
    env, http = served
    env.events(event("pos-a", "PANIC"))
    for stale in (str(env.ctx.hub.head + 1000), "not-an-id"):
        got = _read_events(http, {"Last-Event-ID": stale},
                           lambda evs: any(e.get("event") == "resync" for e in evs))
        resync = next(e for e in got if e.get("event") == "resync")
        assert int(resync["id"]) == env.ctx.hub.head      # the page continues from the head


def test_more_than_the_replay_limit_gets_resync(tmp_path: Path) -> None:
    env = WebEnv(tmp_path / "central.db", web={"stream_replay": 16})
    try:
        env.node("pos-a", "33.74.10.1005/5/3")
        env.user("op", "operator")
        for i in range(17):
            env.events(event("pos-a", "PANIC", at=time.time() - 10_000 * (17 - i)))
        with Served(env) as srv, httpx.Client(base_url=f"http://127.0.0.1:{srv.port}",
                                              timeout=20) as http:
            assert http.post("/api/login", json={"username": "op",
                                                 "password": WebEnv.PASSWORD}).status_code == 200
            got = _read_events(http, {"Last-Event-ID": "0"},
                               lambda evs: any(e.get("event") == "resync" for e in evs))
            assert json.loads(got[0]["data"])["resync"] is True
    finally:
        env.close()


def test_a_restarted_web_process_replays_from_the_store(tmp_path: Path) -> None:
    """Stream ids are the store's change numbers: a browser that saw id N on a web process
    gets what changed after N from a new process (a restart, or another one) on the same store,
    under the same ids, instead of a resync."""
    env = WebEnv(tmp_path / "central.db")
    try:
        env.node("pos-a", "33.74.10.1005/5/3")
        env.node("pos-b", "33.74.10.1005/5/4")
        env.user("op", "operator")
        env.events(event("pos-a", "PANIC"))
        seen = env.ctx.hub.head
        missed = env.incident_of(env.events(event("pos-b", "KEBAKARAN"))[0])
        missed_id = env.ctx.hub.head
        app = create_app({"web": {}}, env.store, env.sender, follow_changes=False)
        with Served(env, app) as srv, httpx.Client(base_url=f"http://127.0.0.1:{srv.port}",
                                                   timeout=20) as http:
            assert http.post("/api/login", json={"username": "op",
                                                 "password": WebEnv.PASSWORD}).status_code == 200
            got = _read_events(http, {"Last-Event-ID": str(seen)},
                               lambda evs: any(e.get("event") == "incident" for e in evs))
        assert json.loads(got[0]["data"]) == {"head": missed_id, "replayed": 1, "resync": False}
        (inc,) = [e for e in got if e.get("event") == "incident"]
        assert json.loads(inc["data"])["incident_id"] == missed and int(inc["id"]) == missed_id
    finally:
        env.close()


def test_live_changes_follow_the_replay(served: tuple[WebEnv, httpx.Client]) -> None:
    env, http = served
    seen = env.ctx.hub.head
    fired = threading.Event()

    def later() -> None:
        time.sleep(0.5)
        fired.set()  # before the commit: the stream may deliver it before env.events returns
        env.events(event("pos-b", "PANIC"))

    threading.Thread(target=later, daemon=True).start()
    got = _read_events(http, {"Last-Event-ID": str(seen)},
                       lambda evs: any(e.get("event") == "incident" for e in evs))
    assert fired.is_set()
    inc = json.loads(next(e for e in got if e.get("event") == "incident")["data"])
    assert inc["type"] == "PANIC" and inc["node_id"] == "pos-b" and inc["state"] == "new"


def test_queue_fragment_carries_the_stream_head(served: tuple[WebEnv, httpx.Client]) -> None:
    env, http = served
    env.events(event("pos-a", "PANIC"))
    r = http.get("/fragments/queue")
    assert r.status_code == 200 and int(r.headers["X-Stream-Head"]) == env.ctx.hub.head
    assert r.text.count("<tr ") == 1 and 'data-state="new"' in r.text


def test_closing_the_hub_ends_open_streams_at_once(served: tuple[WebEnv, httpx.Client]) -> None:
    """Server shutdown (DeskServer) closes the hub: streams end instead of holding shutdown."""
    env, http = served

    def close_soon() -> None:
        _wait_for(lambda: env.ctx.hub.subscribers == 1)
        env.ctx.hub.close()

    threading.Thread(target=close_soon, daemon=True).start()
    started = time.monotonic()
    got = _read_events(http, {"Last-Event-ID": str(env.ctx.hub.head)}, lambda evs: False)
    assert [e.get("event") for e in got] == ["hello"]          # then the stream ended
    assert time.monotonic() - started < 8                      # well before a heartbeat wait
    _wait_for(lambda: env.ctx.hub.subscribers == 0)


def test_a_stream_ends_soon_after_its_session_is_logged_out(tmp_path: Path) -> None:
    """The session is looked up at most once a second (not per change, on the loop): after a
    logout the stream still ends, within about a second of changes."""
    env = WebEnv(tmp_path / "central.db")
    env.node("pos-a", "33.74.10.1005/5/3")
    env.user("op", "operator")
    try:
        with Served(env) as srv, httpx.Client(base_url=f"http://127.0.0.1:{srv.port}", timeout=20) as http:
            r = http.post("/api/login", json={"username": "op", "password": WebEnv.PASSWORD})
            csrf = r.json()["csrf_token"]
            ended = threading.Event()
            after_logout: list[dict[str, Any]] = []
            logged_out = threading.Event()

            def read() -> None:
                def until(evs: list[dict[str, Any]]) -> bool:
                    if logged_out.is_set() and evs[-1].get("event") == "incident":
                        after_logout.append(evs[-1])
                    return False
                try:
                    _read_events(http, {}, until, timeout=60)
                finally:
                    ended.set()

            threading.Thread(target=read, daemon=True).start()
            _wait_for(lambda: env.ctx.hub.subscribers == 1)
            assert http.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
            logged_out.set()
            deadline = time.monotonic() + 30
            while not ended.is_set():
                assert time.monotonic() < deadline, "the stream outlived its session"
                env.events(event("pos-a", "PANIC"))
                ended.wait(0.2)
            assert len(after_logout) <= 10  # about a second's worth at most
    finally:
        env.close()
