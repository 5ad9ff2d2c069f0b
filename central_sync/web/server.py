"""The desk's uvicorn server: on shutdown it first ends the live streams (``LiveHub.close``), so
the process stops at once instead of waiting out the graceful-shutdown timeout on connections
that never finish by themselves, and browsers reconnect (and resync) straight away."""

from __future__ import annotations

import socket

import uvicorn

from central_sync.web.live import LiveHub


class DeskServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, hub: LiveHub) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.hub.close()
        await super().shutdown(sockets)
