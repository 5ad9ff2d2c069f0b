"""Oversized events never block the uplink (docs/storage.md, "Oversized events").

Record time: a payload that would make the envelope exceed ``MAX_EVENT_BYTES`` is cut
(``edge.outbox.bounds``) before it is stored, type/priority/ids intact, counted in
``counts()["truncated"]``; the truncated event goes out and is acknowledged by a real central
over a real Mosquitto. Uplink: a record that still cannot be encoded (an old database) in the
middle of a claim is skipped, everything before and after it is delivered, and it ends in the
terminal ``rejected_local`` status with its reason, counted once.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from helpers_sync import plain_post, running_service, wait_until

from central_sync.broker import LocalMosquitto
from edge.clock import Clock
from edge.outbox import EventDraft, Outbox
from edge.outbox.bounds import (
    MAX_DICT_ITEMS,
    MAX_LIST_ITEMS,
    PAYLOAD_BUDGET,
    TRUNCATION_MARK,
    bound_payload,
    payload_wire_bytes,
)
from edge.signing import EventSigner
from edge.sync.wire import MAX_EVENT_BYTES, encode
from tests.helpers_central import IngestInThread

NODE = "pos-rt03"


def _outbox(path: Path) -> Outbox:
    return Outbox(path, NODE, clock=Clock(forced_quality="synced"))


# ---------------------------------------------------------------- record time


def test_a_small_payload_is_kept_as_is_without_reencoding() -> None:
    payload = {"button": "panic", "note": "x" * 2000}
    text = json.dumps(payload)
    kept, text2, how = bound_payload(payload, text)
    assert how is None and kept is payload and text2 is text


def test_long_strings_are_cut_with_a_marker_and_the_payload_says_truncated() -> None:
    payload = {"button": "panic", "modem_log": "AT+CSQ\r\n" * 5000, "lines": ["ok"] * 10, "rssi": -71}
    kept, text, how = bound_payload(payload, json.dumps(payload))
    assert how == "truncated"
    assert kept["truncated"] is True and kept["original_bytes"] == payload_wire_bytes(payload)
    assert kept["button"] == "panic" and kept["rssi"] == -71 and kept["lines"] == ["ok"] * 10
    assert kept["modem_log"].endswith(TRUNCATION_MARK) and len(kept["modem_log"]) < 1100
    assert payload_wire_bytes(kept) <= PAYLOAD_BUDGET and json.loads(text) == kept


def test_huge_lists_and_objects_are_cut_with_a_count_of_what_was_left_out() -> None:
    payload = {"samples": list(range(100_000)), "meta": {f"m{i}": i for i in range(5000)}}
    kept, _text, how = bound_payload(payload, json.dumps(payload))
    assert how == "truncated"
    assert kept["samples"][-1] == TRUNCATION_MARK and len(kept["samples"]) == MAX_LIST_ITEMS + 1
    assert kept["meta"][TRUNCATION_MARK] == 5000 - MAX_DICT_ITEMS
    assert payload_wire_bytes(kept) <= PAYLOAD_BUDGET


def test_a_payload_that_cannot_be_cut_to_fit_is_reduced_to_a_minimal_one() -> None:
    # Many members of short strings: cutting strings does not help.
    payload = {"button": "panic"} | {f"k{i:03d}": "v" * 60 for i in range(250)}
    kept, _text, how = bound_payload(payload, json.dumps(payload))
    assert how == "minimal"
    assert kept["truncated"] is True and "reason" in kept and kept["button"] == "panic"
    assert payload_wire_bytes(kept) <= PAYLOAD_BUDGET


@pytest.mark.parametrize("priority", [1, 3])
def test_an_oversized_event_is_stored_truncated_and_still_an_alarm(tmp_path: Path, priority: int) -> None:
    with _outbox(tmp_path / "outbox.db") as ob:
        ev = ob.record(EventDraft("PANIC", priority, {"button": "panic", "operator_text": "tolong " * 20_000},
                                  incident_id="inc-1"))
        assert (ev.type, ev.priority, ev.incident_id) == ("PANIC", priority, "inc-1")
        assert ev.payload["truncated"] is True and ev.payload["button"] == "panic"
        assert ob.get(ev.event_id) == ev  # what is stored is what was returned
        assert ob.counts()["truncated"] == 1
        signed = EventSigner(Ed25519PrivateKey.generate())(ev.envelope())
        assert len(encode(signed)) <= MAX_EVENT_BYTES  # it can leave the post


# ---------------------------------------------------------------- end to end


def test_a_truncated_event_goes_out_and_is_acked_by_central(tmp_path: Path, mosquitto: LocalMosquitto,
                                                            ingest_central: IngestInThread) -> None:
    ob = _outbox(tmp_path / "outbox.db")
    try:
        before = ob.record(EventDraft("PANIC", 1, {"button": "panic"}))
        big = ob.record(EventDraft("PANIC", 1, {"button": "panic", "camera_meta": "\u00e9" * 40_000}))
        after = ob.record(EventDraft("PANIC", 1, {"button": "panic"}))
        assert big.payload["truncated"] is True
        svc = plain_post(mosquitto.port, ob)
        with running_service(svc):
            wait_until(lambda: ob.counts()["acked"] == 3, 60, what="all three acked")
        at_central = ingest_central.events(NODE)
        assert set(at_central) == {before.event_id, big.event_id, after.event_id}
        assert at_central[big.event_id]["payload"]["truncated"] is True
        assert at_central[big.event_id]["priority"] == 1
        assert svc.stats.rejected_local == 0
    finally:
        ob.close()


def _inject_oversized(path: Path, priority: int) -> str:
    """An old database's record: a payload past the wire limit, inserted as the pre-fix writer
    did (no bound), with the next rowid, status ready."""
    conn = sqlite3.connect(path)
    try:
        rowid = conn.execute("SELECT MAX(id) + 1 FROM events").fetchone()[0]
        event_id = "0190a0a0-0000-7000-8000-00000000beef"
        conn.execute("INSERT INTO events (id, event_id, node_id, boot_id, seq, mono_ns, wall_time,"
                     " time_quality, type, priority, incident_id, payload)"
                     " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     (rowid, event_id, NODE, "old-boot", 0, 1, 1_700_000_000.0, "synced", "PANIC",
                      priority, None, json.dumps({"modem_log": "x" * (MAX_EVENT_BYTES * 2)})))
        conn.commit()
    finally:
        conn.close()
    return event_id


@pytest.mark.parametrize("priority", [1, 3])
def test_an_old_oversized_record_mid_claim_never_blocks_the_others(
        tmp_path: Path, mosquitto: LocalMosquitto, ingest_central: IngestInThread, priority: int) -> None:
    path = tmp_path / "outbox.db"
    with _outbox(path) as ob:
        first = [ob.record(EventDraft("PANIC", priority, {"i": i})).event_id for i in range(5)]
    bad = _inject_oversized(path, priority)
    ob = _outbox(path)
    try:
        last = [ob.record(EventDraft("PANIC", priority, {"i": i})).event_id for i in range(5, 10)]
        svc = plain_post(mosquitto.port, ob)
        with running_service(svc):
            wait_until(lambda: ob.counts()["acked"] == 10 and ob.counts()["rejected_local"] == 1,
                       60, what="the ten good events acked, the bad one rejected locally")
        assert set(ingest_central.events(NODE)) == set(first + last)
        rec = ob.get(bad)
        assert rec is not None and rec.status == "rejected_local"  # kept, never deleted
        assert ob.flags(bad)["rejected_local"].startswith("oversized")
        assert svc.stats.rejected_local == 1  # counted (and logged) once
        assert ob.counts()["ready"] == 0 and ob.counts()["in_flight"] == 0
    finally:
        ob.close()
    with _outbox(path) as again:  # terminal across a restart: never claimed again
        assert again.counts()["rejected_local"] == 1 and again.claim(100) == []
