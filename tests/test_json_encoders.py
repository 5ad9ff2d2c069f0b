"""The prebuilt C encoders write what ``json.dumps`` writes with the same settings (the canonical
bytes signatures cover; the payload text central's PostgreSQL store sends)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from central_sync.store.postgres_support import json_text
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
