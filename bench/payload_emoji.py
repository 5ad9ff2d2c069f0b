"""What an astral character (an emoji) in an event payload costs the post at record time.

    .venv/bin/python bench/payload_emoji.py

Prints, for a 90-byte payload without and with one emoji: the writer's payload checks
(``STRICT_DUMPS``, ``suspect`` and, when it flags the text, ``make_acceptable``; ``timeit``
minimum of 7 runs), the part of them that is ``sanitise._holds_surrogates`` (the second
``json.dumps``), and ``Outbox.record`` end to end (median of 5 rounds of 100, SQLite commit
included) for scale.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.clock import Clock
from edge.outbox import EventDraft, Outbox
from edge.outbox.sanitise import STRICT_DUMPS, _holds_surrogates, make_acceptable, suspect

PLAIN = {"button": "panic", "note": "kebakaran di RT 03, warga berkumpul", "n": 3, "zone": "utara"}
EMOJI = {"button": "panic", "note": "\U0001f525 kebakaran di RT 03, warga berkumpul", "n": 3, "zone": "utara"}


def _checks(payload: dict[str, Any]) -> object:
    text = STRICT_DUMPS(payload)
    return make_acceptable(payload, text) if suspect(text) else text


def _us(fn: Callable[[], object], n: int = 20_000) -> float:
    return min(timeit.repeat(fn, number=n, repeat=7)) / n * 1e6


def main() -> None:
    for name, payload in (("plain", PLAIN), ("emoji", EMOJI)):
        print(f"{name}: writer checks {_us(lambda p=payload: _checks(p)):.2f} us, "
              f"_holds_surrogates {_us(lambda p=payload: _holds_surrogates(p)):.2f} us")
    with tempfile.TemporaryDirectory() as d:
        ob = Outbox(Path(d) / "outbox.db", "pos-rt03", clock=Clock(forced_quality="synced"))
        took: dict[str, list[float]] = {"plain": [], "emoji": []}
        for _ in range(5):
            for name, payload in (("plain", PLAIN), ("emoji", EMOJI)):
                t = time.perf_counter()
                for _ in range(100):
                    ob.record(EventDraft("PATROLI", 4, payload))
                took[name].append((time.perf_counter() - t) / 100 * 1e6)
        ob.close()
    for name, xs in took.items():
        print(f"{name}: record() {statistics.median(xs):.0f} us (median of 5 rounds of 100)")


if __name__ == "__main__":
    main()
