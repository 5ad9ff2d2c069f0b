"""Web servers in tests, on ports nobody can take before the server has them.

A port picked free beforehand (``free_port``) can be taken by another program between the pick
and the server's bind. Instead, either the server binds port 0 itself and reports the port it
got (``[web] port = 0`` with ``ready_file``: ``web_section`` + ``ready_port``, for ``kentongan-
central run``/``web`` processes and the ``serve`` hook), or the test binds the listening socket
first and hands it to the server (``listener``, for servers a test builds itself:
``server.serve(sockets=[sock.dup()])``; the test keeps its copy, so the port stays the test's
across server restarts). Both go through ``central_sync.web_listen`` (docs/desk.md, "Listening").
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from central_sync.web_listen import open_listener
from tests.waits import wait_for


def listener() -> socket.socket:
    """A listening socket on a loopback port the kernel picked (close it when done)."""
    return open_listener("127.0.0.1", 0)


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def web_section(ready_file: Path, **extra: Any) -> dict[str, Any]:
    """A ``[web]`` section on any free loopback port, reporting it in ``ready_file`` (removed
    first: a file left from an earlier start would name an old port)."""
    ready_file.unlink(missing_ok=True)
    return {"host": "127.0.0.1", "port": 0, "ready_file": str(ready_file), **extra}


def web_toml(ready_file: Path) -> str:
    """The same ``[web]`` section as TOML."""
    ready_file.unlink(missing_ok=True)
    return f'[web]\nhost = "127.0.0.1"\nport = 0\nready_file = "{ready_file}"\n'


def ready_port(ready_file: Path, timeout: float = 120.0, proc: subprocess.Popen[Any] | None = None,
               log: Path | None = None) -> int:
    """The port written to ``ready_file`` once the server listens. With ``proc``: fail at once
    (with ``log``'s tail) if the process exits first."""
    def port() -> int | None:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log is not None else ""
            raise AssertionError(f"the server exited ({proc.returncode}) before listening:\n{tail}")
        try:
            return int(json.loads(ready_file.read_text(encoding="utf-8"))["port"])
        except (OSError, ValueError, KeyError):
            return None

    return wait_for(port, timeout, f"the web server's ready file {ready_file}")
