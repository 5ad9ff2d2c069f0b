"""Control socket: a Unix socket in the state dir speaking one JSON object per line.

Used by ``kentongan-edge sim press`` / ``status`` (technicians, the demo and the tests).
Requests: ``{"op": "status"}``, ``{"op": "press", "button": NAME, "hold": SECONDS}``.
Responses: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from edge.errors import ControlError
from edge.logs import log_event

log = logging.getLogger("kentongan.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def socket_path(state_dir: Path) -> Path:
    return Path(state_dir) / SOCKET_NAME


_SUN_PATH_MAX = 100  # sockaddr_un.sun_path is 108 bytes on Linux, keep a margin


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """A path for bind/connect that fits sun_path: long state dirs go through /proc/self/fd."""
    if len(os.fsencode(str(path))) <= _SUN_PATH_MAX:
        yield str(path)
        return
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{dirfd}/{path.name}"
    finally:
        os.close(dirfd)


class ControlServer:
    """Serves requests with ``handlers[op](request)``; never lets a bad request crash the agent."""

    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with _short_path(self.path) as where:
            sock.bind(where)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_REQUEST)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            reply = await self._dispatch(line)
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            log_event(log, "control_connection_error", logging.WARNING, error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = json.loads(line)
        except ValueError:
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(req, dict) or not isinstance(req.get("op"), str):
            return {"ok": False, "error": "request needs an 'op'"}
        handler = self.handlers.get(req["op"])
        if handler is None:
            return {"ok": False, "error": f"unknown op {req['op']!r}; known: "
                    + ", ".join(sorted(self.handlers))}
        try:
            return await handler(req)
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a control request must never take the agent down
            log_event(log, "control_handler_failed", logging.ERROR, op=req["op"], error=repr(exc))
            return {"ok": False, "error": f"internal error: {exc!r}"}


def request(path: Path, payload: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Blocking client: send one request, return the reply; ControlError if no agent answers."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            with _short_path(path) as where:
                s.connect(where)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"no agent is listening on {path} ({exc.strerror})") from None
        s.sendall(json.dumps(payload).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise ControlError(f"agent on {path} did not answer within {timeout}s") from None
    finally:
        s.close()
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError("agent sent an unreadable reply") from None
    if not isinstance(reply, dict):
        raise ControlError("agent sent an unreadable reply")
    return reply
