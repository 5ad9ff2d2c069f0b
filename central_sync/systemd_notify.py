"""sd_notify(3) for central's Type=notify units: READY=1 once, then WATCHDOG=1 at half of
``WATCHDOG_USEC`` from an asyncio task (a blocked event loop stops the pings, so systemd
restarts the process). Central's own copy of this small protocol (one datagram per call) keeps
it off the post's internals (``edge.watchdog``); the unmaintained ``sdnotify`` package would add
a dependency for the same ``sendto``.
"""

from __future__ import annotations

import asyncio
import os
import socket


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    return "\0" + path[1:] if path.startswith("@") else path


def notify(state: str) -> bool:
    """Send one state line (e.g. ``READY=1``); False outside systemd or on error."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
    except OSError:
        return False
    return True


def watchdog_interval(default: float = 10.0) -> float:
    usec = os.environ.get("WATCHDOG_USEC")
    try:
        return max(0.05, int(usec) / 2e6) if usec else default
    except ValueError:
        return default


async def run_watchdog() -> None:
    """READY=1, then WATCHDOG=1 forever (no-op loop outside systemd); cancel to stop."""
    notify("READY=1")
    interval = watchdog_interval()
    while True:
        await asyncio.sleep(interval)
        notify("WATCHDOG=1")
