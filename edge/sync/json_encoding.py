"""``json.dumps`` at the cost of one C call: CPython's C JSON encoder built once per setting.

``JSONEncoder.encode`` builds the C encoder, a closure and a markers dict on every call; the
post's canonical bytes (``edge.sync.wire.canonical_text``) and central's PostgreSQL payload text
(``central_sync.store.postgres_support``) are written for every event, so they build it once
here. The C encoder is a private part of CPython (``_json``); without it, or when it does not
write what ``json.JSONEncoder`` writes, the pure encoder with the same settings is used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any, Protocol


class MakeEncoder(Protocol):
    """CPython's private C encoder factory (``_json.make_encoder``, ``json.encoder.c_make_encoder``)."""

    def __call__(self, markers: dict[int, Any] | None, default: Callable[[Any], Any], encoder: Callable[[str], str],
                 indent: str | None, key_separator: str, item_separator: str, sort_keys: bool, skipkeys: bool,
                 allow_nan: bool, /) -> Callable[[Any, int], Iterable[str]]: ...


#: A value with a bit of everything the encoders treat differently (key order, floats, escapes,
#: non-ASCII, nesting): a C encoder that does not write for it what ``json.dumps`` writes is not used.
_PROBE: dict[str, Any] = {"b": [1, -2.5, 1e16, float("inf"), "é\u2028\x00\"\\", None, True], "a": {"z": {}, "y": []}}


def _c_make_encoder() -> MakeEncoder | None:
    """This Python's C encoder factory, if it has one (CPython's private ``_json``)."""
    try:
        from _json import make_encoder
    except ImportError:  # pragma: no cover - not CPython
        return None
    return make_encoder


#: CPython's C encoder factory, or None on a Python without ``_json``.
C_MAKE_ENCODER = _c_make_encoder()


def c_json_encoder(*, sort_keys: bool, item_sep: str, key_sep: str, ascii_only: bool,
                   make_encoder: MakeEncoder | None = C_MAKE_ENCODER) -> Callable[[Any], str]:
    """``json.dumps`` with these settings as one call of CPython's C encoder, built ONCE:
    ``JSONEncoder.encode`` builds it, a closure and a markers dict on every call (4.7 against
    5.9 us for a 440-byte envelope). Same output (the same C function, the same settings;
    ``tests/test_json_encoders.py``); no circular-reference markers (what is encoded here comes
    from a JSON parse or ``model_dump``), and ``allow_nan`` as ``json.dumps``'s default.

    The C encoder is a private part of CPython (``_json``): on a Python without it
    (``make_encoder`` None), or where building it fails or it writes a probe value differently
    from ``json.JSONEncoder`` (a changed signature or behaviour), this returns
    ``json.JSONEncoder(...).encode`` with the same settings: the same text, a little slower."""
    pure = json.JSONEncoder(sort_keys=sort_keys, separators=(item_sep, key_sep), ensure_ascii=ascii_only,
                            check_circular=False)
    if make_encoder is None:
        return pure.encode
    quote = encode_basestring_ascii if ascii_only else encode_basestring
    try:
        encoder = make_encoder(None, pure.default, quote, None, key_sep, item_sep, sort_keys, False, True)
        if "".join(encoder(_PROBE, 0)) != pure.encode(_PROBE):
            return pure.encode
    except Exception:  # not this Python's C encoder after all
        return pure.encode
    return lambda value: "".join(encoder(value, 0))
