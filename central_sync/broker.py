"""Start a local Mosquitto for the demo and the tests, with the project's own config.

``LocalMosquitto`` renders ``broker/mosquitto-dev.conf`` (plus optional extra lines) into a private
directory, picks a free loopback port, starts ``mosquitto -c`` and waits until it serves MQTT
(a CONNACK); a port taken by another program meanwhile makes it start again on another
port. Mosquitto drops to its own user after reading the config and before opening its
files, so the rendered config sets ``user`` to the current user and every path is ours.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from central_sync.errors import CentralError

#: Starts of a broker whose own free port was taken meanwhile by another program.
START_ATTEMPTS = 5


class _PortTaken(CentralError):
    """The port was taken by another program before Mosquitto could bind it."""


def _broker_dir() -> Path:
    """broker/ of a checkout, else the copy shipped in the wheel (edge/_install/broker)."""
    here = Path(__file__).resolve().parent.parent / "broker"
    if here.is_dir():
        return here
    from importlib import resources

    return Path(str(resources.files("edge") / "_install" / "broker"))


BROKER_DIR = _broker_dir()
DEV_CONF = BROKER_DIR / "mosquitto-dev.conf"


def find_mosquitto() -> str:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin)."""
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if not found:
        raise CentralError("mosquitto is not installed (Debian package 'mosquitto'; scripts/bootstrap installs it)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def listens(pid: int, port: int) -> bool:
    """Does process ``pid`` hold a listening TCP socket on ``port`` (Linux ``/proc``)? True when
    that cannot be read (no ``/proc``): then only the port's answer counts."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port and cols[9] in inodes:
                        return True
    except (OSError, ValueError, IndexError):
        return True
    return False


def mqtt_connack(host: str, port: int, client_id: str, timeout: float = 2.0) -> bool:
    """Whether ``host:port`` answers a real MQTT 3.1.1 CONNECT (clean session) with a CONNACK,
    whatever its return code: the broker is serving MQTT, not just accepting TCP."""
    cid = client_id.encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(cid).to_bytes(2, "big") + cid
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(bytes([0x10, len(body)]) + body)
            answer = b""
            while len(answer) < 4:
                chunk = s.recv(4 - len(answer))
                if not chunk:
                    return False
                answer += chunk
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT: no will, no log noise
            return answer[:2] == b"\x20\x02"
    except OSError:
        return False


#: How long a starting Mosquitto may take to serve MQTT (a loaded machine: generous).
READY_TIMEOUT_S = 30.0
#: Between two readiness checks the start waits on the process's exit (a failed bind ends it).
_READY_POLL_S = 0.02


class LocalMosquitto:
    """A Mosquitto process on a loopback port. Use as a context manager or call start()/stop().

    Without ``port`` the port comes from ``port_source`` (default :func:`free_port`): picked
    free, but another program may take it before Mosquitto binds it on a busy machine. Then
    Mosquitto exits with "Address already in use" and ``start`` tries again on a fresh port
    (``START_ATTEMPTS`` in all). Once started the port is kept: ``restart`` (clients reconnect to
    it) never moves it. Read ``port`` after ``start``. Ready means THIS process listens on the
    port and, on the plain development listener, answers an MQTT CONNECT with a CONNACK."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        conf_template: Path = DEV_CONF,
        extra_conf: str = "",
        listener_conf: str | None = None,
        port_source: Callable[[], int] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self._port_source = port_source or (lambda: free_port(host))
        self._auto_port = not port
        self.port = port or self._port_source()
        self.conf_template = conf_template
        self.extra_conf = extra_conf
        self.listener_conf = listener_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        #: Starts tried by the last ``start`` (more than one: the picked port had been taken).
        self.attempts = 0

    def render(self) -> str:
        """The config: ``{port}`` and ``{host}`` in the template and the listener are this
        broker's (``production_broker``'s template has its listener line in it)."""
        body = self.conf_template.read_text()
        listener = self.listener_conf if self.listener_conf is not None else (
            f"listener {self.port} {self.host}\nallow_anonymous true\n")
        text = (
            f"# rendered by central_sync.broker from {self.conf_template.name}\n"
            f"user {getpass.getuser()}\n"
            f"persistence_location {self.workdir}/\n"
            f"log_dest file {self.log_path}\n"
            f"pid_file {self.workdir}/mosquitto.pid\n"
            + body + "\n" + listener + "\n" + self.extra_conf + "\n"
        )
        return text.replace("{port}", str(self.port)).replace("{host}", self.host)

    def start(self) -> LocalMosquitto:
        """Start and wait until ready (see the class). ``CentralError`` when it cannot start:
        a given port that is taken is an error at once (it is never changed)."""
        self.attempts = 0
        for attempt in range(1, START_ATTEMPTS + 1):
            self.attempts = attempt
            try:
                self._start_once()
            except _PortTaken as exc:
                if not self._auto_port or attempt == START_ATTEMPTS:
                    raise CentralError(f"mosquitto failed to start on {self.host}:{self.port}: {exc}") from None
                self.port = self._port_source()
                continue
            self._auto_port = False  # started: a restart keeps this port
            return self
        raise CentralError("mosquitto failed to start")  # not reached

    def _start_once(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render())
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        if self._wait_ready(self.proc):
            return
        err = b""
        if self.proc.poll() is not None and self.proc.stderr:
            err = self.proc.stderr.read()
        self.stop()
        log = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
        text = f"{err.decode(errors='replace')} {log}".strip()
        if "Address already in use" in text:
            raise _PortTaken(text)
        raise CentralError(f"mosquitto failed to start: {text or 'not ready in time'}")

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        """True once ready; False when the process exited (a failed bind) or the deadline passed.
        Waits on the process's exit between checks, so a failed start is seen at once."""
        probe = self.listener_conf is None  # the plain anonymous listener: a real CONNACK
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if listens(proc.pid, self.port) and (
                    not probe or mqtt_connack(self.host, self.port, f"kentongan-ready-{proc.pid}")):
                return True
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(_READY_POLL_S)
        return False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a power cut or OOM kill would (no persistence flush)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> LocalMosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


PROD_CONF = BROKER_DIR / "mosquitto.conf"
PROD_ACL = BROKER_DIR / "acl"
PROD_DYNSEC = BROKER_DIR / "dynamic-security.json"
DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"


def find_dynsec_plugin() -> Path:
    """Mosquitto's dynamic-security plugin (Debian: /usr/lib/<multiarch>/, package mosquitto)."""
    found = sorted(Path("/usr/lib").glob(f"*/{DYNSEC_PLUGIN}")) + \
        sorted(Path("/usr/lib").glob(f"{DYNSEC_PLUGIN}"))
    if not found:
        raise CentralError(f"{DYNSEC_PLUGIN} not found under /usr/lib (Debian package 'mosquitto')")
    return found[0]


def production_broker(workdir: Path, *, ca_file: Path, cert_file: Path, key_file: Path,
                      crl_file: Path, acl_file: Path = PROD_ACL,
                      port: int | None = None,
                      dynsec_file: Path = PROD_DYNSEC,
                      port_source: Callable[[], int] | None = None) -> LocalMosquitto:
    """A (not yet started) LocalMosquitto running the PRODUCTION ``broker/mosquitto.conf``
    (mTLS, CRL, ACL, limits) on a loopback port, with the given CA files copied into
    ``workdir/etc``. Only the listener address and the file paths differ from production.
    Without ``port`` it picks one when started (read ``broker.port`` after ``start``)."""
    import re

    workdir = Path(workdir)
    etc = workdir / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    for src, name in ((ca_file, "ca.crt"), (cert_file, "broker.crt"), (key_file, "broker.key"),
                      (crl_file, "crl.pem"), (acl_file, "acl")):
        shutil.copy(src, etc / name)
    dynsec_state = workdir / "dynamic-security.json"
    if not dynsec_state.exists():
        shutil.copy(dynsec_file, dynsec_state)
    lines = []
    for line in PROD_CONF.read_text().splitlines():
        if re.match(r"^(persistence_location|log_dest|user|pid_file)\b", line):
            continue  # LocalMosquitto sets these to its own paths
        line = line.replace("/etc/mosquitto/kentongan/", f"{etc}/")
        line = re.sub(r"^plugin \S+$", f"plugin {find_dynsec_plugin()}", line)
        line = re.sub(r"^plugin_opt_config_file \S+$", f"plugin_opt_config_file {dynsec_state}",
                      line)
        lines.append(re.sub(r"^listener 8883$", "listener {port} 127.0.0.1", line))
    template = workdir / "mosquitto.conf.tmpl"
    template.write_text("\n".join(lines) + "\n")
    return LocalMosquitto(workdir, port=port, conf_template=template, listener_conf="",
                          port_source=port_source)
