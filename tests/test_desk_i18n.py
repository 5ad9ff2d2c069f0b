"""The desk's words: catalogs complete, Bahasa Indonesia by default, English on request, and
sirens, events, steps, places and times in readable words (never a dict or JSON)."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from central_sync.web import i18n, present
from central_sync.web.places import Places
from central_sync.web.testing import WebEnv, event
from edge.sync.wire import Heartbeat, SnapshotEnvelope

WEB = Path(i18n.__file__).resolve().parent
ROOT = WEB.parent.parent


def _extracted() -> set[str]:
    """Every msgid in the code and templates now (as scripts/update-catalogs extracts)."""
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2")]
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None}
    found: set[str] = set()
    for _file, _line, message, _comments, _ctx in extract_from_dir(
            str(WEB), method_map, keywords=keywords):
        found.add(message if isinstance(message, str) else message[0])
    return found


def test_every_string_is_translated_into_indonesian() -> None:
    with i18n.po_path("id").open("rb") as f:
        catalog = read_po(f, locale="id")
    translated = {m.id: m.string for m in catalog if m.id and m.string and not m.fuzzy}
    extracted = _extracted()
    assert len(extracted) > 100
    missing = sorted(extracted - translated.keys())
    assert not missing, f"untranslated (run scripts/update-catalogs): {missing}"
    for msgid, msgstr in translated.items():   # placeholders survive translation
        assert sorted(re.findall(r"%\(\w+\)s", msgid)) == sorted(re.findall(r"%\(\w+\)s", msgstr)), msgid
    assert not [e for e in catalog.check() if e[1]]


def test_the_catalog_is_used() -> None:
    i18n.set_language("id")
    assert i18n.gettext("Acknowledge") == "Tanggapi"
    i18n.set_language("en")
    assert i18n.gettext("Acknowledge") == "Acknowledge"
    i18n.set_language("id")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    e = WebEnv(tmp_path / "central.db")
    e.node("pos-a", "33.74.10.1005/5/3")
    e.user("op", "operator")
    yield e
    e.close()


def test_pages_are_indonesian_by_default_and_english_on_request(env: WebEnv) -> None:
    login = env.anon.get("/login")
    assert 'lang="id"' in login.text and "Kata sandi" in login.text
    op, _ = env.client("op")
    env.events(event("pos-a", "PANIC", payload={"button": "panic", "hold_ms": 2100}))
    page = op.get("/")
    assert "Antrean kejadian" in page.text and "Tanggapi" in page.text and "Panik" in page.text
    assert "Kelurahan 33.74.10.1005, Kecamatan Tembalang" in page.text
    english = op.get("/?lang=en")
    assert 'lang="en"' in english.text and "Incident queue" in english.text
    assert "lang=en" in english.headers["set-cookie"]
    assert "Incident queue" in op.get("/").text         # remembered per user (cookie)
    assert "Antrean kejadian" in op.get("/?lang=id").text


def test_incident_page_shows_events_and_steps_in_words(env: WebEnv) -> None:
    op, csrf = env.client("op")
    ids = env.events(event("pos-a", "PANIC", payload={"button": "panic", "hold_ms": 2100,
                                                        "extra": {"zone": "gerbang"}}))
    inc = env.incident_of(ids[0])
    assert op.post(f"/api/incidents/{inc}/ack", json={"note": "unit 3"},
                   headers={"X-CSRF-Token": csrf}).status_code == 200
    page = op.get(f"/incidents/{inc}").text
    assert "Ditekan selama:</span> 2,1 detik" in page
    assert "Extra:</span> Zone: gerbang" in page
    assert "Dibuka</strong> oleh pos pos-a" in page and "Ditanggapi</strong> oleh op: unit 3" in page
    assert "WIB" in page
    main = page[page.index("<main>"):page.index("</main>")]
    assert "{&#34;" not in main and '{"' not in main and "{'" not in main
    assert "hold_ms" not in main


def test_posts_page_shows_siren_in_words(env: WebEnv) -> None:
    env.store.upsert_heartbeat(Heartbeat(
        node_id="pos-a", boot_id="b1", at=time.time(), version="0.1.0", time_quality="synced",
        siren={"playing": True, "relay_on": True, "pattern": "3x",
               "trigger": {"source": "button", "detail": "panic", "incident_type": "PANIC"}}),
        time.time())
    op, _ = env.client("op")
    page = op.get("/posts").text
    assert "Berbunyi: Panik, oleh tombol" in page
    assert "playing" not in page and "relay_on" not in page


def test_siren_and_payload_words() -> None:
    i18n.set_language("en")
    try:
        assert present.siren_text({}) == "Not reported"
        assert present.siren_text({"playing": False, "relay_on": False}) == "Silent"
        assert present.siren_text({"error": "boom"}) == "Siren state could not be read"
        assert present.siren_text({"playing": True, "trigger": {"source": "command",
                                                                "incident_type": "KEBAKARAN"}}) \
            == "Sounding: Fire, by command from central"
        assert present.payload_items({"hold_ms": 2100, "incident_id": "x", "button": "b1"}) == [
            ("Held for", "2.1 s"), ("Button", "b1")]
        assert present.type_name("SIREN_MAX_ON") == "Siren reached its time limit"
        assert present.type_name("SOMETHING_NEW") == "Something new"
    finally:
        i18n.set_language("id")


def test_times_are_in_the_configured_zone_and_labelled() -> None:
    ts = 1_800_000_000.0                               # 2027-01-15 08:00:00 UTC
    assert present.Clock("Asia/Jakarta").fmt(ts) == "2027-01-15 15:00:00 WIB"
    assert present.Clock("Asia/Makassar").fmt(ts) == "2027-01-15 16:00:00 WITA"
    assert present.Clock("Asia/Jayapura").fmt(ts).endswith("17:00:00 WIT")


def test_places_name_only_what_the_table_knows() -> None:
    places = Places.load()
    assert places.kelurahan_name("33.74.10.1005") == "Kelurahan 33.74.10.1005"
    assert places.kecamatan_name("33.74.10.1005") == "Kecamatan Tembalang"
    assert places.area("99.99.99.9999") == "Kelurahan 99.99.99.9999"
    a = places.post_position("33.74.10.1005", 5, 3)
    b = places.post_position("33.74.10.1005", 5, 4)
    assert a and b and (a.lat, a.lon) != (b.lat, b.lon) and a.approx
    assert abs(a.lat - -7.053) < 0.02 and abs(a.lon - 110.438) < 0.02


def test_unknown_language_and_bad_cookie_fall_back_to_indonesian(env: WebEnv) -> None:
    r = env.anon.get("/login?lang=xx", headers={"Cookie": 'lang="; bad'})
    assert r.status_code == 200 and 'lang="id"' in r.text and "Kata sandi" in r.text
    assert "lang=" not in r.headers.get("set-cookie", "")


def test_age_against_the_response_target(tmp_path: Path) -> None:
    e = WebEnv(tmp_path / "central.db", {"response_target_s": {1: 60}})
    try:
        e.node("pos-a", "33.74.10.1005/5/3")
        e.node("pos-b", "33.74.10.1005/5/4")
        e.user("op", "operator")
        op, _ = e.client("op")
        e.events(event("pos-a", "PANIC", at=time.time() - 600),
                 event("pos-b", "PANIC"))
        rows = op.get("/fragments/queue").text.split("<tr ")[1:]
        late = [r for r in rows if 'class="age late"' in r]
        assert len(rows) == 2 and len(late) == 1 and "pos-a" in late[0]
        assert 'data-target="60.0"' in late[0] and "10 mnt / target 1 mnt" in late[0]
    finally:
        e.close()


def test_a_sealed_photo_without_a_key_is_explained_not_broken(env: WebEnv) -> None:
    ids = env.events(event("pos-a", "PANIC"))
    for sid, sealed in (("snap-sealed-00000001", True), ("snap-plain-000000001", False)):
        env.store.insert_snapshot(SnapshotEnvelope(
            snapshot_id=sid, event_id=ids[0], node_id="pos-a", taken_at=time.time(),
            sealed=sealed, data=base64.b64encode(b"\xff\xd8jpeg").decode()), time.time())
    op, _ = env.client("op")
    page = op.get(f"/incidents/{env.incident_of(ids[0])}").text
    assert "Foto tersegel" in page
    assert "/api/snapshots/snap-sealed-00000001" not in page       # no broken image
    assert '<img src="/api/snapshots/snap-plain-000000001"' in page
