"""Waiting on a condition in tests: poll until it holds, with a generous deadline (the suite runs
on busy machines), and fail naming what was awaited and the last value seen. Never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(pred: Callable[[], T], timeout: float = 60.0, what: str = "condition",
             interval: float = 0.05) -> T:
    """Call ``pred`` every ``interval`` s until it returns something truthy; return that value.
    ``AssertionError`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last={value!r}")
        time.sleep(interval)
