"""Lone UTF-16 surrogates in a payload (docs/storage.md, "Oversized events", text): replaced with
U+FFFD at record time, the payload marked ``text_replaced``, so the alarm is delivered to a real
central over a real Mosquitto instead of ending ``rejected_local``. A record stored before the
fix still cannot be encoded and is rejected locally, never blocking the others.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers_sync import plain_post, running_service, wait_until

from central_sync.broker import LocalMosquitto
from edge.clock import Clock
from edge.outbox import EventDraft, Outbox
from edge.outbox.bounds import PAYLOAD_BUDGET, TEXT_REPLACED, payload_wire_bytes
from edge.outbox.sanitise import make_acceptable
from edge.signing import EventSigner
from edge.sync.wire import MAX_EVENT_BYTES, encode
from tests.helpers_central import IngestInThread

NODE = "pos-rt03"
#: What a serial device's bytes become when decoded with ``surrogateescape``.
SERIAL = b"\xffRING\xfe OK".decode("utf-8", "surrogateescape")


def _outbox(path: Path) -> Outbox:
    return Outbox(path, NODE, clock=Clock(forced_quality="synced"))


def _utf8(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")  # strict: raises on a lone surrogate


def _replace(payload: dict[str, Any]) -> tuple[dict[str, Any], int]:
    text = json.dumps(payload)
    done = make_acceptable(payload, text)
    n = done.text_replaced
    assert json.loads(done.text) == done.payload  # what is returned is what is stored
    assert n or done.text == text
    return done.payload, n


# ---------------------------------------------------------------- the replacement


def test_lone_surrogates_in_keys_and_values_at_any_depth_become_u_fffd() -> None:
    clean, n = _replace({"serial": SERIAL, "deep": {"k\udcff": [["x\ud800"]]}, "n": 3})
    assert n == 4
    assert clean == {"serial": "\ufffdRING\ufffd OK", "deep": {"k\ufffd": [["x\ufffd"]]}, "n": 3,
                     TEXT_REPLACED: True}
    _utf8(clean)


def test_characters_outside_the_bmp_and_escaped_backslashes_are_left_alone() -> None:
    payload = {"emoji": "tolong \U0001F6A8", "path": "C:\\ud800\\x"}
    clean, n = _replace(payload)
    assert n == 0 and clean is payload  # nothing to replace: no marker, no copy
    pair = {"pair": "\ud83d\udea8", "emoji": "\U0001F6A8"}  # a pair held as two code points
    clean, n = _replace(pair)
    assert n == 0 and clean == {"pair": "\U0001F6A8", "emoji": "\U0001F6A8"}  # as stored: no marker
    mixed, n = _replace({"a": "\udc80\ud83d\udea8\ud800"})  # low, pair, high
    assert n == 2 and mixed["a"] == "\ufffd\U0001F6A8\ufffd"


# ---------------------------------------------------------------- record time


@pytest.mark.parametrize("priority", [1, 3])
def test_a_lone_surrogate_event_is_stored_as_valid_utf8_and_still_an_alarm(tmp_path: Path, priority: int) -> None:
    with _outbox(tmp_path / "outbox.db") as ob:
        emoji = ob.record(EventDraft("PANIC", priority, {"note": "\U0001F6A8"}))
        ev = ob.record(EventDraft("PANIC", priority, {"button": "utama", "modem": SERIAL}, incident_id="inc-1"))
        assert (ev.type, ev.priority, ev.incident_id, ev.seq) == ("PANIC", priority, "inc-1", emoji.seq + 1)
        assert ev.payload == {"button": "utama", "modem": "\ufffdRING\ufffd OK", TEXT_REPLACED: True}
        assert ob.get(ev.event_id) == ev  # what is stored is what was returned
        assert TEXT_REPLACED not in emoji.payload and ob.get(emoji.event_id) == emoji
        assert ob.counts()["text_replaced"] == 1
        signed = EventSigner(Ed25519PrivateKey.generate())(ev.envelope())
        encode(signed)  # it can leave the post


def test_record_returns_a_surrogate_pair_as_stored_one_character(tmp_path: Path) -> None:
    """A pair held as two code points, nothing else to replace: the stored JSON decodes to the one
    character, so ``record()`` returns that (before: the two code points, unlike ``get()``)."""
    with _outbox(tmp_path / "outbox.db") as ob:
        ev = ob.record(EventDraft("PANIC", 1, {"note": "tolong \ud83d\udea8", "\ud83d\ude00": 1}))
        assert ev.payload == {"note": "tolong \U0001F6A8", "\U0001F600": 1}
        assert ob.get(ev.event_id) == ev and TEXT_REPLACED not in ev.payload
        assert ob.counts()["text_replaced"] == 0
        _utf8(ev.payload)


def test_a_huge_payload_full_of_lone_surrogates_is_replaced_then_bounded(tmp_path: Path) -> None:
    with _outbox(tmp_path / "outbox.db") as ob:
        ev = ob.record(EventDraft("PANIC", 1, {"button": "utama", "dump": SERIAL * 5000}))
        assert ev.payload["truncated"] is True and ev.payload[TEXT_REPLACED] is True
        assert payload_wire_bytes(ev.payload) <= PAYLOAD_BUDGET
        assert len(encode(ev.envelope())) <= MAX_EVENT_BYTES
        assert ob.counts()["truncated"] == 1 and ob.counts()["text_replaced"] == 1


# ---------------------------------------------------------------- end to end


def test_a_lone_surrogate_alarm_is_delivered_and_acked_by_central(tmp_path: Path, mosquitto: LocalMosquitto,
                                                                   ingest_central: IngestInThread) -> None:
    ob = _outbox(tmp_path / "outbox.db")
    try:
        ev = ob.record(EventDraft("PANIC", 1, {"button": "utama", "modem": SERIAL}, incident_id="inc-7"))
        other = ob.record(EventDraft("PATROLI", 4, {"k\udcff": "v"}))
        svc = plain_post(mosquitto.port, ob)
        with running_service(svc):
            wait_until(lambda: ob.counts()["acked"] == 2, 60, what="both acked")
        at_central = ingest_central.events(NODE)
        got = at_central[ev.event_id]
        assert got["payload"] == {"button": "utama", "modem": "\ufffdRING\ufffd OK", TEXT_REPLACED: True}
        assert (got["type"], got["priority"], got["incident_id"]) == ("PANIC", 1, "inc-7")
        assert at_central[other.event_id]["payload"] == {"k\ufffd": "v", TEXT_REPLACED: True}
        assert svc.stats.rejected_local == 0 and ob.counts()["rejected_local"] == 0
    finally:
        ob.close()


def test_an_old_record_with_a_lone_surrogate_is_still_rejected_locally(tmp_path: Path, mosquitto: LocalMosquitto,
                                                                      ingest_central: IngestInThread) -> None:
    path = tmp_path / "outbox.db"
    with _outbox(path) as ob:
        good = [ob.record(EventDraft("PANIC", 1, {"i": i})).event_id for i in range(3)]
    bad = "0190a0a0-0000-7000-8000-00000000dead"
    conn = sqlite3.connect(path)
    try:  # as the writer stored it before the fix: json.dumps escapes the lone surrogate
        rowid = conn.execute("SELECT MAX(id) + 1 FROM events").fetchone()[0]
        conn.execute("INSERT INTO events (id, event_id, node_id, boot_id, seq, mono_ns, wall_time,"
                     " time_quality, type, priority, incident_id, payload) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     (rowid, bad, NODE, "old-boot", 0, 1, 1_700_000_000.0, "synced", "PANIC", 1, None,
                      json.dumps({"modem": SERIAL})))
        conn.commit()
    finally:
        conn.close()
    ob = _outbox(path)
    try:
        svc = plain_post(mosquitto.port, ob)
        with running_service(svc):
            wait_until(lambda: ob.counts()["acked"] == 3 and ob.counts()["rejected_local"] == 1, 60,
                       what="the good events acked, the old record rejected locally")
        assert set(ingest_central.events(NODE)) == set(good)
        assert ob.flags(bad)["rejected_local"].startswith("invalid")
        assert svc.stats.rejected_local == 1
    finally:
        ob.close()
