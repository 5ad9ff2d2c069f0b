"""The siren's own tests (``[siren.self_test]``, docs/desk.md "Siren tests").

* **Silent, daily** at ``silent_at`` (local time): the siren player is alive, the relay output
  reads back off, and with a feedback input (``feedback_pin``: an auxiliary contact of the relay
  or a current sensor) the feedback reads off too; with ``pulse_ms`` the relay is closed for a few
  milliseconds, too short to sound, and the feedback must follow it and fall back.
* **Audible, monthly** on ``audible_day`` at ``audible_at``: ``audible_pattern`` sounds for
  ``audible_seconds`` (P4) while the relay (and the feedback) are watched; then only that
  activation is stopped.

A test never delays an alarm: it does not start while the siren sounds (it is put off by
``retry_minutes``), a ``play()`` pre-empts the audible test and the pulse at once (the test then
counts as interrupted and runs again later), and nothing here holds the siren's lock.

A passed test is recorded as a ``SIREN_TEST`` event (P4), a failed one as ``SIREN_FAULT`` (P2),
both with ``{"test": "silent"|"audible", "checks": {...}, "detail": ...}``; they reach central
like every event, and the desk shows the last pass and the last fault per post.
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any, Literal

from edge.config import SirenSelfTest
from edge.drivers.siren import SirenPlayer, Trigger
from edge.incidents import Priority, SystemEvent
from edge.logs import log_event
from edge.outbox import EventDraft
from edge.patterns import parse_pattern

log = logging.getLogger("kentongan.siren_tests")

TestKind = Literal["silent", "audible"]
Outcome = Literal["pass", "fault", "deferred", "skipped"]
#: How often the audible test samples the relay and the feedback.
SAMPLE_S = 0.02
#: Longest sleep of the scheduler before it looks at the clock again (clock steps, NTP).
MAX_SLEEP_S = 60.0


@dataclass
class TestResult:
    test: TestKind
    outcome: Outcome
    detail: str
    checks: dict[str, bool] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"test": self.test, "outcome": self.outcome, "detail": self.detail, "checks": self.checks}


def next_daily(now: datetime, at: dtime) -> datetime:
    """The first ``at`` strictly after ``now`` (naive local times)."""
    today = now.replace(hour=at.hour, minute=at.minute, second=at.second, microsecond=0)
    return today if today > now else today + timedelta(days=1)


def next_monthly(now: datetime, day: int, at: dtime) -> datetime:
    """The first ``day`` of a month at ``at`` strictly after ``now`` (day <= 28: every month)."""
    this = now.replace(day=day, hour=at.hour, minute=at.minute, second=at.second, microsecond=0)
    if this > now:
        return this
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return this.replace(year=year, month=month, day=min(day, calendar.monthrange(year, month)[1]))


def open_feedback(cfg: SirenSelfTest, pin_factory: Any) -> tuple[Callable[[], bool], Callable[[], None]] | None:
    """The feedback input (reader, closer), or None when none is wired."""
    if cfg.feedback_pin is None:
        return None
    from gpiozero import DigitalInputDevice

    dev = DigitalInputDevice(cfg.feedback_pin, pull_up=cfg.feedback_pull_up, pin_factory=pin_factory)
    return (lambda: bool(dev.value)), dev.close


def build_tester(cfg: SirenSelfTest, siren: SirenPlayer, pin_factory: Any, record: Callable[[EventDraft], Any],
                 closers: list[Callable[[], None]]) -> SirenTester:
    """The post's tester (the agent's hook). A feedback input that cannot be opened is a
    SIREN_FAULT; the tests then run without it and the post carries on."""
    try:
        feedback = open_feedback(cfg, pin_factory)
    except Exception as exc:
        log_event(log, "siren_feedback_unavailable", logging.ERROR, error=str(exc)[:200])
        record(EventDraft(SystemEvent.SIREN_FAULT.value, int(Priority.P2), {
            "test": "feedback", "outcome": "fault", "detail": f"feedback input: {exc}"[:200]}))
        feedback = None
    if feedback is not None:
        closers.append(feedback[1])
    return SirenTester(cfg, siren, record, feedback=feedback[0] if feedback else None)


class SirenTester:
    """Runs the tests on schedule (``run``) or on demand (``silent`` / ``audible``)."""

    def __init__(self, cfg: SirenSelfTest, siren: SirenPlayer, record: Callable[[EventDraft], Any], *,
                 feedback: Callable[[], bool] | None = None,
                 now: Callable[[], datetime] = datetime.now) -> None:
        self.cfg, self.siren, self.record = cfg, siren, record
        self.feedback = feedback
        self.now = now
        self.last: dict[TestKind, TestResult] = {}

    # -- the tests -----------------------------------------------------------------------------
    def silent(self) -> TestResult:
        """Blocking (a pulse sleeps a few ms): call from a worker thread."""
        if self.siren.state().playing:
            return TestResult("silent", "deferred", "siren sounding")
        checks = {"player_alive": self.siren.alive(), "relay_reads_off": not self.siren.state().relay_on}
        if self.feedback is not None:
            checks["feedback_reads_off"] = not self.feedback()
            if self.cfg.pulse_ms > 0 and all(checks.values()):
                seen = self.siren.pulse(self.cfg.pulse_ms / 1000, self.feedback)
                if seen is None or self.siren.state().playing:
                    return TestResult("silent", "deferred", "siren sounding", checks)
                checks["feedback_follows_pulse"] = seen
                checks["feedback_released"] = not self.feedback()
                checks["relay_released"] = not self.siren.state().relay_on
        failed = [k for k, v in checks.items() if not v]
        return TestResult("silent", "fault" if failed else "pass",
                          f"failed: {', '.join(failed)}" if failed else "relay read back", checks)

    async def audible(self) -> TestResult:
        cfg = self.cfg
        if self.siren.state().playing:
            return TestResult("audible", "deferred", "siren sounding")
        act = self.siren.play(parse_pattern(cfg.audible_pattern), Trigger("test", "audible_self_test", "TEST"),
                              priority=int(Priority.P4), max_seconds=cfg.audible_seconds + 2)
        if act.suppressed == "busy":
            return TestResult("audible", "deferred", "siren sounding")
        if act.suppressed is not None:
            return TestResult("audible", "skipped", f"not sounded: {act.suppressed}")
        relay_on = feedback_on = feedback_ok = False
        loop = asyncio.get_running_loop()
        end = loop.time() + cfg.audible_seconds
        interrupted = False
        while loop.time() < end:
            state = self.siren.state()
            if state.activation_id != act.activation_id:
                interrupted = state.playing  # an alarm took over; a finished pattern is fine
                break
            relay_on = relay_on or state.relay_on
            if self.feedback is not None:
                fb = self.feedback()
                feedback_on = feedback_on or fb
                feedback_ok = feedback_ok or (fb and state.relay_on)
            await asyncio.sleep(SAMPLE_S)
        self.siren.stop("self_test_end", Trigger("test", "audible_self_test"),
                        activation_ids=frozenset({act.activation_id}))
        if interrupted:
            return TestResult("audible", "deferred", "interrupted by an alarm")
        relay_on = relay_on or any(on for t, on in self.siren.state().history if t >= act.started_mono)
        checks = {"relay_switched_on": relay_on, "relay_released": not self.siren.state().relay_on
                  or self.siren.state().playing}
        if self.feedback is not None:
            checks["feedback_followed"] = feedback_ok and feedback_on
        failed = [k for k, v in checks.items() if not v]
        return TestResult("audible", "fault" if failed else "pass",
                          f"failed: {', '.join(failed)}" if failed else f"sounded {cfg.audible_seconds:g} s", checks)

    def report(self, result: TestResult) -> None:
        """Record the result as an event (nothing for a deferred test) and log it."""
        self.last[result.test] = result
        log_event(log, "siren_self_test", logging.WARNING if result.outcome == "fault" else logging.INFO,
                  **result.payload())
        if result.outcome == "pass":
            self.record(EventDraft(SystemEvent.SIREN_TEST.value, int(Priority.P4), result.payload()))
        elif result.outcome == "fault":
            self.record(EventDraft(SystemEvent.SIREN_FAULT.value, int(Priority.P2), result.payload()))

    async def run_test(self, test: TestKind) -> TestResult:
        try:
            result = await (asyncio.to_thread(self.silent) if test == "silent" else self.audible())
        except Exception as exc:  # a broken relay driver is a fault, not a crash
            result = TestResult(test, "fault", f"error: {exc!r}"[:200])
        self.report(result)
        return result

    # -- schedule ------------------------------------------------------------------------------
    def schedule(self, now: datetime) -> dict[TestKind, datetime]:
        out: dict[TestKind, datetime] = {}
        if self.cfg.silent_enabled:
            out["silent"] = next_daily(now, self.cfg.silent_at)
        if self.cfg.audible_day is not None:
            out["audible"] = next_monthly(now, self.cfg.audible_day, self.cfg.audible_at)
        return out

    async def run(self) -> None:
        """Run the tests when due, until cancelled."""
        due = self.schedule(self.now())
        if not due:
            return
        while True:
            test, when = min(due.items(), key=lambda kv: kv[1])
            wait = (when - self.now()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, MAX_SLEEP_S))
                continue
            started = time.monotonic()
            result = await self.run_test(test)
            now = self.now()
            if result.outcome == "deferred":
                due[test] = now + timedelta(minutes=self.cfg.retry_minutes)
            else:
                due[test] = self.schedule(now)[test]
            log_event(log, "siren_self_test_next", test=test, at=due[test].isoformat(timespec="minutes"),
                      took_s=round(time.monotonic() - started, 3))
