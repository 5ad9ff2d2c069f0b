"""Checks of envelope values against what BOTH store backends can hold, run before a commit.

A value that passes wire validation may still be refused by the database: integers past int64
(SQLite ``INTEGER`` and PostgreSQL ``bigint`` are 64-bit signed), strings with a lone UTF-16
surrogate (not encodable as UTF-8, which both databases store), and NUL characters (PostgreSQL
``text`` and ``jsonb`` refuse U+0000). Both backends apply the same checks so that the same
envelope gets the same outcome whichever database central runs on.
"""

from __future__ import annotations

import math
from typing import Any

from edge.sync.wire import INT64_MAX, INT64_MIN, MAX_PAYLOAD_DEPTH, EventEnvelope

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_DEPTH",
    "ValueRefused",
    "check_event",
    "check_int",
    "check_json",
    "check_text",
    "safe_text",
]

#: Nesting deeper than this in a payload is refused (JSON encoders recurse). The protocol's
#: number: the post makes every payload fit it at record time (``edge/outbox/sanitise.py``).
MAX_DEPTH = MAX_PAYLOAD_DEPTH


class ValueRefused(ValueError):
    """A value the store cannot hold; ``reason`` is ``out_of_range`` or ``bad_text``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:300]


def check_text(value: str, where: str) -> None:
    if "\x00" in value:
        raise ValueRefused("bad_text", f"{where}: NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueRefused("bad_text", f"{where}: lone UTF-16 surrogate") from None


def check_int(value: int, where: str) -> None:
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueRefused("out_of_range", f"{where}: integer outside int64")


def check_json(value: Any, where: str, depth: int = 0) -> None:
    """Every string (keys too) encodable, every integer within int64, every float finite."""
    if depth > MAX_DEPTH:
        raise ValueRefused("out_of_range", f"{where}: nested deeper than {MAX_DEPTH}")
    if isinstance(value, str):
        check_text(value, where)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        check_int(value, where)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueRefused("out_of_range", f"{where}: not a finite number")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(str(key), f"{where} key")
            check_json(item, f"{where}.{str(key)[:40]!r}", depth + 1)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            check_json(item, f"{where}[{i}]", depth + 1)
    else:
        raise ValueRefused("out_of_range", f"{where}: unsupported type {type(value).__name__}")


def _encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean(value: Any, depth: int) -> bool:
    """True only when ``check_json(value, ...)`` cannot raise: exact JSON types within the
    limits (anything else, a subclass included, is left to ``check_json``). No ``where`` text
    is built: ``check_json`` formats one per member, most of its cost on a good payload."""
    t = type(value)
    if t is str:
        return "\x00" not in value and (value.isascii() or _encodable(value))
    if value is None or t is bool:
        return True
    if t is int:
        return INT64_MIN <= value <= INT64_MAX
    if t is float:
        return math.isfinite(value)
    if depth >= MAX_DEPTH:  # a container here holds members deeper than MAX_DEPTH
        return False
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or "\x00" in k or not (k.isascii() or _encodable(k)) or not _clean(v, depth + 1):
                return False
        return True
    if t is list:
        return all(_clean(v, depth + 1) for v in value)  # lists are rare in payloads
    return False


def _quick(e: EventEnvelope) -> bool:
    for text in (e.event_id, e.node_id, e.boot_id, e.time_quality, e.type):
        if type(text) is not str or "\x00" in text or not (text.isascii() or _encodable(text)):
            return False
    for opt in (e.incident_id, e.sig):
        if opt is not None and (type(opt) is not str or "\x00" in opt or not (opt.isascii() or _encodable(opt))):
            return False
    for num in (e.seq, e.mono_ns, e.priority):
        if type(num) is not int or not INT64_MIN <= num <= INT64_MAX:
            return False
    return type(e.wall_time) is float and math.isfinite(e.wall_time) and _clean(e.payload, 0)


def check_event(env: EventEnvelope) -> None:
    """Raise ``ValueRefused`` when the store could not hold this envelope. A good envelope is
    passed by one walk that formats no messages (``_quick``); anything it does not pass gets the
    full checks and their exact messages."""
    if not _quick(env):
        _check_event_fully(env)


def _check_event_fully(env: EventEnvelope) -> None:
    for name in ("event_id", "node_id", "boot_id", "time_quality", "type"):
        check_text(str(getattr(env, name)), name)
    for name in ("incident_id", "sig"):
        value = getattr(env, name)
        if value is not None:
            check_text(str(value), name)
    for name in ("seq", "mono_ns", "priority"):
        check_int(int(getattr(env, name)), name)
    if not math.isfinite(env.wall_time):
        raise ValueRefused("out_of_range", "wall_time: not a finite number")
    check_json(env.payload, "payload")


def safe_text(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` with unencodable characters and NULs replaced (for logs of bad input)."""
    cut = value[:limit].replace("\x00", "\ufffd")
    return cut.encode("utf-8", "replace").decode("utf-8")
