"""Relay siren pattern player: the digital kentongan.

Modelled on Home Assistant's siren entity: a device advertises ``SirenCapability`` flags and a
request that uses a missing capability (a relay has no VOLUME or TONES) is rejected with
``UnsupportedFeature`` before anything touches the relay.

Timing: ``play()`` switches the relay on for the first strike synchronously, on the caller's thread,
and returns at once; one long-lived player thread, woken through a ``threading.Condition``, runs
the rest of the on/off steps with timed waits (never blind sleeps), so ``stop()`` and pre-emption
take effect promptly.

Pre-emption rule: a new ``play()`` replaces what is playing when it is at least as urgent (priority
number lower or equal, P1 = 1 most urgent); a less urgent request is not sounded and its
``Activation.suppressed`` is ``"busy"``. Other suppression reasons: ``"silent"`` (the pattern has no
sound) and ``"quiet_hours"`` (P4 inside ``cfg.quiet_hours`` unless ``allow_p4``; P1-P3 always
sound). Every activation, sounded or not, is logged with its trigger and reported to ``on_change``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dtime
from enum import IntFlag, StrEnum
from typing import Any

from gpiozero import OutputDevice

from edge.config import SirenConfig
from edge.errors import UnsupportedFeature
from edge.logs import log_event
from edge.patterns import Pattern

logger = logging.getLogger(__name__)

HISTORY_LEN = 200


class SirenCapability(IntFlag):
    """What a siren can do (names follow Home Assistant's SirenEntityFeature)."""

    PATTERN = 1
    STOP = 2
    MAX_ON_TIME = 4
    STATE_REPORT = 8
    QUIET_HOURS = 16
    VOLUME = 32
    TONES = 64


RELAY_CAPABILITIES = (
    SirenCapability.PATTERN
    | SirenCapability.STOP
    | SirenCapability.MAX_ON_TIME
    | SirenCapability.STATE_REPORT
    | SirenCapability.QUIET_HOURS
)


@dataclass(frozen=True)
class Trigger:
    """Why the siren was asked to sound (every activation must be provable)."""

    source: str  # "button" | "command" | "operator" | "test" | "system"
    detail: str  # button name, command id, operator name...
    incident_type: str | None = None
    event_id: str | None = None


@dataclass(frozen=True)
class Activation:
    """Result of ``play()``; ``suppressed`` is the reason when nothing sounded."""

    activation_id: str
    pattern: str
    trigger: Trigger
    started_mono: float
    suppressed: str | None


class SirenEventKind(StrEnum):
    STARTED = "started"
    STOPPED = "stopped"  # stop() or pre-empted by another play() (reason "preempted") or close()
    FINISHED = "finished"  # a finite pattern (xN, chirp) ended by itself
    MAX_ON = "max_on"  # cut off at max_on_seconds / max_seconds (reason "max_on_time")
    SUPPRESSED = "suppressed"  # not sounded: "busy", "quiet_hours", "silent"


@dataclass(frozen=True)
class SirenEvent:
    """A change reported to ``on_change`` (cheap to build, no I/O)."""

    kind: SirenEventKind
    activation_id: str
    pattern: str
    priority: int
    trigger: Trigger
    reason: str | None
    at_mono: float
    on_seconds: float = 0.0  # how long the activation ran (end events)
    stopped_by: Trigger | None = None


@dataclass(frozen=True)
class SirenState:
    """Snapshot of the siren; ``relay_on`` is read back from the output pin."""

    playing: bool
    relay_on: bool
    pattern: str | None
    priority: int | None
    trigger: Trigger | None
    started_mono: float | None
    activation_id: str | None
    last_end_reason: str | None
    history: list[tuple[float, bool]] = field(default_factory=list)
    #: The trigger of the latest activation that sounded (kept after it ended; None: none yet).
    last_trigger: Trigger | None = None


@dataclass
class _Job:
    activation: Activation
    pattern: str
    priority: int
    steps: list[tuple[int, int]]
    repeat: int | None
    deadline: float
    step: int = 0
    cycle: int = 0
    relay_phase_on: bool = True
    phase_end: float = 0.0


def _default_local_time() -> dtime:
    return datetime.now().time()


class SirenPlayer:
    """Plays kentongan patterns on a relay through gpiozero's pin-factory layer."""

    capabilities: SirenCapability = RELAY_CAPABILITIES

    def __init__(
        self,
        cfg: SirenConfig,
        pin_factory: Any = None,
        *,
        local_time: Callable[[], dtime] | None = None,
        on_change: Callable[[SirenEvent], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._local_time = local_time or _default_local_time
        self._on_change = on_change
        self._relay = OutputDevice(
            cfg.pin, active_high=cfg.active_high, initial_value=False, pin_factory=pin_factory
        )
        self._cond = threading.Condition(threading.Lock())
        self._job: _Job | None = None
        self._closed = False
        self._last_end_reason: str | None = None
        self._last_trigger: Trigger | None = None
        self._history: deque[tuple[float, bool]] = deque(maxlen=HISTORY_LEN)
        self._relay_state = False
        # Activation ids: random per process, then a counter, so play() makes no syscall
        # (os.urandom can block early at boot on a Pi until the entropy pool is ready).
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="siren-player", daemon=True)
        self._thread.start()

    # -- public API -------------------------------------------------------------------------

    def play(
        self,
        pattern: Pattern,
        trigger: Trigger,
        *,
        priority: int,
        max_seconds: float | None = None,
        volume: float | None = None,
    ) -> Activation:
        """Start ``pattern`` now (first strike before returning) or report why it was suppressed."""
        if volume is not None:
            raise UnsupportedFeature(
                "volume", "this relay siren has no VOLUME capability: it is either on or off "
                "(play without volume=)")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        now = time.monotonic()
        act_id = f"{self._id_prefix}-{next(self._ids)}"
        text = pattern.canonical()
        steps = pattern.steps(self.cfg.timing)
        reason: str | None = None
        if pattern.silent or not steps:
            reason = "silent"
        elif priority >= 4 and not self.cfg.quiet_hours.allow_p4 and \
                self.cfg.quiet_hours.contains(self._local_time()):
            reason = "quiet_hours"
        events: list[SirenEvent] = []
        with self._cond:
            if self._closed:
                raise RuntimeError("siren player is closed")
            current = self._job
            if reason is None and current is not None and priority > current.priority:
                reason = "busy"
            activation = Activation(act_id, text, trigger, now, reason)
            if reason is None:
                if current is not None:
                    events.append(self._end(current, SirenEventKind.STOPPED, "preempted", now,
                                            stopped_by=trigger, relay_off=False))
                limit = self.cfg.max_on_seconds if max_seconds is None else \
                    min(max_seconds, self.cfg.max_on_seconds)
                job = _Job(activation, text, int(priority), steps, pattern.repeat, now + limit)
                self._set_relay(True)  # the first strike: on the caller's thread, right now
                job.phase_end = time.monotonic() + steps[0][0] / 1000.0
                self._job = job
                self._last_trigger = trigger
                self._cond.notify()
                events.append(self._event(job, SirenEventKind.STARTED, None, now))
        if reason is not None:
            events.append(SirenEvent(SirenEventKind.SUPPRESSED, act_id, text, int(priority),
                                     trigger, reason, now))
        self._emit(events)
        return activation

    def stop(self, reason: str, trigger: Trigger | None = None, *,
             activation_ids: frozenset[str] | None = None) -> bool:
        """Turn the siren off now; True if something was stopped. With ``activation_ids`` only
        an activation among them is stopped (checked under the lock: a local alarm that has
        pre-empted it keeps sounding)."""
        with self._cond:
            job = self._job
            if job is None:
                return False
            if activation_ids is not None and job.activation.activation_id not in activation_ids:
                return False
            event = self._end(job, SirenEventKind.STOPPED, reason, time.monotonic(),
                              stopped_by=trigger)
            self._cond.notify()
        self._emit([event])
        return True

    def pulse(self, seconds: float, probe: Callable[[], bool]) -> bool | None:
        """Silent self-test: close the relay for ``seconds`` (too short to sound) and return what
        ``probe`` (a feedback input) read meanwhile; None if the siren was sounding. A ``play()``
        during the pulse takes the relay over at once and the pulse leaves it alone. Blocking:
        call from a worker thread."""
        with self._cond:
            if self._job is not None or self._closed:
                return None
            self._set_relay(True)
        try:
            time.sleep(seconds / 2)
            return bool(probe())
        finally:
            time.sleep(seconds / 2)
            with self._cond:
                if self._job is None and not self._closed:
                    self._set_relay(False)

    def state(self) -> SirenState:
        """Current state, with the relay value read back from the device."""
        relay_on = bool(self._relay.value)
        with self._cond:
            job = self._job
            return SirenState(
                playing=job is not None,
                relay_on=relay_on,
                pattern=job.pattern if job else None,
                priority=job.priority if job else None,
                trigger=job.activation.trigger if job else None,
                started_mono=job.activation.started_mono if job else None,
                activation_id=job.activation.activation_id if job else None,
                last_end_reason=self._last_end_reason,
                history=list(self._history),
                last_trigger=self._last_trigger,
            )

    def alive(self) -> bool:
        """True while the player thread runs (for the systemd watchdog)."""
        return self._thread.is_alive() and not self._closed

    def close(self) -> None:
        """Stop any pattern, end the player thread and release the pin."""
        events: list[SirenEvent] = []
        with self._cond:
            if self._closed:
                return
            if self._job is not None:
                events.append(self._end(self._job, SirenEventKind.STOPPED, "closed",
                                        time.monotonic()))
            self._closed = True
            self._cond.notify_all()
        self._emit(events)
        self._thread.join(timeout=2.0)
        self._relay.close()

    def __enter__(self) -> SirenPlayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (all called with self._cond held unless noted) ---------------------------

    def _set_relay(self, on: bool) -> None:
        if on:
            self._relay.on()
        else:
            self._relay.off()
        if on != self._relay_state:
            self._relay_state = on
            self._history.append((time.monotonic(), on))

    def _event(self, job: _Job, kind: SirenEventKind, reason: str | None, now: float,
               stopped_by: Trigger | None = None) -> SirenEvent:
        return SirenEvent(kind, job.activation.activation_id, job.pattern, job.priority,
                          job.activation.trigger, reason, now,
                          on_seconds=max(0.0, now - job.activation.started_mono),
                          stopped_by=stopped_by)

    def _end(self, job: _Job, kind: SirenEventKind, reason: str, now: float,
             stopped_by: Trigger | None = None, relay_off: bool = True) -> SirenEvent:
        if relay_off:
            self._set_relay(False)
        self._job = None
        self._last_end_reason = reason
        return self._event(job, kind, reason, now, stopped_by)

    def _emit(self, events: list[SirenEvent]) -> None:
        """Log and report events; called WITHOUT the lock held."""
        for ev in events:
            log_event(logger, f"siren_{ev.kind.value}", activation_id=ev.activation_id,
                      pattern=ev.pattern, priority=ev.priority, reason=ev.reason,
                      trigger_source=ev.trigger.source, trigger_detail=ev.trigger.detail,
                      incident_type=ev.trigger.incident_type, event_id=ev.trigger.event_id,
                      on_seconds=round(ev.on_seconds, 3),
                      stopped_by=(f"{ev.stopped_by.source}:{ev.stopped_by.detail}"
                                  if ev.stopped_by else None))
            if self._on_change is not None:
                try:
                    self._on_change(ev)
                except Exception:
                    logger.exception("siren on_change callback failed")

    def _advance(self, job: _Job, now: float) -> SirenEvent | None:
        """Move ``job`` to its next phase; returns an event when the pattern finished."""
        if job.relay_phase_on:
            self._set_relay(False)
            last_step = job.step == len(job.steps) - 1
            if last_step and job.repeat is not None and job.cycle + 1 >= job.repeat:
                return self._end(job, SirenEventKind.FINISHED, "finished", now, relay_off=False)
            job.relay_phase_on = False
            duration = job.steps[job.step][1]
        else:
            job.step += 1
            if job.step >= len(job.steps):
                job.step = 0
                job.cycle += 1
            self._set_relay(True)
            job.relay_phase_on = True
            duration = job.steps[job.step][0]
        planned = job.phase_end + duration / 1000.0
        # Keep to the planned grid (no drift) unless we fell a whole phase behind.
        job.phase_end = planned if planned > now else now + duration / 1000.0
        return None

    def _run(self) -> None:
        try:
            while True:
                events: list[SirenEvent] = []
                with self._cond:
                    if self._closed:
                        return
                    job = self._job
                    if job is None:
                        self._cond.wait()
                        continue
                    now = time.monotonic()
                    if now >= job.deadline:
                        events.append(self._end(job, SirenEventKind.MAX_ON, "max_on_time", now))
                    elif now >= job.phase_end:
                        ev = self._advance(job, now)
                        if ev is not None:
                            events.append(ev)
                    else:
                        self._cond.wait(timeout=min(job.phase_end, job.deadline) - now)
                self._emit(events)
        except BaseException:
            logger.exception("siren player thread died")
            try:
                self._relay.off()
            finally:
                raise
