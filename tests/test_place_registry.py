"""Identity and place from the enrolment registry only (issue 10, item 1): routing, RT scoping,
the post overview, the map and CAP areas use the registry place; a presence claiming another
place is a de-duplicated, rate-limited security event shown to admins, never applied.

Real SQLite stores, the real ingest path (``IngestService.handle_message`` + ``flush``) and the
real web app over TestClient. The end-to-end case (production broker, CA, real central and a
real edge agent) is tests/test_stolen_post.py."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from central_sync.cap import area_of
from central_sync.config import parse_central_config
from central_sync.enrol import NodeInfo, enrol_node
from central_sync.errors import PkiError
from central_sync.incidents import Incident, IncidentBook, State
from central_sync.ingest import IngestService
from central_sync.pki import PkiSettings, init_ca
from central_sync.place_check import PLACE_MISMATCH, PlaceCheck, disagrees
from central_sync.registry import Registry
from central_sync.routing import Router
from central_sync.store import CentralStore
from central_sync.web.testing import WebEnv, event, presence, register
from edge.sync.wire import Presence, encode

KEL = "33.74.01.1001"


# -- routing -----------------------------------------------------------------------------------


def _incident(store: CentralStore, node_id: str, kind: str = "PERAMPOKAN") -> Incident:
    ids, _ = store.insert_events([event(node_id, kind)], time.time())
    book = IncidentBook(store.desk())
    (change,) = book.add_events(store.get_events(ids))
    incident = book.get(change.incident_id)
    assert incident is not None
    return incident


def test_router_warns_the_registry_rw_whatever_the_presence_said(tmp_path: Path) -> None:
    store = CentralStore(tmp_path / "central.db")
    try:
        for node_id, where in (("rw1-a", f"{KEL}/1/1"), ("rw1-b", f"{KEL}/1/2"), ("thief", f"{KEL}/2/1"),
                               ("rw2-b", f"{KEL}/2/2"), ("other-kel", "33.74.02.1002/2/1")):
            register(store, node_id, where)
        # Every post announces itself; the thief claims RW 1 / RT 1.
        store.apply_node_updates([presence("rw1-a", KEL, 1, 1), presence("rw1-b", KEL, 1, 2),
                                  presence("thief", KEL, 1, 1), presence("rw2-b", KEL, 2, 2),
                                  presence("other-kel", "33.74.02.1002", 2, 1)], [], time.time())
        nodes = store.list_nodes()
        assert {n["node_id"]: n["rw"] for n in nodes}["thief"] == 2
        cmds = Router().rw_warnings(_incident(store, "thief"), nodes)
        assert [c.node_id for c in cmds] == ["rw2-b"]
        assert cmds[0].params["source_node"] == "thief" and cmds[0].action == "sound"
        # A post that is not enrolled has no place: it warns nobody and nobody warns it.
        store.apply_node_updates([presence("ghost", KEL, 2, 1)], [], time.time())
        nodes = store.list_nodes()
        assert Router().rw_warnings(_incident(store, "ghost"), nodes) == []
        assert [c.node_id for c in Router().rw_warnings(_incident(store, "rw2-b"), nodes)] == ["thief"]
    finally:
        store.close()


def _inc(node_id: str) -> Incident:
    return Incident(incident_id="i-" + node_id, node_id=node_id, type="PERAMPOKAN", priority=1, state=State.NEW,
                    opened_at=1.0, last_event_at=1.0, updated_at=1.0, closed_at=None, time_quality="synced",
                    event_count=1)


def test_router_unit_rows() -> None:
    rows = [{"node_id": "pos-a", "kelurahan_code": KEL, "rw": 2},
            {"node_id": "pos-b", "kelurahan_code": KEL, "rw": 2},
            {"node_id": "pos-c", "kelurahan_code": KEL, "rw": 1},
            {"node_id": "pos-d", "kelurahan_code": None, "rw": None},
            {"node_id": "pos-e", "kelurahan_code": "33.74.01.1002", "rw": 2}]
    assert [c.node_id for c in Router().rw_warnings(_inc("pos-a"), rows)] == ["pos-b"]
    assert Router().rw_warnings(_inc("pos-d"), rows) == []  # no registry place: no one is warned
    assert Router().rw_warnings(_inc("unknown"), rows) == []


# -- the place check in ingest -----------------------------------------------------------------


def _claim(node_id: str, rw: int | None = 1, rt: int | None = 1, kel: str | None = KEL) -> bytes:
    return encode(Presence(node_id=node_id, state="online", boot_id="b", version="1.0", at=time.time(),
                           kelurahan_code=kel, rw=rw, rt=rt, display_name="Pos RW 1"))


def test_disagrees_compares_only_what_is_claimed() -> None:
    reg = {"kelurahan_code": KEL, "rw": 2, "rt": 1}
    assert disagrees({"rw": 1}, reg) and disagrees({"kelurahan_code": "33.74.01.1002"}, reg)
    assert not disagrees({}, reg) and not disagrees({"rw": 2, "rt": 1}, reg)
    assert not disagrees({"kelurahan_code": KEL, "rw": 2, "rt": 1}, reg)


def test_ingest_records_a_place_claim_once_per_interval_and_never_applies_it(tmp_path: Path) -> None:
    cfg = parse_central_config({"database": str(tmp_path / "central.db"), "ingest": {"batch_wait_ms": 0}})
    store = CentralStore(cfg.database)
    try:
        register(store, "thief", f"{KEL}/2/1", name="Pos RW 2")
        register(store, "honest", f"{KEL}/3/4")
        svc = IngestService(cfg, store)
        clock = [1_000.0]
        svc.writer.place_check = PlaceCheck(store.registry_tables(), interval_s=60.0, clock=lambda: clock[0])
        async def send(payloads: list[tuple[str, bytes]]) -> None:
            for topic, body in payloads:
                await svc.handle_message(topic, body)
                await svc.flush()  # one commit batch per message: the worst case for writes

        up = "kentongan/v1/up/{}/presence".format
        # 200 lying presences, an honest one, one claiming nothing, one from an unknown post.
        asyncio.run(send([(up("thief"), _claim("thief", rw=1 + i % 2 * 4)) for i in range(200)]
                         + [(up("honest"), _claim("honest", rw=3, rt=4)),
                            (up("thief"), _claim("thief", rw=None, rt=None, kel=None)),
                            (up("stranger"), _claim("stranger"))]))
        (row,) = store.registry_tables().security_events()
        # The first at once; nothing more is written within the interval (the count would grow).
        assert (row["node_id"], row["kind"], row["count"]) == ("thief", PLACE_MISMATCH, 1)
        assert svc.stats.place_mismatches == 200
        node = next(n for n in store.list_nodes() if n["node_id"] == "thief")
        assert (node["rw"], node["rt"], node["display_name"], node["online"]) == (2, 1, "Pos RW 2", True)

        clock[0] += 61.0                           # next interval: the rest, counted, in one write
        asyncio.run(send([(up("thief"), _claim("thief", rw=7))]))
        (row,) = store.registry_tables().security_events()
        assert row["count"] == 201 and '"rw":7' in row["claimed"] and '"rw":2' in row["registered"]
        assert len(store.registry_tables().security_events()) == 1  # one row per post and kind
    finally:
        store.close()


# -- desk, map, CAP ----------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    e = WebEnv(tmp_path / "central.db")
    e.node("rw1-a", f"{KEL}/1/1")
    e.node("thief", f"{KEL}/2/1", name="Pos Curian", lat=-7.0501, lon=110.4381)
    # The thief's presence claimed RW 1 / RT 1 (and a hostile kelurahan code): recorded by ingest.
    check = PlaceCheck(e.store.registry_tables())
    assert check.write([presence("thief", "<b>x</b>", 1, 1)]) == 1
    e.store.upsert_presence(presence("thief", "<b>x</b>", 1, 1), time.time())
    e.sync()
    e.user("root", "admin")
    e.user("op", "operator")
    e.user("rt11", "rt_admin", (f"{KEL}/1/1",))
    yield e
    e.close()


def test_admin_sees_the_security_event_others_do_not(env: WebEnv) -> None:
    root, _ = env.client("root")
    (ev,) = root.get("/api/security-events").json()
    assert (ev["node_id"], ev["claimed"], ev["registered"]) == ("thief", "<b>x</b> RW 1 RT 1", f"{KEL} RW 2 RT 1")
    assert ev["display_name"] == "Pos Curian" and ev["count"] == 1
    page = root.get("/posts").text
    assert 'data-security-node="thief"' in page and "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "Mengaku di" in page and 'id="security-events"' in page  # Bahasa Indonesia by default
    assert "Claimed &lt;b&gt;x&lt;/b&gt; RW 1 RT 1, enrolled at" in root.get("/posts?lang=en").text
    for name in ("op", "rt11"):
        client, _ = env.client(name)
        assert client.get("/api/security-events").status_code == 403
        assert "data-security-node" not in client.get("/posts").text


def test_rt_admin_scoping_uses_the_registry_place(env: WebEnv) -> None:
    rt, csrf = env.client("rt11")
    assert [n["node_id"] for n in rt.get("/api/nodes").json()] == ["rw1-a"]
    r = rt.post("/api/nodes/thief/notice", json={"incident_type": "KUMPUL"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 404
    assert rt.post("/api/nodes/rw1-a/notice", json={"incident_type": "KUMPUL"},
                   headers={"X-CSRF-Token": csrf}).status_code == 200


def test_overview_map_and_cap_use_the_registry_place(env: WebEnv) -> None:
    root, _ = env.client("root")
    rows = {n["node_id"]: n for n in root.get("/api/nodes").json()}
    assert (rows["thief"]["rw"], rows["thief"]["rt"], rows["thief"]["display_name"]) == (2, 1, "Pos Curian")
    posts = {p["node_id"]: p for p in root.get("/api/map").json()["posts"]}
    assert (posts["thief"]["lat"], posts["thief"]["lon"], posts["thief"]["approx"]) == (-7.0501, 110.4381, False)
    assert posts["thief"]["rw"] == 2
    assert posts["rw1-a"]["approx"] is True  # no coordinates at enrolment: the kelurahan's centre
    area = area_of(env.ctx.desk.nodes().get("thief"))
    assert "RT 001 / RW 002" in area.description and area.geocodes == (("KEMENDAGRI", KEL),)


# -- enrolment ---------------------------------------------------------------------------------


def test_enrolment_records_coordinates_and_refuses_bad_ones(tmp_path: Path) -> None:
    settings = PkiSettings(dir=tmp_path / "pki")
    init_ca(settings)
    reg = Registry(sqlite3.connect(tmp_path / "reg.db"))
    enrol_node(settings, reg, NodeInfo("pos-a", KEL, 2, 1, "Pos A", lat=-6.2, lon=106.8), tmp_path / "a.bundle")
    rec = reg.get("pos-a")
    assert rec is not None and (rec.rw, rec.rt, rec.lat, rec.lon) == (2, 1, -6.2, 106.8)
    enrol_node(settings, reg, NodeInfo("pos-b", KEL, 2, 2, "Pos B"), tmp_path / "b.bundle")  # coordinates optional
    rec = reg.get("pos-b")
    assert rec is not None and (rec.lat, rec.lon) == (None, None)
    for lat, lon in ((91.0, 106.8), (-6.2, 181.0), (float("nan"), 106.8), (-6.2, None), (None, 106.8)):
        with pytest.raises(PkiError):
            enrol_node(settings, reg, NodeInfo(f"pos-x{abs(hash((lat, lon))) % 1000}", KEL, 1, 1, "X", lat=lat,
                                               lon=lon), tmp_path / "x.bundle")
    assert {r["node_id"] for r in reg.listing()} == {"pos-a", "pos-b"}
