"""The desk's listening socket, opened before the web server starts (docs/desk.md, "Listening").

Three ways, in this order:

1. Socket activation (systemd ``kentongan-central-web.socket``, or any supervisor speaking the
   same protocol): ``LISTEN_PID`` is this process and ``LISTEN_FDS`` >= 1, so the first passed
   descriptor (fd 3) is an already listening TCP socket; ``[web] host``/``port`` are ignored.
   The socket outlives restarts of the service, so connections made meanwhile wait in its
   backlog instead of being refused.
2. ``[web] port = 0``: bound here to a port the kernel picks; nothing can take it between the
   pick and the bind (there is none in between), unlike a port chosen free beforehand.
3. ``[web] host``/``port`` as configured.

Once bound, the address is logged (``web_listening``) and, with ``[web] ready_file`` set,
written there as JSON ``{"host", "port", "pid"}`` (atomically: write a temporary file, then
rename), so whoever started the process learns the port it got. Connections made before the
server accepts wait in the socket's backlog.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from central_sync.errors import CentralConfigError
from edge.logs import log_event

__all__ = ["SD_LISTEN_FDS_START", "inherited_listener", "open_listener", "write_ready_file"]

log = logging.getLogger("central_sync.web_listen")

#: The first descriptor passed by socket activation (sd_listen_fds(3)).
SD_LISTEN_FDS_START = 3
BACKLOG = 2048


def inherited_listener() -> socket.socket | None:
    """The listening socket passed by socket activation, or None. The ``LISTEN_*`` variables are
    removed, so processes started from here do not take the socket for theirs."""
    try:
        pid, fds = int(os.environ.get("LISTEN_PID", "0")), int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if pid != os.getpid() or fds < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        raise CentralConfigError(f"LISTEN_FDS is set but fd {SD_LISTEN_FDS_START} is no socket: {exc}",
                                 "LISTEN_FDS") from None
    if sock.type != socket.SOCK_STREAM or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0:
        raise CentralConfigError(f"fd {SD_LISTEN_FDS_START} passed by socket activation is not a "
                                 "listening stream socket", "LISTEN_FDS")
    return sock


def open_listener(host: str, port: int, ready_file: str | Path | None = None) -> socket.socket:
    """The desk's listening socket (inherited, or bound to ``host:port``; port 0 = any free
    port), reported in the log and in ``ready_file``. Raises ``CentralConfigError`` when the
    address cannot be bound (in use, not ours)."""
    sock = inherited_listener()
    how = "inherited"
    if sock is None:
        how = "bound"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(BACKLOG)
        except OSError as exc:
            sock.close()
            raise CentralConfigError(f"the desk cannot listen on {host}:{port}: {exc}", "web.port") from None
    sock.setblocking(False)
    bound_host, bound_port = sock.getsockname()[:2]
    log_event(log, "web_listening", host=bound_host, port=bound_port, socket=how)
    if ready_file is not None:
        write_ready_file(Path(ready_file), str(bound_host), int(bound_port))
    return sock


def write_ready_file(path: Path, host: str, port: int) -> None:
    """``{"host", "port", "pid"}`` into ``path``, atomically (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"host": host, "port": port, "pid": os.getpid()}), encoding="utf-8")
    os.replace(tmp, path)
