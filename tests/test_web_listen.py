"""The desk's listening socket (``central_sync.web_listen``, docs/desk.md "Listening"): port 0 is
bound by the server itself and reported; a socket passed by socket activation (``LISTEN_FDS``)
is served as it is; an address that cannot be bound is a clear configuration error."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from central_sync.broker import LocalMosquitto
from central_sync.errors import CentralConfigError
from central_sync.web_listen import open_listener
from tests.helpers_central import ROOT, write_config
from tests.helpers_web import listener, port_of, ready_port, web_toml
from tests.waits import wait_for


def test_port_0_is_bound_here_and_reported(tmp_path: Path) -> None:
    ready = tmp_path / "web.ready"
    sock = open_listener("127.0.0.1", 0, ready)
    try:
        port = port_of(sock)
        assert port != 0
        assert json.loads(ready.read_text()) == {"host": "127.0.0.1", "port": port, "pid": os.getpid()}
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # listening already
            pass
        with pytest.raises(CentralConfigError, match="cannot listen"):  # taken: an error, no traceback
            open_listener("127.0.0.1", port)
    finally:
        sock.close()


def _can_login_page(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/login", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_web_process_serves_a_socket_passed_by_socket_activation(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    """``kentongan-central web`` started as systemd starts a socket-activated service: the
    listening socket is fd 3, ``LISTEN_FDS=1`` and ``LISTEN_PID`` its own pid. It serves that
    socket (the configured port is ignored) and reports it."""
    ready = tmp_path / "web.ready"
    cfg = write_config(tmp_path / "central.toml", mosquitto.port)
    with cfg.open("a") as fh:
        fh.write(web_toml(ready).replace("port = 0", "port = 1"))  # port 1: would fail if bound
    sock = listener()
    port = port_of(sock)
    log = tmp_path / "web.log"
    launcher = ("import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
                "from central_sync.cli import main; sys.exit(main(sys.argv[1:]))")
    fd = sock.fileno()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher, "web", "--config", str(cfg)], cwd=ROOT, stdout=out, stderr=out,
            env={**os.environ, "LISTEN_FDS": "1"}, pass_fds=(3,),
            preexec_fn=lambda: os.dup2(fd, 3))  # fd 3: SD_LISTEN_FDS_START
    try:
        assert ready_port(ready, proc=proc, log=log) == port
        wait_for(lambda: _can_login_page(port), 120, "the login page on the passed socket")
        assert "inherited" in log.read_text(errors="replace")  # web_listening ... socket=inherited
    finally:
        proc.terminate()
        proc.wait(30)
        sock.close()
