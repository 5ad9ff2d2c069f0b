"""The post's own check of a new version, and the crash-loop rule.

Agent side (``agent_health``, the control-socket op ``update_health``, run INSIDE the restarted
agent, which holds the pins): chirp the siren relay and read back that it switched on and off,
read every button line (an NC loop must be closed), open the outbox (count it), then record a
SELFTEST event ``{"kind": "update", "version": ...}``. ``event_status`` reports that event's
outbox status so the updater can wait for central's acknowledgement.

Updater side (``HealthChecker``): within the window (default 300 s) the new version must answer
on the control socket with its version, be connected to the broker (when sync is on), pass the
agent checks and get its event acknowledged by central. Failing any of that, or crash-looping
(``crash_loop_restarts`` restarts within ``crash_loop_seconds``), is a failed trial.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from edge import __version__
from edge.drivers.siren import Trigger
from edge.errors import ControlError
from edge.incidents import IncidentType, Priority, SystemEvent
from edge.outbox import EventDraft
from edge.selftest import FAIL, PASS, WARN, CheckResult

# -- agent side ------------------------------------------------------------------------------


async def agent_health(agent: Any, req: dict[str, Any]) -> dict[str, Any]:
    """Control op ``update_health`` (the agent passes itself)."""
    cfg = agent.cfg
    checks: list[CheckResult] = []
    siren = agent.hw.siren
    if siren.state().playing:
        checks.append(CheckResult("siren", PASS, "busy with an alarm: not chirped"))
    else:
        t0 = time.monotonic()
        limit = cfg.siren.test_max_seconds
        act = siren.play(cfg.siren.pattern_for(IncidentType.TEST),
                         Trigger("test", "update-health", "TEST"), priority=3, max_seconds=limit)
        deadline = t0 + limit + 2.0
        read_on = False  # the relay pin read back high at least once during the chirp
        while time.monotonic() < deadline:
            st = siren.state()
            read_on = read_on or st.relay_on
            if not st.playing:
                break
            await asyncio.sleep(0.01)
        st = siren.state()
        toggled = [on for t, on in st.history if t >= t0]
        if act.suppressed:
            checks.append(CheckResult("siren", FAIL, f"chirp suppressed ({act.suppressed})"))
        elif read_on and True in toggled and False in toggled and not st.relay_on:
            checks.append(CheckResult("siren", PASS, "relay pin read back on, then off"))
        else:
            checks.append(CheckResult("siren", FAIL, f"relay pin never read back on "
                                      f"(commanded {toggled}, now {st.relay_on})"))
    for name, w in agent.buttons.items():
        pressed = w.is_pressed
        if w.cfg.normally_closed and pressed:
            checks.append(CheckResult(f"button {name}", FAIL, "NC loop open"))
        elif pressed:
            checks.append(CheckResult(f"button {name}", WARN, "closed at rest", required=False))
        else:
            checks.append(CheckResult(f"button {name}", PASS, "line at rest"))
    try:
        counts = await asyncio.to_thread(agent.outbox.counts)
        checks.append(CheckResult("outbox", PASS, f"open, {counts.get('ready', 0)} ready"))
    except Exception as exc:  # any failure here is a failed check, reported, never raised
        checks.append(CheckResult("outbox", FAIL, f"{type(exc).__name__}: {exc}"))
    ok = not any(c.failed for c in checks)
    payload = {"kind": "update", "version": __version__, "ok": ok,
               "failed": [c.name for c in checks if c.failed],
               "checks": {c.name: c.status for c in checks}}
    event_id = None
    if agent.engine is not None:
        receipt = agent.engine.record(EventDraft(SystemEvent.SELFTEST.value, int(Priority.P4),
                                                 payload))
        event_id = (await asyncio.to_thread(receipt.result, 10)).event_id
    return {"ok": True, "healthy": ok, "version": __version__, "event_id": event_id,
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail}
                       for c in checks]}


async def event_status(agent: Any, req: dict[str, Any]) -> dict[str, Any]:
    """Control op ``event_status``: the outbox status of one event (``acked`` once central
    acknowledged it)."""
    event_id = req.get("event_id")
    if not isinstance(event_id, str):
        raise ControlError("event_status needs an event_id")
    ev = await asyncio.to_thread(agent.outbox.get, event_id)
    return {"ok": True, "status": None if ev is None else ev.status}


# -- updater side ----------------------------------------------------------------------------


class AgentService(Protocol):
    """The agent's service manager: systemd on a post, ``Supervisor`` in tests and demos."""

    def restart(self) -> None: ...

    def restart_count(self) -> int:
        """Restarts after an unexpected exit since the service manager started (NRestarts)."""
        ...


