"""The modem's watchdog: an ``AT`` probe on a timer, a reset after repeated silence.

Apart from the AT driver (``edge.drivers.modem``): the driver is one serial exchange at a time,
the watchdog is the agent's policy over time (thresholds, backoff of failed resets, one fault
report per outage). Probes and resets run in a thread (``asyncio.to_thread``): the driver's
lock serialises them with the SMS sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from edge.config import ModemConfig
from edge.drivers.modem import Modem, SignalQuality
from edge.errors import ModemError
from edge.logs import log_event

log = logging.getLogger("kentongan.modem")


class ModemWatchdog:
    """Probes the modem with ``AT`` every ``cfg.watchdog_interval_seconds``; resets it after
    ``cfg.watchdog_failures`` consecutive failures and reports through ``on_fault(kind, detail)``.

    Fault kinds: ``"unresponsive"`` (once per outage, before the first reset) and
    ``"reset_failed"`` (once per outage). While resets keep failing, the failures needed before the
    next attempt double (up to 16x) so a missing modem is not reset every interval.
    """

    def __init__(self, modem: Modem, cfg: ModemConfig,
                 on_fault: Callable[[str, str], None]) -> None:
        self.modem = modem
        self.cfg = cfg
        self.on_fault = on_fault
        self.healthy = True
        self.consecutive_failures = 0
        self.last_signal: SignalQuality | None = None
        self.resets = 0
        self._failed_resets = 0
        self._reported: set[str] = set()

    async def run(self) -> None:
        """Probe forever (cancel to stop). Never raises out of the loop."""
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log_event(log, "modem_watchdog_error", logging.ERROR, error=repr(exc))
            await asyncio.sleep(self.cfg.watchdog_interval_seconds)

    def _probe(self) -> bool:
        if not self.modem.ping():
            return False
        try:
            self.last_signal = self.modem.signal_quality()
        except ModemError as exc:
            log_event(log, "modem_signal_unread", logging.DEBUG, error=str(exc))
        return True

    async def check_once(self) -> None:
        """One probe, and a reset if the failure threshold is reached."""
        if await asyncio.to_thread(self._probe):
            if not self.healthy:
                log_event(log, "modem_recovered", failures=self.consecutive_failures)
            self.healthy = True
            self.consecutive_failures = 0
            self._failed_resets = 0
            self._reported.clear()
            return
        self.consecutive_failures += 1
        threshold = self.cfg.watchdog_failures * min(2 ** self._failed_resets, 16)
        if self.consecutive_failures < threshold:
            return
        self.healthy = False
        self._fault("unresponsive", f"no answer to AT {self.consecutive_failures} times in a row")
        self.resets += 1
        try:
            await asyncio.to_thread(self.modem.reset)
        except Exception as exc:
            self._failed_resets += 1
            self.consecutive_failures = 0
            self._fault("reset_failed", str(exc))
            return
        self.consecutive_failures = 0
        self._failed_resets = 0
        self.healthy = True
        log_event(log, "modem_recovered", after="reset")

    def _fault(self, kind: str, detail: str) -> None:
        log_event(log, "modem_watchdog_fault", logging.WARNING, kind=kind, detail=detail)
        if kind in self._reported:
            return
        self._reported.add(kind)
        try:
            self.on_fault(kind, detail)
        except Exception as exc:
            log_event(log, "modem_fault_callback_failed", logging.ERROR, error=repr(exc))
