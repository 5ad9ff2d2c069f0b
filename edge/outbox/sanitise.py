"""Record-time sanitising of an event payload: every payload stored is one central accepts.

Central's store refuses (``central_sync/store/checks.py``, docs/central-store.md "Values the store
cannot hold") text with a lone UTF-16 surrogate or a NUL character, integers outside signed 64
bits, non-finite numbers and nesting deeper than ``MAX_PAYLOAD_DEPTH``; such an event would be
stored on the post and never delivered (``bad_text``/``out_of_range``, or ``rejected_local`` when
the post cannot even encode it). The writer thread makes the payload acceptable before the size
bound (``bounds.py``), never touching type, priority, ids, incident or timestamps
(docs/storage.md, "Values central refuses"):

* text: each lone surrogate and each NUL (keys and values, any depth) becomes U+FFFD, and the
  payload gains ``"text_replaced": true``;
* values: an integer outside int64 becomes its decimal string, NaN/Infinity become ``null``, a
  value JSON cannot encode (bytes, a datetime, ...) becomes its ``str()`` (``json.dumps``'s
  usual ``default=str``), a key JSON cannot encode its ``str()``; the payload gains
  ``"values_replaced": true``;
* nesting: a non-empty object or list at depth ``MAX_PAYLOAD_DEPTH`` (the payload is depth 0),
  and a container holding itself, is replaced with ``bounds.TRUNCATION_MARK`` like the size
  bound cuts, and the payload gains ``"truncated": true``.

Cost: the writer encodes every payload with ``STRICT_DUMPS`` (``json.dumps`` that raises on NaN
instead of writing it; same text, same speed); a raise (NaN/Infinity, a value JSON cannot encode,
a cycle, nesting past the interpreter's limit) or ``suspect(text)`` sends it here. ``suspect`` is
a few C-speed passes over that ASCII text: ``\\u`` (then ``\\ud``/``\\u0000``: surrogates and
NUL are always escaped), and one byte translation in which a run of 19 digits (every integer
outside int64 has 19 digits or more) or more than ``MAX_PAYLOAD_DEPTH`` ``{``/``[`` are found.
Then a check walk (iterative) decides whether a rebuild is needed at all: digits in strings
(a SIM's ICCID) or many small objects cost a walk, never a copy.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from edge.outbox.bounds import TEXT_REPLACED, TRUNCATION_MARK, VALUES_REPLACED
from edge.sync.wire import INT64_MAX, INT64_MIN, MAX_PAYLOAD_DEPTH

__all__ = ["STRICT_DUMPS", "Sanitised", "make_acceptable", "replace_bad_text", "suspect"]

#: ``json.dumps(payload)`` (same text) that raises ``ValueError`` on NaN/Infinity.
STRICT_DUMPS = json.JSONEncoder(allow_nan=False).encode
#: ``json.dumps`` output is ASCII: every surrogate is a ``\\udXXX`` escape, NUL is ``\\u0000``.
_ESCAPE, _SURROGATE, _NUL = "\\u", "\\ud", "\\u0000"
#: Byte classes of the JSON text: digits -> ``0``, ``{`` and ``[`` -> ``{``, the rest a space.
_CLASSES = bytes(48 if 48 <= b <= 57 else 123 if b in (91, 123) else 32 for b in range(256))
#: Every integer outside int64 has at least 19 digits (2**63 = 9223372036854775808).
_LONG_RUN = b"0" * 19
#: The escapes of ``json.dumps`` output, left to right: a surrogate pair (kept), a lone surrogate
#: or NUL (group 1: replaced), or any other escape (kept; consumed whole, so that an escaped
#: backslash followed by the letters ``ud800`` is never read as a surrogate).
_ESCAPES = re.compile(r"\\ud[89ab][0-9a-f]{2}\\ud[c-f][0-9a-f]{2}|\\u(d[89a-f][0-9a-f]{2}|0000)|\\.")
_SCALARS = (str, bool, type(None))
_SURROGATE_CHARS = re.compile("[\ud800-\udfff]")


def suspect(text: str) -> bool:
    """False when ``text`` (``STRICT_DUMPS`` output) cannot hold a value central refuses."""
    if _ESCAPE in text and (_SURROGATE in text or _NUL in text):
        return True
    return _values_suspect(text)


def _values_suspect(text: str) -> bool:
    classes = text.encode("ascii").translate(_CLASSES)
    return _LONG_RUN in classes or classes.count(b"{") > MAX_PAYLOAD_DEPTH


@dataclass(frozen=True, slots=True)
class Sanitised:
    """What ``make_acceptable`` did: the payload and its ``json.dumps`` text, and how many lone
    surrogates/NULs (``text``), values (``values``) and too-deep containers (``cut``) it replaced."""

    payload: dict[str, Any]
    text: str
    text_replaced: int = 0
    values_replaced: int = 0
    cut: int = 0


def replace_bad_text(stored_json: str) -> tuple[str, int]:
    """``stored_json`` (``json.dumps`` output) with every lone surrogate and NUL escape replaced
    with ``\\ufffd``, and how many; a surrogate pair is kept (it decodes to one character)."""
    replaced = 0

    def fix(m: re.Match[str]) -> str:
        nonlocal replaced
        if m.group(1) is None:
            return m.group(0)
        replaced += 1
        return "\\ufffd"

    text = _ESCAPES.sub(fix, stored_json)
    return (text, replaced) if replaced else (stored_json, 0)


def make_acceptable(payload: dict[str, Any], text: str | None) -> Sanitised:
    """``payload`` made acceptable to central (module doc). ``text`` is ``STRICT_DUMPS(payload)``,
    or None when that raised. Returns the arguments as they are when nothing needed replacing."""
    values = cut = 0
    if text is None or (_values_suspect(text) and _needs_rebuild(payload)):
        payload, values, cut = _rebuild(payload)
        text = json.dumps(payload)
    replaced = 0
    if _ESCAPE in text and (_SURROGATE in text or _NUL in text):
        fixed, replaced = replace_bad_text(text)
        if replaced:
            payload, text = json.loads(fixed), fixed
    if not (replaced or values or cut):
        if _SURROGATE in text and _holds_surrogates(payload):
            payload = json.loads(text)  # a pair held as two code points: the one character
        return Sanitised(payload, text)
    if replaced:  # a fresh dict from here on: ``json.loads`` or ``_rebuild`` made it
        payload[TEXT_REPLACED] = True
    if values:
        payload[VALUES_REPLACED] = True
    if cut:
        payload["truncated"] = True
    text = json.dumps(payload)
    if _SURROGATE in text:  # a pair held as two code points: store and return the one character
        payload = json.loads(text)
    return Sanitised(payload, text, replaced, values, cut)


def _holds_surrogates(payload: dict[str, Any]) -> bool:
    """Whether a string of ``payload`` (keys included) holds surrogate code points: a pair held
    as two code points encodes exactly like the one character it stands for, and decodes as
    that character, so the stored copy would differ from ``payload``. A character outside the
    BMP held as itself (an emoji) is not one: that payload is returned as it is, no copy.

    This second encoding (``ensure_ascii=False``) is the price of an emoji in a payload: the
    stored text is ``json.dumps``'s either way (the two forms write the same escapes, so the
    text cannot tell them apart), and only the returned payload depends on the answer. Kept:
    3.4-3.8 us on a 90-byte payload, against 0.5-3 ms for a ``record()`` (its SQLite commit;
    ``bench/payload_emoji.py``); a walk over the payload's strings is not cheaper, and returning
    ``json.loads(text)`` always costs about as much and copies every such payload."""
    return _SURROGATE_CHARS.search(json.dumps(payload, ensure_ascii=False)) is not None


def _bad_number(v: Any) -> bool:
    if isinstance(v, int):
        return not INT64_MIN <= v <= INT64_MAX
    return not math.isfinite(v)


def _needs_rebuild(payload: dict[str, Any]) -> bool:
    """Whether ``payload`` (which ``STRICT_DUMPS`` encoded: no cycle, NaN or foreign type) holds an
    integer outside int64 or a non-empty container at ``MAX_PAYLOAD_DEPTH``. Iterative."""
    stack: list[tuple[Any, int]] = [(payload, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            if v and depth >= MAX_PAYLOAD_DEPTH:
                return True
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list | tuple):
            if v and depth >= MAX_PAYLOAD_DEPTH:
                return True
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
            return True
    return False


def _key(k: Any) -> tuple[str, bool]:
    """A member name as ``json.dumps`` writes it (``1`` -> ``"1"``, ``nan`` -> ``"NaN"``), and
    whether JSON could not encode it at all (then ``str(k)``)."""
    if isinstance(k, str):
        return k, False
    if k is None or isinstance(k, int | float):
        return json.dumps(k), False
    return _text_of(k), True


def _text_of(v: Any) -> str:
    try:
        return str(v)
    except Exception:  # a broken __str__ must not lose the event
        return f"<{type(v).__name__}>"


def _rebuild(payload: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """A JSON-normal copy of ``payload`` (string keys, lists) with the module doc's value and
    nesting replacements; ``(copy, values replaced, containers cut)``. Iterative; a container
    that holds itself is cut where it repeats."""
    values = cut = 0
    root: dict[str, Any] = {}
    # (source container, its copy, its depth, ids of it and its ancestors)
    stack: list[tuple[Any, Any, int, frozenset[int]]] = [(payload, root, 0, frozenset({id(payload)}))]
    while stack:
        src, dst, depth, path = stack.pop()
        if isinstance(src, dict):
            items: list[tuple[Any, Any]] = list(src.items())
        else:
            items = list(enumerate(src))
        for k, v in items:
            if isinstance(v, _SCALARS):
                out: Any = v
            elif isinstance(v, int | float):
                if _bad_number(v):
                    values += 1
                    out = str(int(v)) if isinstance(v, int) else None
                else:
                    out = v
            elif isinstance(v, dict | list | tuple):
                if v and (depth + 1 >= MAX_PAYLOAD_DEPTH or id(v) in path):
                    cut += 1
                    out = TRUNCATION_MARK
                else:
                    out = {} if isinstance(v, dict) else []
                    stack.append((v, out, depth + 1, path | {id(v)}))
            else:
                values += 1
                out = _text_of(v)
            if isinstance(dst, dict):
                name, foreign = _key(k)
                values += foreign
                dst[name] = out
            else:
                dst.append(out)
    return root, values, cut
