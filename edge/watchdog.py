"""systemd integration: ``sd_notify`` without libsystemd, and a health-gated watchdog.

* ``SystemdNotifier`` sends datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the Linux
  abstract namespace); without the variable every call is a no-op returning False.
* ``HealthWatchdog(checks, interval)`` sends ``READY=1`` once, then ``WATCHDOG=1`` every
  ``interval`` seconds ONLY while every check returns True. A failing (or raising) check is
  logged by name and the pings stop, so systemd (``WatchdogSec=``) restarts the service: a hung
  siren thread, a dead outbox writer or a dead sync task is never hidden behind a live event
  loop. Because the pings come from an asyncio task, a blocked event loop also stops them.
* ``degraded`` (optional) names a part that works but not fully (e.g. ``sync retrying:
  key_unreadable (...)``): it goes to systemd's ``STATUS=`` (``systemctl status``) and the log,
  and does NOT stop the pings: restarting the post would silence the siren for nothing when the
  cause is a missing credential or an unreachable broker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from edge.logs import log_event

log = logging.getLogger("kentongan.watchdog")


class SystemdNotifier:
    """Minimal sd_notify(3) over an AF_UNIX datagram socket."""

    def __init__(self, socket_path: str | None = None) -> None:
        path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
        self.address: str | None = None
        if path:
            # "@name" is the abstract namespace: the address starts with a NUL byte.
            self.address = "\0" + path[1:] if path.startswith("@") else path

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (e.g. ``"READY=1"``); True when the datagram was sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(state.encode(), self.address)
        except OSError as exc:
            log_event(log, "sd_notify_failed", logging.WARNING, error=str(exc))
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")


def watchdog_interval(default: float = 10.0) -> float:
    """Half of systemd's ``WATCHDOG_USEC`` (seconds), else ``default``."""
    usec = os.environ.get("WATCHDOG_USEC")
    try:
        return max(0.05, int(usec) / 2e6) if usec else default
    except ValueError:
        return default


class HealthWatchdog:
    """READY=1 once, then WATCHDOG=1 every ``interval`` seconds while all ``checks`` pass."""

    def __init__(self, checks: dict[str, Callable[[], bool]], interval: float | None = None,
                 notifier: SystemdNotifier | None = None,
                 degraded: Callable[[], str | None] | None = None) -> None:
        self.checks = dict(checks)
        self.interval = interval if interval is not None else watchdog_interval()
        self.notifier = notifier or SystemdNotifier()
        self.failing: list[str] = []
        self.pings = 0
        self.degraded = degraded
        self.problem: str | None = None

    def failed_checks(self) -> list[str]:
        bad = []
        for name, check in self.checks.items():
            try:
                ok = bool(check())
            except Exception:
                ok = False
            if not ok:
                bad.append(name)
        return bad

    def tick(self) -> bool:
        """One round: ping when healthy; log changes of health. True when pinged."""
        bad = self.failed_checks()
        if bad != self.failing:
            if bad:
                log_event(log, "watchdog_check_failed", logging.ERROR, failed=bad)
                self.notifier.status(f"unhealthy: {', '.join(bad)}")
            else:
                log_event(log, "watchdog_healthy_again", logging.WARNING)
                self.notifier.status("healthy")
            self.failing = bad
        if bad:
            return False
        self._report_degraded()
        self.pings += 1
        return self.notifier.watchdog()

    def _report_degraded(self) -> None:
        if self.degraded is None:
            return
        try:
            problem = self.degraded()
        except Exception as exc:
            problem = f"health check raised {exc!r}"
        if problem != self.problem:
            if problem:
                log_event(log, "health_degraded", logging.WARNING, problem=problem)
                self.notifier.status(f"degraded: {problem}"[:200])
            else:
                self.notifier.status("healthy")
            self.problem = problem

    async def run(self) -> None:
        """Run until cancelled (the agent spawns it as a task)."""
        self.notifier.ready("kentongan running")
        while True:
            self.tick()
            await asyncio.sleep(self.interval)
