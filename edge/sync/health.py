"""Health of the sync service: what ``status``, the heartbeat, the systemd watchdog and the log
say about it, plus the supervisor that keeps the service running.

* :class:`SyncHealth` is the one record of the service's state (``starting``, ``connected``,
  ``retrying``, ``restarting``) and of the cause of the last failure (``reason`` such as
  ``key_unreadable``, ``unreachable``, ``refused``, ``crashed``, and a one-line ``error``).
* :class:`RateLimitedLog` logs a repeating failure once when it starts or changes cause, then at
  most once per ``interval`` with the number of repeats in between (``repeats``), so a post that
  cannot connect for a week says why without filling the SD card. (A dozen lines: no library
  matches "structured event + count of suppressed repeats" better than this.)
* :func:`supervise` runs a coroutine factory forever: a task that ends with an exception is logged
  with its cause and started again after a capped, jittered exponential delay; it is never left
  dead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from edge.logs import log_event

__all__ = ["RateLimitedLog", "SyncHealth", "classify", "supervise"]

log = logging.getLogger(__name__)


def classify(exc: BaseException) -> str:
    """A short machine-readable cause for a failed connection attempt."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason  # TransportError / WireError carry their own
    text = str(exc).lower()
    if any(s in text for s in ("refused", "unreachable", "no route", "errno 111", "errno 113")):
        return "unreachable"
    if "timed out" in text or isinstance(exc, TimeoutError):
        return "timeout"
    if any(s in text for s in ("not authorized", "bad user name", "banned", "certificate",
                               "ssl", "tls")):
        return "refused"
    if isinstance(exc, PermissionError):
        return "permission_denied"
    return type(exc).__name__


@dataclass
class SyncHealth:
    state: str = "starting"  # starting | connected | retrying | restarting | stopped
    reason: str | None = None
    error: str | None = None
    failures: int = 0  # consecutive failed attempts (0 once connected)
    restarts: int = 0  # times the supervisor restarted the service after a crash
    since: float = field(default_factory=time.time)  # wall time of the last state change
    last_ok: float | None = None

    def set(self, state: str, reason: str | None = None, error: str | None = None) -> None:
        if state != self.state or reason != self.reason:
            self.since = time.time()
        self.state = state
        self.reason = reason
        self.error = error[:300] if error else None
        if state == "connected":
            self.failures = 0
            self.last_ok = time.time()

    def problem(self) -> str | None:
        """One line for systemd's STATUS= when sync is not working, else None."""
        if self.state in ("connected", "starting"):
            return None
        return f"sync {self.state}: {self.reason or '?'}" + (f" ({self.error})" if self.error else "")

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "error": self.error,
                "failures": self.failures, "restarts": self.restarts,
                "since": round(self.since, 3),
                "last_ok": None if self.last_ok is None else round(self.last_ok, 3)}


class RateLimitedLog:
    """Log ``event`` when its ``key`` changes, else at most once per ``interval`` seconds."""

    def __init__(self, logger: logging.Logger, event: str, interval: float = 300.0,
                 level: int = logging.ERROR,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.event = event
        self.interval = interval
        self.level = level
        self._mono = monotonic
        self._key: str | None = None
        self._last = -1e18
        self.repeats = 0
        self.emitted = 0

    def __call__(self, key: str, **fields: Any) -> bool:
        """True when a line was written."""
        now = self._mono()
        if key == self._key and now - self._last < self.interval:
            self.repeats += 1
            return False
        log_event(self.logger, self.event, self.level, cause=key, repeats=self.repeats, **fields)
        self._key, self._last, self.repeats = key, now, 0
        self.emitted += 1
        return True

    def reset(self) -> None:
        self._key = None
        self.repeats = 0


async def supervise(name: str, factory: Callable[[], Awaitable[None]], *,
                    on_crash: Callable[[BaseException, float], None] | None = None,
                    min_delay: float = 1.0, max_delay: float = 60.0,
                    rng: random.Random | None = None) -> None:
    """Run ``factory()`` until cancelled; restart it after a crash (or an unexpected return) with
    a jittered exponential delay (reset after it ran for ``max_delay`` seconds)."""
    rng = rng or random.Random()
    failures = 0
    limiter = RateLimitedLog(log, "task_crashed", interval=max_delay * 5)
    while True:
        started = time.monotonic()
        try:
            await factory()
            exc: BaseException = RuntimeError(f"{name} returned")
        except asyncio.CancelledError:
            raise
        except Exception as e:
            exc = e
        if time.monotonic() - started > max_delay:
            failures = 0
        delay = rng.uniform(min_delay, min(max_delay, min_delay * 2 ** failures))
        failures += 1
        limiter(f"{name}:{type(exc).__name__}", task=name, error=repr(exc)[:300],
                retry_in_s=round(delay, 2),
                traceback="".join(traceback.format_exception(exc))[-2000:])
        if on_crash is not None:
            on_crash(exc, delay)
        await asyncio.sleep(delay)
