"""The prebuilt C encoders write what ``json.dumps`` writes with the same settings (the canonical
bytes signatures cover; the payload text central's PostgreSQL store sends)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from central_sync.store.postgres_support import json_text
from edge.sync.json_encoding import c_json_encoder
from edge.sync.wire import canonical_bytes, canonical_text


def _value(rnd: random.Random, depth: int = 0) -> Any:
    k = rnd.randrange(9 if depth < 4 else 6)
    if k == 0:
        return rnd.randint(-2**70, 2**70)
    if k == 1:
        return rnd.choice([rnd.random() * 10 ** rnd.randint(-320, 308), float("nan"), float("inf"), -0.0, 1e16, 1e-5])
    if k == 2:
        return "".join(chr(rnd.choice([rnd.randrange(0, 128), rnd.randrange(128, 0x110000)]))
                       for _ in range(rnd.randrange(8)))
    if k == 3:
        return rnd.choice([True, False, None])
    if k == 4:
        return "\u2028\x00\x1f\"\\/\ud800"
    if k == 5:
        return ""
    if k == 6:
        return [_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
    return {(str(_value(rnd, 5)) if rnd.random() < 0.3 else f"k{rnd.randrange(9)}"): _value(rnd, depth + 1)
            for _ in range(rnd.randrange(5))}


def test_same_text_as_json_dumps() -> None:
    rnd = random.Random(8)
    for _ in range(3000):
        data = {"a": _value(rnd), "b": _value(rnd), "sig": "x"}
        assert canonical_text(data) == json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert json_text(data) == json.dumps(data)
        try:
            want = json.dumps({k: v for k, v in data.items() if k != "sig"}, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode()
        except UnicodeEncodeError:
            with pytest.raises(UnicodeEncodeError):
                canonical_bytes(data)
            continue
        assert canonical_bytes(data) == want


def test_same_errors_as_json_dumps_and_nothing_left_behind() -> None:
    for bad in ({"x": object()}, {1: 2, "a": 3}):
        with pytest.raises(TypeError):
            canonical_text(bad)
        with pytest.raises(TypeError):
            json.dumps(bad, sort_keys=True)
        with pytest.raises(TypeError):
            json_text({"x": object()})
    shared: dict[str, Any] = {"k": [1, 2]}
    assert canonical_text({"a": shared, "b": shared}) == '{"a":{"k":[1,2]},"b":{"k":[1,2]}}'  # not "circular"


# -- a Python without CPython's private C encoder, or with another one ---------------------------

#: The two settings in use: the canonical bytes signatures cover, and central's payload text.
SETTINGS = [dict(sort_keys=True, item_sep=",", key_sep=":", ascii_only=False),
            dict(sort_keys=False, item_sep=", ", key_sep=": ", ascii_only=True)]


def _changed_signature(*args: Any) -> Callable[[Any, int], Iterable[str]]:
    raise TypeError(f"make_encoder() takes 10 arguments ({len(args)} given)")


def _other_output(*args: Any) -> Callable[[Any, int], Iterable[str]]:
    return lambda value, level: iter([json.dumps(value, indent=1)])  # builds, but writes other text


@pytest.mark.parametrize("make", [None, _changed_signature, _other_output], ids=["absent", "signature", "output"])
@pytest.mark.parametrize("settings", SETTINGS, ids=["canonical", "payload"])
def test_without_a_usable_c_encoder_the_pure_one_writes_the_same_text(make: Any, settings: dict[str, Any]) -> None:
    fast = c_json_encoder(**settings)
    pure = c_json_encoder(**settings, make_encoder=make)
    assert isinstance(getattr(pure, "__self__", None), json.JSONEncoder)  # the fallback was taken
    assert not isinstance(getattr(fast, "__self__", None), json.JSONEncoder)  # this CPython has _json
    dumps = dict(sort_keys=settings["sort_keys"], separators=(settings["item_sep"], settings["key_sep"]),
                 ensure_ascii=settings["ascii_only"])
    rnd = random.Random(11)
    for _ in range(2000):
        data = {"a": _value(rnd), "b": _value(rnd), "sig": "x"}
        assert pure(data) == fast(data) == json.dumps(data, **dumps)  # type: ignore[arg-type]
    shared: dict[str, Any] = {"k": [1, 2]}
    assert pure({"a": shared, "b": shared}) == fast({"a": shared, "b": shared})
    for bad in ({"x": object()}, {1: 2, "a": 3}):
        if not settings["sort_keys"] and 1 in bad:
            continue  # unsorted: mixed key types are written, by both
        with pytest.raises(TypeError):
            pure(bad)
        with pytest.raises(TypeError):
            fast(bad)
