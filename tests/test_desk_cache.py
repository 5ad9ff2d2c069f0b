"""The desk's render-once caches: ``BodyCache`` semantics, and the queue page / post overview
served from them (never behind by more than one rebuild, stream id safe, ETag on /api/nodes)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from central_sync.web.body_cache import BodyCache
from central_sync.web.testing import WebEnv, event

WAIT = 30.0


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_body_cache_builds_once_serves_stale_and_rebuilds_in_the_background() -> None:
    clock = Clock()
    cache: BodyCache[str] = BodyCache(max_age_s=1.0, clock=clock)
    calls: list[str] = []
    gate = threading.Event()

    def build(value: str, wait: bool = False) -> Callable[[], str]:
        def run() -> str:
            if wait:
                gate.wait(WAIT)
            calls.append(value)
            return value
        return run

    assert cache.get("k", 1, build("v1")).value == "v1"      # cold: built in the request
    assert cache.get("k", 1, build("never")).value == "v1"   # same version: a hit
    assert cache.get("k", 2, build("never")).value == "v1"   # newer data, young body: stale
    assert calls == ["v1"]
    clock.t += 1.5
    assert cache.get("k", 2, build("v2", wait=True)).value == "v1"  # old: rebuilt in the background
    assert cache.get("k", 3, build("never")).value == "v1"   # one rebuild at a time
    gate.set()
    wait_until(lambda: cache.get("k", 2, build("never")).value == "v2", "the background rebuild")
    assert calls == ["v1", "v2"] and cache.builds == 2
    assert cache.get("other", 2, build("o")).value == "o"    # keys are independent


def test_a_failed_rebuild_keeps_the_stored_body() -> None:
    clock = Clock()
    cache: BodyCache[str] = BodyCache(max_age_s=0.5, clock=clock)
    cache.get("k", 1, lambda: "v1")
    clock.t += 1

    def broken() -> str:
        raise RuntimeError("store gone")

    assert cache.get("k", 2, broken).value == "v1"
    wait_until(lambda: not cache._building, "the failed rebuild to end")
    assert cache.get("k", 2, lambda: "v2").value == "v1"  # tries again (in the background)
    wait_until(lambda: cache.get("k", 2, lambda: "x").value == "v2", "the next rebuild")


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[WebEnv]:
    e = WebEnv(tmp_path / "central.db")
    e.user("op", "admin")
    e.user("rt", "rt_admin", ("33.74.01.1001/5/3",))
    yield e
    e.close()


def test_queue_page_catches_up_and_its_stream_id_predates_its_rows(env: WebEnv) -> None:
    env.node("pos-a")
    env.node("pos-b", "33.74.01.1001/6/1")
    client, _csrf = env.client("op")
    first = env.events(event("pos-a", "KEBAKARAN"))
    page = client.get("/").text
    assert env.incident_of(first[0]) in page
    head = int(re.search(r'data-stream-head="(\d+)"', page).group(1))  # type: ignore[union-attr]
    second = env.events(event("pos-b", "KEBAKARAN"))
    inc2 = env.incident_of(second[0])
    # The stored rows may be served while young, but the page's stream id is older than the
    # change, so the live stream replays it; and within about a second the rows have it too.
    newer = client.get("/").text
    if inc2 not in newer:
        assert int(re.search(r'data-stream-head="(\d+)"', newer).group(1)) == head  # type: ignore[union-attr]
        assert env.ctx.hub.head > head
    wait_until(lambda: inc2 in client.get("/").text, "the new incident on the queue page")
    wait_until(lambda: inc2 in client.get("/fragments/queue").text, "the new incident in the fragment")
    # Visibility is part of the key: the RT admin of RW 5 never gets the RW 6 row.
    rt_client, _ = env.client("rt")
    assert inc2 not in rt_client.get("/").text
    assert env.incident_of(first[0]) in rt_client.get("/").text


def test_queue_reread_after_a_resync_is_never_older_than_the_stream(env: WebEnv) -> None:
    """The page re-reads its queue with ``?at=<the stream id it has reached>`` and continues
    its stream from there: a stored body from before that id must not be served, or the changes
    in between would be lost to the page."""
    env.node("pos-a")
    env.node("pos-b", "33.74.01.1001/6/1")
    env.ctx.bodies.queue.max_age_s = 3600.0  # the stored body stays "young" for the whole test
    client, _csrf = env.client("op")
    env.events(event("pos-a", "KEBAKARAN"))
    first = client.get("/fragments/queue")
    inc2 = env.incident_of(env.events(event("pos-b", "KEBAKARAN"))[0])
    head = env.ctx.hub.head
    assert head > int(first.headers["X-Stream-Head"])
    stale = client.get("/fragments/queue")          # without ?at: the young stored body
    assert inc2 not in stale.text and stale.headers["X-Stream-Head"] == first.headers["X-Stream-Head"]
    fresh = client.get(f"/fragments/queue?at={head}")
    assert inc2 in fresh.text and int(fresh.headers["X-Stream-Head"]) >= head
    # An id beyond what exists (a page from before a restart) is served as usual, not rebuilt.
    assert client.get(f"/fragments/queue?at={head + 1000}").status_code == 200
    assert client.get("/fragments/queue?at=x").status_code == 422


def test_post_overview_etag_and_catching_up(env: WebEnv) -> None:
    env.node("pos-a")
    client, _csrf = env.client("op")
    r = client.get("/api/nodes")
    assert r.status_code == 200 and [p["node_id"] for p in r.json()] == ["pos-a"]
    etag = r.headers["etag"]
    assert client.get("/api/nodes", headers={"If-None-Match": etag}).status_code == 304
    env.node("pos-b", "33.74.01.1001/6/1")
    wait_until(lambda: [p["node_id"] for p in client.get("/api/nodes").json()] == ["pos-a", "pos-b"],
               "the new post in the overview")
    assert client.get("/api/nodes", headers={"If-None-Match": etag}).status_code == 200
    rt_client, _ = env.client("rt")
    assert [p["node_id"] for p in rt_client.get("/api/nodes").json()] == ["pos-a"]


def test_post_overview_serialises_only_changed_posts_and_matches_a_full_build(env: WebEnv) -> None:
    import json

    from central_sync.web.auth import Principal
    from central_sync.web.posts import post_rows

    for i in range(6):
        env.node(f"pos-{i}", f"33.74.01.1001/{5 + i % 2}/{6 - i}")
    ctx = env.ctx
    for name in ("op", "rt"):
        user = ctx.users.get(name)
        assert user is not None
        who = Principal(user, "csrf", "test")
        full = json.dumps(post_rows(ctx, who), separators=(",", ":"), ensure_ascii=False).encode()
        assert ctx.bodies.post_json.build(ctx, who) == full
    before = ctx.bodies.post_json.serialised
    env.node("pos-2", "33.74.01.1001/5/4")  # one post announces itself again
    who = Principal(ctx.users.get("op"), "csrf", "test")  # type: ignore[arg-type]
    body = ctx.bodies.post_json.build(ctx, who)
    assert ctx.bodies.post_json.serialised == before + 1
    assert body == json.dumps(post_rows(ctx, who), separators=(",", ":"), ensure_ascii=False).encode()



def test_start_up_warming_renders_the_rows_the_first_page_needs(env: WebEnv) -> None:
    from central_sync.web.cached_views import warm

    env.node("pos-a")
    inc = env.incident_of(env.events(event("pos-a", "KEBAKARAN"))[0])
    env.ctx.bodies.rows.clear()
    assert warm(env.ctx) == 1 and len(env.ctx.bodies.rows) == 1
    warmed = set(env.ctx.bodies.rows)
    client, _csrf = env.client("op")
    assert inc in client.get("/").text
    if set(env.ctx.bodies.rows) != warmed:  # only when the row's 30 s slot turned meanwhile
        assert len(env.ctx.bodies.rows) == 2 and all(k[1] != w[1] for k in set(env.ctx.bodies.rows) - warmed
                                                     for w in warmed)
