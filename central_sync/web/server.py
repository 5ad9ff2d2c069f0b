"""The desk's uvicorn server: on shutdown it first ends the live streams (``LiveHub.close``), so
the process stops at once instead of waiting out the graceful-shutdown timeout on connections
that never finish by themselves, and browsers reconnect (and resync) straight away.

Signals are the process's, not uvicorn's: ``kentongan-central`` turns SIGTERM/SIGINT into a
cancellation of its tasks (``cli._run_until_signal``), and ``serve_until_cancelled`` turns the
cancellation of the desk's task into uvicorn's own stop (``should_exit``: connections closed,
then the lifespan shutdown). uvicorn's ``capture_signals`` would replace the process's handlers
while serving and raise the signal again once it has stopped (a second stop request arriving
in the middle of the process's own shutdown), so ``DeskServer`` leaves signals alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn

from central_sync.web.live import LiveHub
from edge.logs import log_event

log = logging.getLogger("central.web")

#: Longest wait for uvicorn's own stop (connections get ``timeout_graceful_shutdown`` of it).
STOP_TIMEOUT_S = 15.0


class DeskServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, hub: LiveHub) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.hub.close()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """No signal handling of uvicorn's own (see the module's docstring)."""
        yield


async def serve_until_cancelled(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
    """Run ``server`` until it stops or this task is cancelled; on cancellation ask uvicorn to
    exit and wait for it (its lifespan shutdown runs), then re-raise the cancellation. Cancelling
    uvicorn's ``serve`` itself instead leaves its lifespan task waiting for a shutdown message;
    the loop then cancels it at exit and uvicorn logs that as an ERROR with a traceback."""
    serving = asyncio.create_task(server.serve(sockets=sockets), name="desk-http")
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT_S
        while not serving.done():  # a second stop request while stopping changes nothing
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({serving}, timeout=max(left, 0.1))
        if not serving.cancelled() and serving.exception() is not None:
            log_event(log, "web_stop_failed", logging.WARNING, error=repr(serving.exception())[:300])
        raise
