"""Every payload the post stores is one central accepts (docs/storage.md, "Values central
refuses"): NUL characters, integers outside int64, NaN/Infinity, values JSON cannot encode and
nesting deeper than central's limit are replaced at record time (``edge.outbox.sanitise``), the
payload marked, type/priority/ids untouched; each such alarm is acknowledged by a real central
over a real Mosquitto instead of being refused there. A property test feeds generated nested
values (lone surrogates, NUL, huge integers, non-finite floats, deep nesting) through the
writer's decision and central's own decoder and value checks.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import pytest
from helpers_sync import plain_post, running_service, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central_sync.broker import LocalMosquitto
from central_sync.ingest_decode import decode_events
from central_sync.store.checks import check_event
from edge.clock import Clock
from edge.outbox import EventDraft, Outbox
from edge.outbox.bounds import TEXT_REPLACED, TRUNCATION_MARK, VALUES_REPLACED
from edge.outbox.sanitise import STRICT_DUMPS, Sanitised, make_acceptable, suspect
from edge.sync.wire import DEFAULT_PREFIX, INT64_MAX, INT64_MIN, MAX_PAYLOAD_DEPTH, EventEnvelope, Topics, encode
from tests.helpers_central import IngestInThread

NODE = "pos-rt03"
#: What a serial device's bytes become when decoded with ``surrogateescape``.
SERIAL = b"\xffRING\xfe OK".decode("utf-8", "surrogateescape")


def _outbox(path: Path) -> Outbox:
    return Outbox(path, NODE, clock=Clock(forced_quality="synced"))


def _nest(value: Any, levels: int, as_list: bool = False) -> Any:
    for _ in range(levels):
        value = [value] if as_list else {"d": value}
    return value


def _depth(value: Any) -> int:
    """Deepest level of a value (the payload itself is 0), as central counts it."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _as_writer(payload: dict[str, Any]) -> Sanitised:
    """The writer thread's decision (``Writer.insert``): the strict encoding, then
    ``make_acceptable`` only when it raised or ``suspect`` says so."""
    try:
        text: str | None = STRICT_DUMPS(payload)
    except (ValueError, TypeError, RecursionError):
        text = None
    if text is None or suspect(text):
        return make_acceptable(payload, text)
    return Sanitised(payload, text)


def _envelope(payload: dict[str, Any]) -> EventEnvelope:
    return EventEnvelope(event_id="0190a0a0-0000-7000-8000-000000000001", node_id=NODE, boot_id="b",
                         seq=1, mono_ns=1, wall_time=1_700_000_000.0, time_quality="synced",
                         type="PANIC", priority=1, incident_id="inc-1", payload=payload)


def _central_accepts(sent: dict[str, Any]) -> None:
    """Central's decoder (fast and full path) and its store checks take this payload."""
    env = _envelope(sent)
    check_event(env)  # raises ValueRefused
    topics = Topics(DEFAULT_PREFIX)
    got = decode_events(topics, topics.up(NODE, "event"), encode(env))
    assert not got.bad and len(got.good) == 1 and got.good[0].env.payload == sent


# ---------------------------------------------------------------- what is replaced


def test_nul_characters_in_keys_and_values_become_u_fffd() -> None:
    done = _as_writer({"modem": "AT\x00OK", "deep": [{"k\x00": "v"}], "n": 1})
    assert done.payload == {"modem": "AT\ufffdOK", "deep": [{"k\ufffd": "v"}], "n": 1, TEXT_REPLACED: True}
    assert done.text_replaced == 2 and json.loads(done.text) == done.payload
    _central_accepts(done.payload)


def test_integers_outside_int64_become_their_decimal_string() -> None:
    big, small = 2**64 + 5, -(2**63) - 1
    done = _as_writer({"counter": big, "list": [1, small], "ok": [INT64_MAX, INT64_MIN]})
    assert done.payload == {"counter": str(big), "list": [1, str(small)], "ok": [INT64_MAX, INT64_MIN],
                            VALUES_REPLACED: True}
    assert done.values_replaced == 2
    _central_accepts(done.payload)


