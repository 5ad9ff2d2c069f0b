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

Text (``replace_lone_surrogates``, before the size bound): a string with a lone UTF-16
surrogate (serial or modem bytes decoded with ``surrogateescape``, a bad ``\\ud800`` escape)
cannot be encoded as UTF-8, so neither the post nor central could send or store the event. Each
lone surrogate, in keys and values at any depth, is replaced with U+FFFD and the payload gains
``"text_replaced": true``; a surrogate pair (two code points forming one character) becomes that
character, as a JSON round trip makes it anyway. Found on the JSON the writer encodes anyway
(``json.dumps`` escapes every surrogate as ``\\udXXX``): one substring test per event, then one
regular-expression pass over that JSON and one decode, only when the test hits.

The event's type, priority, ids, incident and timestamps are never touched: an alarm stays an
alarm. Work is a constant number of passes over the payload: O(payload), on the writer thread
(``Outbox.submit``, the siren path, never waits on it).
"""

from __future__ import annotations

import json
import re
from typing import Any

from edge.sync.wire import MAX_EVENT_BYTES

__all__ = ["MAX_DEPTH", "MAX_DICT_ITEMS", "MAX_LIST_ITEMS", "PAYLOAD_BUDGET", "SURROGATE_ESCAPE", "TEXT_REPLACED",
           "TRUNCATION_MARK", "bound_payload", "payload_wire_bytes", "replace_lone_surrogates"]

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
#: Payload member added when lone surrogates were replaced with U+FFFD.
TEXT_REPLACED = "text_replaced"
#: In ``json.dumps`` output (ASCII), every surrogate code point is an escape starting with this.
SURROGATE_ESCAPE = "\\ud"
#: The escapes of ``json.dumps`` output, left to right: a surrogate pair (kept), a lone surrogate
#: (group 1: replaced), or any other escape (kept; consumed whole, so that an escaped backslash
#: followed by the letters ``ud800`` is never read as a surrogate).
_ESCAPES = re.compile(r"\\ud[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}|\\u(d[89a-f][0-9a-f]{2})|\\.")


def payload_wire_bytes(payload: dict[str, Any]) -> int:
    """Bytes of ``payload`` in the wire's canonical form (what counts against the limit)."""
    return len(_CANONICAL.encode(payload).encode("utf-8", "surrogatepass"))


def _cut(value: Any, limit: int, depth: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + TRUNCATION_MARK
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return TRUNCATION_MARK
        out = {str(k)[:limit]: _cut(v, limit, depth + 1)
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
    if payload.get(TEXT_REPLACED) is True:
        out[TEXT_REPLACED] = True
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


def replace_lone_surrogates(payload: dict[str, Any], stored_json: str) -> tuple[dict[str, Any], str, int]:
    """``(payload, stored_json, replaced)``: with every lone surrogate replaced with U+FFFD and
    ``"text_replaced": true`` added when ``replaced`` > 0, else the arguments as they are.
    ``stored_json`` is ``json.dumps(payload)`` (ASCII: every surrogate is a ``\\udXXX`` escape);
    call it only when that contains ``SURROGATE_ESCAPE``. Keys that become equal keep the last
    value."""
    replaced = 0

    def fix(m: re.Match[str]) -> str:
        nonlocal replaced
        if m.group(1) is None:
            return m.group(0)
        replaced += 1
        return "\\ufffd"

    text = _ESCAPES.sub(fix, stored_json)
    if not replaced:
        return payload, stored_json, 0
    clean = json.loads(text)
    clean[TEXT_REPLACED] = True
    return clean, json.dumps(clean), replaced
