"""Wall clock with a quality flag: many nodes have no RTC, so the wall clock can be wrong after
boot until NTP syncs. Central's time in acknowledgements gives an offset estimate.

Qualities: ``synced`` (kernel says NTP-synchronised), ``rtc`` (hardware clock, not yet NTP),
``unsynced`` (may be anything), ``corrected`` (our wall time plus central's offset estimate).

Clock steps (docs/protocol.md, "Time"): timers, TTLs, ack timeouts, retries and the SMS deadline
run on the monotonic clock and never see a wall-clock step. The wall clock is used only for what
people read (event times, display) and for command windows, and then corrected by central's
offset. A step of the wall clock (date set by hand, an RTC read late, NTP stepping) is detected as
a jump of ``wall - monotonic`` by more than ``STEP_S`` and taken out of the offset at once, so the
corrected time stays continuous until the next ack confirms it; an ack whose sample disagrees with
the estimate by more than ``STEP_S`` replaces it instead of being averaged in. Events recorded
``unsynced`` are placed on central's time line by their monotonic stamp (:meth:`Clock.anchor`),
not by their wall time, so a step between recording and sending does not move them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge.logs import log_event

log = logging.getLogger(__name__)

#: A change of ``wall - monotonic`` larger than this (seconds) is a step, not drift or slew.
STEP_S = 2.0

_TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


def kernel_clock_synchronised() -> bool | None:
    """True/False from adjtimex(2) (STA_UNSYNC), None when it cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

        class Timex(ctypes.Structure):
            _fields_ = [("modes", ctypes.c_uint), ("_pad", ctypes.c_byte * 252)]

        tx = Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != 5  # TIME_ERROR (5) means the clock is not synchronised


class Clock:
    """Wall/monotonic time source with quality and a central-offset estimate."""

    def __init__(self, forced_quality: str | None = None, *,
                 wall: Callable[[], float] | None = None,
                 mono_ns: Callable[[], int] | None = None) -> None:
        self._lock = threading.Lock()
        self._offset: float | None = None
        self._forced = forced_quality
        self._synced_cache: tuple[float, bool | None] = (0.0, None)
        self._wall_src = wall or time.time
        self._mono_src = mono_ns or time.monotonic_ns
        self._base: float | None = None  # wall - monotonic at the last look
        #: Wall-clock steps seen, and the last one (seconds, + forward).
        self.steps = 0
        self.last_step = 0.0

    def mono_ns(self) -> int:
        return self._mono_src()

    def wall(self) -> float:
        return self._wall_src()

    def _track(self, wall: float, mono_ns: int) -> None:
        """Detect a wall-clock step since the last look (call with the lock held)."""
        base = wall - mono_ns / 1e9
        prev, self._base = self._base, base
        if prev is None or abs(base - prev) <= STEP_S:
            return
        step = base - prev
        self.steps += 1
        self.last_step = step
        if self._offset is not None:
            self._offset -= step  # corrected time stays continuous across the step
        log_event(log, "wall_clock_step", logging.WARNING, step_s=round(step, 3),
                  offset=None if self._offset is None else round(self._offset, 3))

    def anchor(self) -> float | None:
        """Central's time line at monotonic zero: an event stamped ``mono_ns`` in this boot
        happened at ``anchor + mono_ns / 1e9`` (None until an offset is known)."""
        wall, mono = self.wall(), self.mono_ns()
        with self._lock:
            self._track(wall, mono)
            offset = self._offset
        return None if offset is None else wall + offset - mono / 1e9

    def _synced(self) -> bool:
        checked, value = self._synced_cache
        now = time.monotonic()
        if now - checked > 30 or checked == 0.0:
            value = _TIMESYNC_FLAG.exists() or bool(kernel_clock_synchronised())
            self._synced_cache = (now, value)
        return bool(value)

    def quality(self) -> str:
        """Quality of ``wall()`` right now (not including the offset correction)."""
        if self._forced:
            return self._forced
        return "synced" if self._synced() else "unsynced"

    def now(self) -> tuple[float, str]:
        """(wall time, quality), applying central's offset when our clock is not synced."""
        q = self.quality()
        wall = self.wall()
        mono = self.mono_ns()
        with self._lock:
            self._track(wall, mono)
            offset = self._offset
        if q != "synced" and offset is not None:
            return wall + offset, "corrected"
        return wall, q

    def observe_central_time(self, central_time: float, rtt_s: float = 0.0) -> float:
        """Update the offset estimate from a central timestamp; return the offset (seconds)."""
        wall = self.wall()
        mono = self.mono_ns()
        sample = central_time + rtt_s / 2 - wall
        with self._lock:
            self._track(wall, mono)
            if self._offset is None or abs(sample - self._offset) > STEP_S:
                self._offset = sample  # first estimate, or central's clock (or ours) stepped
            else:
                self._offset = 0.8 * self._offset + 0.2 * sample
            return self._offset

    @property
    def offset(self) -> float | None:
        with self._lock:
            return self._offset
