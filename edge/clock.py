"""Wall clock with a quality flag: many nodes have no RTC, so the wall clock can be wrong after
boot until NTP syncs. Central's time in acknowledgements gives an offset estimate.

Qualities: ``synced`` (kernel says NTP-synchronised), ``rtc`` (hardware clock, not yet NTP),
``unsynced`` (may be anything), ``corrected`` (our wall time plus central's offset estimate).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from pathlib import Path

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

    def __init__(self, forced_quality: str | None = None) -> None:
        self._lock = threading.Lock()
        self._offset: float | None = None
        self._forced = forced_quality
        self._synced_cache: tuple[float, bool | None] = (0.0, None)

    def mono_ns(self) -> int:
        return time.monotonic_ns()

    def wall(self) -> float:
        return time.time()

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
        with self._lock:
            offset = self._offset
        if q != "synced" and offset is not None:
            return wall + offset, "corrected"
        return wall, q

    def observe_central_time(self, central_time: float, rtt_s: float = 0.0) -> float:
        """Update the offset estimate from a central timestamp; return the offset (seconds)."""
        sample = central_time + rtt_s / 2 - self.wall()
        with self._lock:
            self._offset = sample if self._offset is None else 0.8 * self._offset + 0.2 * sample
            return self._offset

    @property
    def offset(self) -> float | None:
        with self._lock:
            return self._offset