class CrashLoop:
    """N restarts within M seconds, from a restart counter polled over time."""

    def __init__(self, restarts: int, seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.restarts, self.seconds, self._clock = restarts, seconds, clock
        self._base: int | None = None
        self._times: list[float] = []

    def observe(self, count: int) -> bool:
        now = self._clock()
        if self._base is None:
            self._base = count
        while count > self._base:
            self._base += 1
            self._times.append(now)
        self._times = [t for t in self._times if now - t <= self.seconds]
        return len(self._times) >= self.restarts


@dataclass
class HealthResult:
    ok: bool
    reason: str
    checks: list[dict[str, Any]]
    seconds: float


Request = Callable[[dict[str, Any], float], dict[str, Any]]


def control_requester(state_dir: Path) -> Request:
    from edge.control import request, socket_path

    path = socket_path(state_dir)

    def call(req: dict[str, Any], timeout: float) -> dict[str, Any]:
        return request(path, req, timeout=timeout)

    return call


class HealthChecker:
    """Runs the trial of ``version`` until it passes, fails, or the window ends."""

    def __init__(self, request: Request, service: AgentService, *, sync_enabled: bool,
                 crash_loop_restarts: int = 3, crash_loop_seconds: float = 120.0,
                 poll: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.request, self.service = request, service
        self.sync_enabled = sync_enabled
        self.crash_loop_restarts, self.crash_loop_seconds = crash_loop_restarts, crash_loop_seconds
        self.poll, self.clock = poll, clock

    def check(self, version: str, window: float) -> HealthResult:
        start = self.clock()
        deadline = start + window
        loop = CrashLoop(self.crash_loop_restarts, self.crash_loop_seconds, self.clock)
        stage, event_id = "agent did not answer", None
        checks: list[dict[str, Any]] = []

        def done(ok: bool, reason: str) -> HealthResult:
            return HealthResult(ok, reason, checks, self.clock() - start)

        while self.clock() < deadline:
            if loop.observe(self.service.restart_count()):
                return done(False, f"crash loop: {self.crash_loop_restarts} restarts within "
                            f"{self.crash_loop_seconds:g}s")
            try:
                if event_id is None:
                    st = self.request({"op": "status"}, 10)["status"]
                    running = st.get("version")
                    if running != version:
                        stage = f"agent runs {running}, not {version}"
                    elif self.sync_enabled and not st.get("sync", {}).get("connected"):
                        stage = "not connected to the broker"
                    else:
                        res = self.request({"op": "update_health"}, 30)
                        if not res.get("ok"):
                            return done(False, f"self-check unavailable: {res.get('error')}")
                        checks = list(res.get("checks", []))
                        if not res.get("healthy"):
                            bad = [c["name"] for c in checks if c["status"] == FAIL]
                            return done(False, f"self-check failed: {', '.join(bad)}")
                        event_id = res.get("event_id")
                        stage = "self-check event not acknowledged by central"
                        if not self.sync_enabled:
                            return done(True, "self-check passed (sync disabled)")
                else:
                    status = self.request({"op": "event_status", "event_id": event_id},
                                          10).get("status")
                    if status == "acked":
                        return done(True, "self-check passed and acknowledged by central")
            except (ControlError, OSError, KeyError, TypeError) as exc:
                stage = f"agent did not answer ({exc})"
            time.sleep(self.poll)
        return done(False, f"no pass within {window:g}s: {stage}")
