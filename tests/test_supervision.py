"""Post supervision against the real store, on SQLite and PostgreSQL: the post-state rules, one
outage and one POST_OFFLINE incident per outage however many sweepers run, nothing opened while
central is blind, the restore recorded, 7-day availability and transmission time."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from central_sync.incidents import IncidentBook
from central_sync.store import Store, open_store
from central_sync.store.supervision_tables import SupervisionTables
from central_sync.supervision import LinkState, Supervisor, link_state, p95, post_status
from central_sync.supervision_settings import SupervisionSettings
from edge.sync.wire import EventEnvelope, Presence

SETTINGS = SupervisionSettings(unsupervised=("pos-free",))
SEEING = LinkState(blind=False, reason="ok", processes=1, sighted_since=0.0)
BLIND = LinkState(blind=True, reason="no_ingest")


def presence(node_id: str, state: str = "online") -> Presence:
    return Presence(node_id=node_id, state=state, boot_id="b1", version="0.1.0", at=time.time())  # type: ignore[arg-type]


def test_post_status_rules() -> None:
    now = 10_000.0
    on = {"online": True, "last_seen": now - 59, "presence_at": now - 500}
    assert post_status(on, now, SEEING, 60) == "online"
    assert post_status({**on, "last_seen": now - 61}, now, SEEING, 60) == "offline"  # silent death
    assert post_status({**on, "online": False, "last_seen": now - 1}, now, SEEING, 60) == "offline"  # its will
    # Known only from events (no presence yet): judged by silence alone.
    assert post_status({"online": False, "last_seen": now - 5, "presence_at": None}, now, SEEING, 60) == "online"
    assert post_status({"online": True, "last_seen": None}, now, SEEING, 60) == "unknown"
    assert post_status(on, now, BLIND, 60) == "unknown"  # a blind central does not say "online"
    # Sight came back 10 s ago: a post not heard since is "unknown" until its heartbeat is due.
    back = LinkState(blind=False, reason="ok", processes=1, sighted_since=now - 10)
    assert post_status({**on, "last_seen": now - 300}, now, back, 60) == "unknown"
    late = LinkState(blind=False, reason="ok", processes=1, sighted_since=now - 61)
    assert post_status({**on, "last_seen": now - 300}, now, late, 60) == "offline"


def test_link_state_rules() -> None:
    from central_sync.store.supervision_tables import LinkRow

    s = SupervisionSettings()
    now = 1000.0
    assert link_state([], now, s, posts_known=10).reason == "no_ingest"
    stale = LinkRow("w0", now - 100, now - s.blind_after_s - 1, now - 1)
    assert link_state([stale], now, s, posts_known=10).blind
    fresh = LinkRow("w0", now - 100, now - 1, now - 2)
    ok = link_state([stale, fresh], now, s, posts_known=10)
    assert not ok.blind and ok.processes == 1 and ok.sighted_since == now - 100
    # Connected but nothing from any post for quiet_after_s: a half-open link, blind.
    quiet = LinkRow("w0", now - 100, now - 1, now - 50)
    assert link_state([quiet], now, s, posts_known=10).reason == "quiet"
    # With fewer posts than quiet_min_posts, all of them dying is as likely: not blind.
    assert not link_state([quiet], now, s, posts_known=s.quiet_min_posts - 1).blind
    assert not link_state([quiet], now, s.model_copy(update={"quiet_after_s": None}), posts_known=10).blind


def test_p95_nearest_rank() -> None:
    assert p95([]) is None
    assert p95([3.0]) == 3.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0


@pytest.fixture
def two_stores(store_url: str) -> Iterator[tuple[Store, Store]]:
    """Two connections to one store, as two web processes have."""
    a, b = open_store(store_url), open_store(store_url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _beat(store: Store, now: float) -> None:
    SupervisionTables(store.desk()).link_beat("ingest-w0", now - 3600, now, now)


def test_one_outage_and_one_incident_per_outage_across_sweepers(two_stores: tuple[Store, Store]) -> None:
    a, b = two_stores
    t0 = time.time() - 3600
    for node in ("pos-a", "pos-free", "pos-b"):
        a.upsert_presence(presence(node), t0)
    a.upsert_presence(presence("pos-gone"), t0 - 3 * 86400)  # silent for days: old news
    a.upsert_presence(presence("pos-b"), time.time())  # pos-b is alive
    sweepers = [Supervisor(a, SETTINGS), Supervisor(b, SETTINGS)]

    # Blind (no ingest process beating): nothing opens, every state is unknown.
    for s in sweepers:
        result = s.sweep()
        assert result.skipped_blind and not result.opened
        assert s.status_of({"online": True, "last_seen": time.time()}, time.time()) == "unknown"
    assert SupervisionTables(a.desk()).open_outages() == []

    _beat(a, time.time())
    opened = [s.sweep() for s in sweepers for _ in range(3)]
    assert sorted(n for r in opened for n in r.opened) == ["pos-a", "pos-free", "pos-gone"]
    incidents = [i for r in opened for i in r.incidents]
    assert len(incidents) == 1  # pos-free is not supervised, pos-gone beyond the horizon: outages only
    book = IncidentBook(a.desk())
    [inc] = [i for i in book.incidents() if i.type == "POST_OFFLINE"]
    assert inc.node_id == "pos-a" and inc.incident_id == incidents[0] and inc.state.value == "new"
    assert inc.opened_at == pytest.approx(t0) and inc.priority == 2
    outages = {o.node_id: o for o in SupervisionTables(b.desk()).open_outages()}
    assert set(outages) == {"pos-a", "pos-free", "pos-gone"} and outages["pos-free"].incident_id is None
    assert outages["pos-gone"].incident_id is None

    # The post comes back: the outage records the restore, the incident's timeline says so.
    a.upsert_presence(presence("pos-a"), time.time())
    _beat(a, time.time())
    restored = [s.sweep() for s in sweepers]
    assert sum(len(r.restored) for r in restored) == 1
    steps = [h["step"] for h in book.history(inc.incident_id)]
    assert steps == ["new", "restored"]
    assert {o.node_id for o in SupervisionTables(a.desk()).open_outages()} == {"pos-free", "pos-gone"}

    # A second outage of the same post is a second incident (its will this time).
    a.upsert_presence(presence("pos-a", "offline"), time.time())
    _beat(a, time.time())
    again = [s.sweep() for s in sweepers]
    assert sum(len(r.incidents) for r in again) == 1
    assert len([i for i in book.incidents() if i.type == "POST_OFFLINE"]) == 2


def _event(node_id: str, wall: float) -> EventEnvelope:
    return EventEnvelope(event_id=uuid.uuid4().hex, node_id=node_id, boot_id="b1", seq=1, mono_ns=1,
                         wall_time=wall, time_quality="synced", type="PATROLI", priority=4, payload={})


def test_availability_and_transmission_time(any_store: Store) -> None:
    now = time.time()
    t0 = now - 10_000
    tables = SupervisionTables(any_store.desk())
    tables.note_first_seen([("pos-a", t0)])
    any_store.upsert_presence(presence("pos-a"), t0 + 100)
    sup = Supervisor(any_store, SETTINGS)
    tables.link_beat("ingest-w0", t0 - 10, t0 + 1000, t0 + 1000)
    assert sup.sweep(now=t0 + 1000).opened == ["pos-a"]  # silent since t0 + 100
    any_store.upsert_presence(presence("pos-a"), t0 + 1100)
    tables.link_beat("ingest-w0", t0 - 10, t0 + 1110, t0 + 1110)
    assert sup.sweep(now=t0 + 1110).restored == ["pos-a"]
    # Transmission: 20 events stored 0.1 .. 2.0 s after the post recorded them.
    for i in range(1, 21):
        any_store.insert_events([_event("pos-a", now - 50 - i * 0.1)], now - 50)
    fig = sup.path_figures("pos-a", now=t0 + 10_000)
    assert fig.outages == 1 and fig.open_outage_since is None
    assert fig.availability == pytest.approx(1 - 1010 / 10_000, abs=1e-6)
    assert fig.below_threshold  # 89.9 % < 95 %
    assert fig.transmissions == 20
    assert fig.transmission_mean_s == pytest.approx(1.05, abs=1e-3)
    assert fig.transmission_p95_s == pytest.approx(1.9, abs=1e-3)
    healthy = sup.path_figures("pos-a", now=t0 + 10_000 + 7 * 86400)  # the outage left the window
    assert healthy.availability == 1.0 and not healthy.below_threshold and healthy.outages == 0
    assert sup.path_figures("pos-never").availability is None