def test_nan_and_infinity_become_null() -> None:
    done = _as_writer({"rssi": math.nan, "deep": {"a": [math.inf, -math.inf, 1.5]}, "nan key": {math.nan: 1}})
    assert done.payload == {"rssi": None, "deep": {"a": [None, None, 1.5]}, "nan key": {"NaN": 1},
                            VALUES_REPLACED: True}
    _central_accepts(done.payload)


def test_values_json_cannot_encode_become_text() -> None:
    when = dt.datetime(2026, 11, 30, 1, 2, 3)
    done = _as_writer({"raw": b"\xffRING", "at": when, (1, 2): "tuple key", 7: "int key"})
    assert done.payload == {"raw": str(b"\xffRING"), "at": str(when), "(1, 2)": "tuple key", "7": "int key",
                            VALUES_REPLACED: True}
    _central_accepts(done.payload)


@pytest.mark.parametrize("as_list", [False, True])
def test_nesting_past_centrals_limit_is_cut_with_the_mark(as_list: bool) -> None:
    deep = {"keep": 1, "deep": _nest("bottom", 40, as_list)}
    done = _as_writer(deep)
    assert done.cut == 1 and done.payload["truncated"] is True and done.payload["keep"] == 1
    assert _depth(done.payload) == MAX_PAYLOAD_DEPTH
    assert json.dumps(TRUNCATION_MARK) in done.text
    _central_accepts(done.payload)


def test_nesting_up_to_the_limit_and_int64_bounds_are_kept_as_they_are() -> None:
    at_limit = {"deep": _nest("bottom", MAX_PAYLOAD_DEPTH - 1), "ints": [INT64_MAX, INT64_MIN],
                "iccid": "8962" + "1" * 16}
    assert _depth(at_limit) == MAX_PAYLOAD_DEPTH and suspect(json.dumps(at_limit))  # a check, no change
    done = _as_writer(at_limit)
    assert done.payload is at_limit and done == Sanitised(at_limit, json.dumps(at_limit))
    _central_accepts(at_limit)


def test_a_cycle_and_recursion_past_the_interpreter_are_cut() -> None:
    loop: dict[str, Any] = {"name": "loop"}
    loop["self"] = loop
    done = _as_writer({"a": loop, "b": [loop, loop]})
    assert done.payload["a"] == {"name": "loop", "self": TRUNCATION_MARK}
    assert done.payload["b"] == [{"name": "loop", "self": TRUNCATION_MARK}] * 2
    _central_accepts(done.payload)
    very = _as_writer({"x": _nest(1, 5000, as_list=True)})  # json.dumps raises RecursionError
    assert very.payload["truncated"] is True
    _central_accepts(very.payload)


def test_a_normal_payload_is_not_even_looked_at() -> None:
    for payload in ({}, {"button": "utama", "pressed_ms": 1234, "lat": -6.2, "note": "ronda malam"},
                    {"é": "café", "ids": list(range(30)), "at": 1_700_000_000.123}):
        assert not suspect(json.dumps(payload))
    emoji = {"note": "tolong \U0001F6A8"}  # escaped as a surrogate pair: one regex pass, no copy
    assert suspect(json.dumps(emoji)) and _as_writer(emoji).payload is emoji


# ---------------------------------------------------------------- property: central accepts it


_CHARS = st.characters(exclude_categories=[])  # surrogates included
_TEXT = st.text(_CHARS, max_size=6) | st.sampled_from(["\x00", "a\x00b", "\ud800", "\udc80x", SERIAL])
_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
            | st.sampled_from([2**63, -(2**63) - 1, INT64_MAX, INT64_MIN]) | st.floats() | _TEXT)
_KEYS = _TEXT | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.booleans()
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(_KEYS, inner, max_size=4), max_leaves=12)
_PAYLOADS = st.builds(lambda members, deep, levels, as_list: {**members, "deep": _nest(deep, levels, as_list)},
                      st.dictionaries(_KEYS, _VALUES, max_size=5), _VALUES, st.integers(0, 40), st.booleans())


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PAYLOADS)
def test_central_accepts_whatever_the_writer_stores(payload: dict[str, Any]) -> None:
    done = _as_writer(payload)
    sent = json.loads(done.text)  # what the uplink sends: the stored JSON
    if done.payload is not payload:
        assert sent == done.payload
    _central_accepts(sent)


