"""Start a local Mosquitto for the demo and the tests, with the project's own config.

``LocalMosquitto`` renders ``broker/mosquitto-dev.conf`` (plus optional extra lines) into a private
directory, picks a free loopback port, starts ``mosquitto -c`` and waits until the port accepts
connections. Mosquitto drops to its own user after reading the config and before opening its
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


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise CentralError(f"mosquitto did not open {host}:{port} within {timeout}s")


class LocalMosquitto:
    """A Mosquitto process on a loopback port. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        conf_template: Path = DEV_CONF,
        extra_conf: str = "",
        listener_conf: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.host = host
        self._auto_port = not port
        self.port = port or free_port(host)
        self.conf_template = conf_template
        self.extra_conf = extra_conf
        self.listener_conf = listener_conf
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"

    def render(self) -> str:
        body = self.conf_template.read_text()
        listener = self.listener_conf if self.listener_conf is not None else (
            f"listener {self.port} {self.host}\nallow_anonymous true\n")
        return (
            f"# rendered by central_sync.broker from {self.conf_template.name}\n"
            f"user {getpass.getuser()}\n"
            f"persistence_location {self.workdir}/\n"
            f"log_dest file {self.log_path}\n"
            f"pid_file {self.workdir}/mosquitto.pid\n"
            + body + "\n" + listener.replace("{port}", str(self.port)).replace("{host}", self.host)
            + "\n" + self.extra_conf + "\n"
        )

    def start(self) -> LocalMosquitto:
        """Start and wait until THIS process listens. A port picked here (none given) may be
        taken by another program between picking and binding on a busy machine: then it starts
        again on another port. A given port (a restart the clients reconnect to) is never changed."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                return self._start_once()
            except _PortTaken as exc:
                if not self._auto_port or attempt == START_ATTEMPTS:
                    raise CentralError(f"mosquitto failed to start: {exc}") from None
                self.port = free_port(self.host)
        raise CentralError("mosquitto failed to start")  # not reached

    def _start_once(self) -> LocalMosquitto:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render())
        self.proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        try:
            wait_port(self.host, self.port)
            # Something listens; make sure it is this process, not another program that took
            # the port while this one failed to bind it.
            deadline = time.monotonic() + 10.0
            while (self.proc.poll() is None and not listens(self.proc.pid, self.port)
                   and time.monotonic() < deadline):
                time.sleep(0.02)
            if self.proc.poll() is not None:
                raise CentralError("exited after start")
        except CentralError:
            err = b""
            if self.proc.poll() is not None and self.proc.stderr:
                err = self.proc.stderr.read()
            self.stop()
            log = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
            text = f"{err.decode(errors='replace')} {log}"
            if "Address already in use" in text:
                raise _PortTaken(text) from None
            raise CentralError(f"mosquitto failed to start: {text}") from None
        return self

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
                      dynsec_file: Path = PROD_DYNSEC) -> LocalMosquitto:
    """A (not yet started) LocalMosquitto running the PRODUCTION ``broker/mosquitto.conf``
    (mTLS, CRL, ACL, limits) on a loopback port, with the given CA files copied into
    ``workdir/etc``. Only the listener address and the file paths differ from production."""
    import re

    workdir = Path(workdir)
    etc = workdir / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    for src, name in ((ca_file, "ca.crt"), (cert_file, "broker.crt"), (key_file, "broker.key"),
                      (crl_file, "crl.pem"), (acl_file, "acl")):
        shutil.copy(src, etc / name)
    port = port or free_port()
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
        lines.append(re.sub(r"^listener 8883$", f"listener {port} 127.0.0.1", line))
    template = workdir / "mosquitto.conf.tmpl"
    template.write_text("\n".join(lines) + "\n")
    return LocalMosquitto(workdir, port=port, conf_template=template, listener_conf="")
