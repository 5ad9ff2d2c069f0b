"""``check_event``'s quick pass refuses exactly what the full checks refuse, with their messages."""

from __future__ import annotations

import random
from typing import Any

from central_sync.store.checks import MAX_DEPTH, ValueRefused, _check_event_fully, check_event
from edge.sync.wire import EventEnvelope

_GOOD: dict[str, Any] = {"event_id": "0" * 32, "node_id": "pos-a", "boot_id": "b", "seq": 1, "mono_ns": 2,
                         "wall_time": 3.0, "time_quality": "synced", "type": "STATUS", "priority": 3,
                         "incident_id": None, "sig": "c2ln", "payload": {"note": "x"}}


def _value(rnd: random.Random, depth: int = 0) -> Any:
    k = rnd.randrange(12 if depth < MAX_DEPTH + 3 else 8)
    return [lambda: rnd.choice([0, -(2**63), 2**63 - 1, 2**63, -(2**63) - 1, True, None]),
            lambda: rnd.choice([1.5, float("nan"), float("inf"), -0.0]),
            lambda: rnd.choice(["", "ok", "é", "a\x00b", "\ud800", "\U0001f600"]),
            lambda: (1, "t"),
            lambda: b"raw",
            lambda: 7,
            lambda: "plain",
            lambda: 2.0,
            lambda: [_value(rnd, depth + 1) for _ in range(rnd.randrange(3))],
            lambda: {rnd.choice(["k", "é", "a\x00", "\udc80", 5]): _value(rnd, depth + 1)
                     for _ in range(rnd.randrange(3))},
            lambda: _nest(rnd.randrange(MAX_DEPTH - 2, MAX_DEPTH + 3)),
            lambda: {"k": _value(rnd, depth + 1)}][k]()


def _nest(n: int) -> Any:
    value: Any = 1
    for i in range(n):
        value = {"k": value} if i % 2 else [value]
    return value


def _outcome(check: Any, env: EventEnvelope) -> str | None:
    try:
        check(env)
    except ValueRefused as exc:
        return str(exc)
    except (TypeError, ValueError, OverflowError) as exc:  # what a model_construct field can make int() do
        return f"{type(exc).__name__}: {exc}"
    return None


def test_quick_pass_agrees_with_the_full_checks() -> None:
    rnd = random.Random(3)
    refused = 0
    for _ in range(4000):
        fields = dict(_GOOD)
        fields["payload"] = {"a": _value(rnd)}
        if rnd.random() < 0.3:
            name = rnd.choice(["event_id", "boot_id", "type", "incident_id", "sig", "seq", "mono_ns", "wall_time"])
            fields[name] = _value(rnd, MAX_DEPTH)
        env = EventEnvelope.model_construct(**fields)
        want = _outcome(_check_event_fully, env)
        assert _outcome(check_event, env) == want, fields
        refused += want is not None
    assert 500 < refused < 3500  # both outcomes well covered
