"""Service managers for the agent as the updater sees them.

``SystemdService`` is the production one (``systemctl restart``, ``NRestarts``).
``Supervisor`` is the same logic ``systemd/kentongan-edge.service`` describes, in Python, for
tests and the demo: ExecStart through the ``current`` link (resolved again at every start),
``Restart=always`` after ``RestartSec``, ``restart()`` = stop (SIGTERM, SIGKILL after
``TimeoutStopSec``) and start again; exits it did not ask for are counted like systemd's
``NRestarts``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from edge.update import UpdateError


class SystemdService:
    def __init__(self, unit: str = "kentongan-edge.service",
                 systemctl: str = "/usr/bin/systemctl") -> None:
        self.unit, self.systemctl = unit, systemctl

    def _run(self, *args: str) -> str:
        try:
            res = subprocess.run([self.systemctl, *args, self.unit], capture_output=True,
                                 text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpdateError("unhealthy", f"systemctl {args[0]} {self.unit}: {exc}") from None
        if res.returncode != 0:
            raise UpdateError("unhealthy", f"systemctl {args[0]} {self.unit}: "
                              f"{res.stderr.strip()}")
        return res.stdout.strip()

    def restart(self) -> None:
        self._run("restart")

    def restart_count(self) -> int:
        try:
            return int(self._run("show", "-p", "NRestarts", "--value") or 0)
        except ValueError:
            return 0


class Supervisor:
    """Run ``argv`` forever like ``Restart=always``; see the module docstring.

    With ``status_file`` it publishes ``{"pid", "starts", "restarts"}`` there (atomically) and
    honours restart requests from other processes (``SupervisorClient``): a request file next to
    it, like ``systemctl restart`` talking to systemd."""

    def __init__(self, argv: Sequence[str], *, restart_sec: float = 0.5,
                 stop_timeout: float = 15.0, log: Path | None = None,
                 env: dict[str, str] | None = None, status_file: Path | None = None) -> None:
        self.argv = list(argv)
        self.restart_sec, self.stop_timeout = restart_sec, stop_timeout
        self.log, self.env = log, env
        self.status_file = status_file
        self.starts = 0
        self._restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._wanted_stop = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen[bytes]:
        out = self.log.open("ab") if self.log is not None else None
        try:
            return subprocess.Popen(self.argv, stdout=out or subprocess.DEVNULL,
                                    stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        finally:
            if out is not None:
                out.close()

    def _publish(self) -> None:
        if self.status_file is None:
            return
        with self._lock:
            data = {"pid": None if self._proc is None else self._proc.pid,
                    "starts": self.starts, "restarts": self._restarts}
        tmp = self.status_file.with_name(self.status_file.name + ".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.status_file)

    def _restart_requested(self) -> bool:
        if self.status_file is None:
            return False
        req = restart_request_path(self.status_file)
        if req.exists():
            req.unlink(missing_ok=True)
            return True
        return False

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                proc: subprocess.Popen[bytes] | None = self._spawn()
            except OSError:
                proc = None
            with self._lock:
                self._proc = proc
                self.starts += 1
                self._wanted_stop = False
            self._publish()
            while proc is not None and proc.poll() is None:
                if self._restart_requested():
                    with self._lock:
                        self._wanted_stop = True
                    self._terminate(proc)
                    break
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(0.05)
            with self._lock:
                wanted = self._wanted_stop
                if not wanted and not self._stopping.is_set():
                    self._restarts += 1
            self._publish()
            if not wanted:
                self._stopping.wait(self.restart_sec)

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def restart(self) -> None:
        with self._lock:
            proc = self._proc
            self._wanted_stop = True
            before = self.starts
        if proc is not None:
            self._terminate(proc)
        deadline = time.monotonic() + self.stop_timeout + 5
        while self.starts == before and time.monotonic() < deadline:
            time.sleep(0.01)

    def restart_count(self) -> int:
        with self._lock:
            return self._restarts

    @property
    def pid(self) -> int | None:
        with self._lock:
            return None if self._proc is None else self._proc.pid

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            proc = self._proc
            self._wanted_stop = True
        if proc is not None:
            self._terminate(proc)
        if self._thread is not None:
            self._thread.join(self.stop_timeout + 5)


def restart_request_path(status_file: Path) -> Path:
    return status_file.with_name(status_file.name + ".restart")


class SupervisorClient:
    """``AgentService`` of a ``Supervisor`` in another process (through its status file)."""

    def __init__(self, status_file: Path, timeout: float = 60.0) -> None:
        self.status_file, self.timeout = status_file, timeout

    def _status(self) -> dict[str, int]:
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {"starts": 0, "restarts": 0}

    def restart(self) -> None:
        if not self.status_file.exists():
            return  # no supervisor yet: the agent starts on the new link when it comes up
        before = self._status().get("starts", 0)
        restart_request_path(self.status_file).write_text("restart")
        deadline = time.monotonic() + self.timeout
        while self._status().get("starts", 0) == before:
            if time.monotonic() > deadline:
                raise UpdateError("unhealthy", "the supervisor did not restart the agent")
            time.sleep(0.02)

    def restart_count(self) -> int:
        return int(self._status().get("restarts", 0))
