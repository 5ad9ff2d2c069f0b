"""Record-time bounds of an event payload: no event is stored that the uplink cannot send.

An envelope over ``edge.sync.wire.MAX_EVENT_BYTES`` (16 KiB, canonical JSON) can never leave the
post: central refuses it, alone or inside a batch. Payloads carry external, variable data
(modem and serial text, camera metadata, self-test output, operator text), so the writer bounds
every payload before the insert (docs/storage.md, "Oversized events"):

1. a payload whose stored JSON fits ``PAYLOAD_BUDGET`` is kept as is: one length comparison on
   the JSON the writer encodes anyway (``json.dumps`` with its defaults is never shorter than
   the wire's canonical UTF-8 form, so this test is exact on the safe side);
2. otherwise every string longer than a limit (1024, then 256, then 64 characters) is cut to
   the limit plus ``TRUNCATION_MARK``, lists to ``MAX_LIST_ITEMS`` items (then the mark), objects
   to ``MAX_DICT_ITEMS`` members (then the mark as a key, valued with the number left out) and
   nesting to ``MAX_DEPTH`` levels, and ``"truncated": true`` plus ``"original_bytes"`` are added;
3. a payload that still does not fit is replaced by the minimal one: ``truncated``,
   ``original_bytes``, ``reason`` and the top-level scalar fields that are short.

What central refuses besides size (lone surrogates, NUL, integers past int64, NaN, deep
nesting) is replaced before this bound by ``sanitise.py``; its markers (``TEXT_REPLACED``,
``VALUES_REPLACED``) are kept here, also by the minimal form.

The event's type, priority, ids, incident and timestamps are never touched: an alarm stays an
alarm. Work is a constant number of passes over the payload: O(payload), on the writer thread
(``Outbox.submit``, the siren path, never waits on it).
"""

from __future__ import annotations

import json
from typing import Any

from edge.sync.wire import MAX_EVENT_BYTES

__all__ = ["MAX_DEPTH", "MAX_DICT_ITEMS", "MAX_LIST_ITEMS", "PAYLOAD_BUDGET", "TEXT_REPLACED", "TRUNCATION_MARK",
           "VALUES_REPLACED", "bound_payload", "payload_wire_bytes"]

#: Room left for the envelope around the payload: keys, ids (64 characters each at most), node
#: id, type, timestamps and the 88-character signature take about 650 bytes at most.
ENVELOPE_RESERVE = 1024
#: Canonical payload bytes an event may carry.
PAYLOAD_BUDGET = MAX_EVENT_BYTES - ENVELOPE_RESERVE
#: Appended to every cut string.
TRUNCATION_MARK = "…[truncated]"
MAX_LIST_ITEMS = 64
MAX_DICT_ITEMS = 256
MAX_DEPTH = 8
_STRING_LIMITS = (1024, 256, 64)
_MINIMAL_KEYS = 32
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
#: Payload members added when text (lone surrogates, NUL) or values (integers past int64,
#: NaN/Infinity, what JSON cannot encode) were replaced at record time (``sanitise.py``).
TEXT_REPLACED = "text_replaced"
VALUES_REPLACED = "values_replaced"


def payload_wire_bytes(payload: dict[str, Any]) -> int:
    """Bytes of ``payload`` in the wire's canonical form (what counts against the limit)."""
    return len(_CANONICAL.encode(payload).encode("utf-8", "surrogatepass"))


def _head(text: str, limit: int) -> str:
    """``text[:limit]``, one shorter when that would split a surrogate pair held as two code
    points (a lone half could not be encoded as UTF-8)."""
    head = text[:limit]
    return head[:-1] if head and "\ud800" <= head[-1] <= "\udbff" else head


def _cut(value: Any, limit: int, depth: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else _head(value, limit) + TRUNCATION_MARK
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return TRUNCATION_MARK
        out = {_head(str(k), limit): _cut(v, limit, depth + 1)
               for k, v in list(value.items())[:MAX_DICT_ITEMS]}
        if len(value) > MAX_DICT_ITEMS:
            out[TRUNCATION_MARK] = len(value) - MAX_DICT_ITEMS  # how many members were left out
        return out
    if isinstance(value, list | tuple):
        if depth >= MAX_DEPTH:
            return TRUNCATION_MARK
        items = [_cut(v, limit, depth + 1) for v in value[:MAX_LIST_ITEMS]]
        if len(value) > MAX_LIST_ITEMS:
            items.append(TRUNCATION_MARK)
        return items
    return value


def _minimal(payload: dict[str, Any], original: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in payload.items():
        if len(out) >= _MINIMAL_KEYS:
            break
        if isinstance(k, str) and len(k) <= 64 and (
                v is None or isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 64)):
            out[k] = v
    out.update(truncated=True, original_bytes=original,
               reason="payload over the wire limit; reduced to its short top-level fields")
    for marker in (TEXT_REPLACED, VALUES_REPLACED):
        if payload.get(marker) is True:
            out[marker] = True
    if payload_wire_bytes(out) > PAYLOAD_BUDGET:  # cannot happen with the limits above
        out = {"truncated": True, "original_bytes": original, "reason": "payload over the wire limit"}
    return out


def bound_payload(payload: dict[str, Any], stored_json: str) -> tuple[dict[str, Any], str, str | None]:
    """``(payload, stored_json, how)``: the payload to store, its JSON (``json.dumps``) and
    ``None`` when kept, ``"truncated"`` when strings/lists were cut, ``"minimal"`` when reduced
    (module doc). ``stored_json`` is ``json.dumps(payload)`` (already computed by the writer)."""
    if len(stored_json) <= PAYLOAD_BUDGET:
        return payload, stored_json, None
    original = payload_wire_bytes(payload)
    if original <= PAYLOAD_BUDGET:
        return payload, stored_json, None
    for limit in _STRING_LIMITS:
        cut = _cut(payload, limit, 0)
        cut.update(truncated=True, original_bytes=original)
        if payload_wire_bytes(cut) <= PAYLOAD_BUDGET:
            return cut, json.dumps(cut), "truncated"
    small = _minimal(payload, original)
    return small, json.dumps(small), "minimal"

