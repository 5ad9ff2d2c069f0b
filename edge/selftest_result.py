"""The self-test's result vocabulary (``edge.selftest``): statuses, one check's result, options.

Apart from the checks so that every check module (``selftest_hw``, ``selftest_broker``) and the
post's update health check (``edge.update.health``) share it without importing the runner.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # pass | warn | fail | skip
    detail: str
    hint: str = ""
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.status == FAIL and self.required


@dataclass
class SelftestOptions:
    simulate: bool = False
    pin_factory: Any = None  # a gpiozero factory to use (tests); else MockFactory when simulating
    primed: bool = False  # set when we made the MockFactory: rest-state wiring is simulated
    broker_timeout: float = 5.0
    sound_siren: bool = True
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