# ---------------------------------------------------------------- record time and a real central


_KINDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {  # recorded, as stored and at central
    "nul": ({"modem": "AT\x00OK"}, {"modem": "AT\ufffdOK", TEXT_REPLACED: True}),
    "big int": ({"counter": 2**64}, {"counter": str(2**64), VALUES_REPLACED: True}),
    "nan": ({"rssi": math.nan, "temp": -math.inf}, {"rssi": None, "temp": None, VALUES_REPLACED: True}),
    "bytes": ({"raw": b"\x01"}, {"raw": "b'\\x01'", VALUES_REPLACED: True}),
    "deep": ({"deep": _nest(1, 40)}, {"deep": _nest(TRUNCATION_MARK, MAX_PAYLOAD_DEPTH - 1), "truncated": True}),
}


def test_each_kind_is_stored_acceptable_and_still_an_alarm(tmp_path: Path) -> None:
    with _outbox(tmp_path / "outbox.db") as ob:
        first = ob.record(EventDraft("PANIC", 1, {"button": "utama"}))
        for n, (recorded, stored) in enumerate(_KINDS.values(), start=1):
            ev = ob.record(EventDraft("PANIC", 1, recorded, incident_id="inc-9"))
            assert (ev.type, ev.priority, ev.incident_id, ev.seq) == ("PANIC", 1, "inc-9", first.seq + n)
            assert ev.payload == stored and ob.get(ev.event_id) == ev  # returned = stored
        counts = ob.counts()
        assert (counts["text_replaced"], counts["values_replaced"], counts["truncated"]) == (1, 3, 1)
        assert ob.get(first.event_id) == first and VALUES_REPLACED not in first.payload


def test_each_kind_is_delivered_and_acked_by_central(tmp_path: Path, mosquitto: LocalMosquitto,
                                                     ingest_central: IngestInThread) -> None:
    ob = _outbox(tmp_path / "outbox.db")
    try:
        ids = {kind: ob.record(EventDraft("PANIC", 1, recorded, incident_id=f"inc-{i}")).event_id
               for i, (kind, (recorded, _)) in enumerate(_KINDS.items())}
        normal = ob.record(EventDraft("PATROLI", 4, {"pos": 3})).event_id
        svc = plain_post(mosquitto.port, ob)
        with running_service(svc):
            wait_until(lambda: ob.counts()["acked"] == len(ids) + 1, 60, what="every event acked")
        at_central = ingest_central.events(NODE)
        for i, (kind, (_, stored)) in enumerate(_KINDS.items()):
            got = at_central[ids[kind]]
            assert got["payload"] == stored, kind
            assert (got["type"], got["priority"], got["incident_id"]) == ("PANIC", 1, f"inc-{i}")
        assert at_central[normal]["payload"] == {"pos": 3}
        assert svc.stats.rejected_local == 0 and ob.counts()["rejected_local"] == 0
    finally:
        ob.close()


def test_a_payload_json_cannot_encode_no_longer_fails_the_alarms_of_its_batch(tmp_path: Path) -> None:
    """``json.dumps`` raising in the writer used to fail every receipt of its batch with
    ``StorageError``, PANICs queued next to it included."""
    with _outbox(tmp_path / "outbox.db") as ob:
        receipts = [ob.submit(EventDraft("PANIC", 1, {"i": i})) for i in range(3)]
        receipts.append(ob.submit(EventDraft("PATROLI", 4, {"raw": b"x", "rssi": math.nan})))
        receipts.append(ob.submit(EventDraft("PANIC", 1, {"i": 3})))
        stored = [r.result(10) for r in receipts]
        assert [e.payload for e in stored] == [{"i": 0}, {"i": 1}, {"i": 2},
                                               {"raw": "b'x'", "rssi": None, VALUES_REPLACED: True}, {"i": 3}]
        assert [e.seq for e in stored] == list(range(stored[0].seq, stored[0].seq + 5))
