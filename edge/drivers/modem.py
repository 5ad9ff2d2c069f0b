"""AT-command driver for SIM800/SIM7600-class GSM/LTE modems (pyserial); its watchdog is
``edge.drivers.modem_watchdog``.

One ``threading.RLock`` serialises AT exchanges, so the watchdog's probes and the SMS sender never
interleave on the port (a whole SMS, CMGF + CMGS + text, is one exchange). Replies are decoded with
``errors="replace"``; unsolicited result codes (RING, +CMTI, RDY, Call Ready...) and echoed commands
are skipped while waiting for an answer; bytes left over from an earlier exchange are discarded
before each command. Reads use ``read(in_waiting or 1)`` with a short port timeout so a deadline is
checked at least every ``READ_TICK_S``.

SMS text (``send_sms``) is GSM 7-bit in text mode: accents are stripped (``é`` -> ``e``), common
typography is mapped to ASCII, characters outside the GSM basic set (``[]{}\\^~|`` and everything
non-ASCII) are replaced, control characters become spaces, and the result is capped at 160
characters, one single-part SMS (no concatenation).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import serial
from gpiozero import OutputDevice

from edge.config import ModemConfig
from edge.errors import ModemError, ModemTimeout
from edge.logs import log_event

log = logging.getLogger("kentongan.modem")

READ_TICK_S = 0.05
MAX_LINE = 4096
SMS_MAX_CHARS = 160
CTRL_Z = b"\x1a"
ESC = b"\x1b"
FINAL_ERRORS = ("ERROR", "NO CARRIER", "BUSY", "NO ANSWER", "NO DIALTONE")
URC_LINES = frozenset({"RING", "RDY", "CALL READY", "SMS READY", "NORMAL POWER DOWN",
                       "POWER DOWN", "PB DONE"})
_NUMBER = re.compile(r"^\+?[0-9]{3,15}$")
_PROMPT = object()

# GSM 03.38 basic set, ASCII part: ASCII printable minus the characters that need the escape table.
_GSM_ASCII = frozenset(chr(c) for c in range(0x20, 0x7F)) - set("[]{}\\^~|`")
_TRANSLIT = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "`": "'", "\u201c": '"', "\u201d": '"',
    "\u201e": '"', "\u2013": "-", "\u2014": "-", "\u2212": "-", "\u2026": "...", "[": "(",
    "]": ")", "{": "(", "}": ")", "\\": "/", "|": "/", "~": "-", "^": "", "\u00a0": " ",
    "\u20ac": "EUR", "\u00df": "ss", "\u00e6": "ae", "\u00c6": "AE", "\u00f8": "o", "\u00d8": "O",
}


def gsm_sanitize(text: str, limit: int = SMS_MAX_CHARS) -> str:
    """Reduce ``text`` to the ASCII part of the GSM 7-bit basic set, at most ``limit`` chars."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out: list[str] = []
    for ch in text:
        if ch in _GSM_ASCII or ch == "\n":
            out.append(ch)
        elif ch in _TRANSLIT:
            out.append(_TRANSLIT[ch])
        elif unicodedata.category(ch).startswith("C") or ch.isspace():
            out.append(" ")
        else:
            base = "".join(c for c in unicodedata.normalize("NFKD", ch)
                           if not unicodedata.combining(c))
            out.append(base if base and all(c in _GSM_ASCII for c in base) else "?")
    return "".join(out)[:limit]


@dataclass(frozen=True)
class SignalQuality:
    """AT+CSQ reading: ``rssi`` 0-31 (99 unknown), ``dbm`` per 3GPP 27.007, ``ber`` 0-7 or None."""

    rssi: int
    ber: int | None
    dbm: int | None

    @classmethod
    def from_csq(cls, rssi: int, ber: int) -> SignalQuality:
        dbm = -113 + 2 * rssi if 0 <= rssi <= 31 else None
        return cls(rssi, ber if 0 <= ber <= 7 else None, dbm)


def _default_serial(port: str, baudrate: int, **kw: Any) -> serial.Serial:
    return serial.serial_for_url(port, baudrate=baudrate, **kw)


class Modem:
    """A serial AT modem. All public methods block; call them from a worker thread in asyncio.

    Tunables (instance attributes): ``reset_pulse_s`` (reset pin held asserted),
    ``reset_ready_timeout_s`` (how long ``reset`` waits for AT OK), ``sms_timeout_s`` (wait for
    ``+CMGS`` after Ctrl-Z; networks take seconds).
    """

    def __init__(self, cfg: ModemConfig, *,
                 serial_factory: Callable[..., serial.Serial] | None = None,
                 reset_device: OutputDevice | None = None) -> None:
        self.cfg = cfg
        self._factory = serial_factory or _default_serial
        self._reset_device = reset_device
        self._ser: serial.Serial | None = None
        self._buf = bytearray()
        self._lock = threading.RLock()
        self._shutdown = threading.Event()
        self.reset_pulse_s = 0.5
        self.reset_ready_timeout_s = 30.0
        self.sms_timeout_s = max(60.0, cfg.at_timeout_seconds)

    # -- port ---------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def open(self) -> None:
        """Open the port and switch echo off (best effort); ``ModemError`` if the port fails."""
        with self._lock:
            self._open_port()
            try:
                self.command("ATE0")
            except ModemError as exc:
                log_event(log, "modem_init_unanswered", logging.WARNING, error=str(exc))

    def _open_port(self) -> None:
        self._close_port()
        try:
            self._ser = self._factory(self.cfg.port, self.cfg.baud, timeout=READ_TICK_S,
                                      write_timeout=max(1.0, self.cfg.at_timeout_seconds))
        except (serial.SerialException, OSError, ValueError) as exc:
            raise ModemError(f"cannot open modem port {self.cfg.port}: {exc}") from exc
        self._buf.clear()

    def shutdown(self) -> None:
        """Non-blocking: make a reset in progress give up promptly (agent stopping)."""
        self._shutdown.set()

    def close(self) -> None:
        self._shutdown.set()
        with self._lock:
            self._close_port()

    def _close_port(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError) as exc:
                log_event(log, "modem_close_failed", logging.DEBUG, error=str(exc))

    def _port(self) -> serial.Serial:
        if self._ser is None:
            raise ModemError(f"modem port {self.cfg.port} is not open")
        return self._ser

    def _write(self, data: bytes) -> None:
        try:
            self._port().write(data)
            self._port().flush()
        except serial.SerialTimeoutException as exc:
            raise ModemTimeout(f"write to modem timed out: {exc}") from exc
        except (serial.SerialException, OSError) as exc:
            raise ModemError(f"write to modem failed: {exc}") from exc

    def _discard_pending(self) -> None:
        ser = self._port()
        try:
            stale = bytes(self._buf) + (ser.read(ser.in_waiting) if ser.in_waiting else b"")
        except (serial.SerialException, OSError) as exc:
            raise ModemError(f"read from modem failed: {exc}") from exc
        self._buf.clear()
        if stale.strip():
            log_event(log, "modem_discarded", logging.DEBUG,
                      data=stale.decode("ascii", errors="replace")[:200])

    # -- reading ------------------------------------------------------------------------------
    def _next_line(self, deadline: float, cmd: str, prompt: bool = False) -> str | object:
        """Next non-empty line (or ``_PROMPT``) before ``deadline``; else ``ModemTimeout``."""
        ser = self._port()
        while True:
            while self._buf[:1] in (b"\r", b"\n"):
                del self._buf[0]
            if prompt and self._buf[:1] == b">":
                del self._buf[:2 if self._buf[1:2] == b" " else 1]
                return _PROMPT
            ends = [i for i in (self._buf.find(b"\r"), self._buf.find(b"\n")) if i >= 0]
            if ends:
                end = min(ends)
                raw = bytes(self._buf[:end])
                del self._buf[:end + 1]
                line = raw.decode("ascii", errors="replace").strip()
                if line:
                    return line
                continue
            if len(self._buf) > MAX_LINE:
                log_event(log, "modem_garbage_dropped", logging.WARNING, bytes=len(self._buf))
                self._buf.clear()
            if time.monotonic() >= deadline:
                raise ModemTimeout(f"no answer to {cmd!r} from the modem")
            try:
                self._buf += ser.read(ser.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                raise ModemError(f"read from modem failed: {exc}") from exc

    def _read_answer(self, cmd: str, deadline: float, prompt: bool = False) -> list[str]:
        """Lines up to the final ``OK`` (or the ``> `` prompt); raise on a final error."""
        name = re.match(r"^AT([+#$%^][A-Z0-9]+)", cmd.upper())
        own_prefix = name.group(1) + ":" if name else None
        lines: list[str] = []
        while True:
            line = self._next_line(deadline, cmd, prompt)
            if line is _PROMPT:
                return lines
            assert isinstance(line, str)
            if line == "OK":
                return lines
            if line.startswith(("+CME ERROR", "+CMS ERROR")) or line in FINAL_ERRORS:
                raise ModemError(line)
            if line == cmd or line.upper() in URC_LINES:
                continue  # echo or unsolicited result code
            if line.startswith("+") and not (own_prefix and line.upper().startswith(own_prefix)):
                log_event(log, "modem_urc", logging.DEBUG, line=line[:120])
                continue
            lines.append(line)

    # -- commands -----------------------------------------------------------------------------
    def command(self, cmd: str, timeout: float | None = None) -> list[str]:
        """Send one AT command; return the response lines before ``OK``.

        Raises ``ModemTimeout`` when no final answer comes within ``timeout`` (default
        ``cfg.at_timeout_seconds``) and ``ModemError`` for ERROR / +CME ERROR / +CMS ERROR.
        """
        if "\r" in cmd or "\n" in cmd:
            raise ModemError("AT command must be a single line")
        with self._lock:
            deadline = time.monotonic() + (timeout or self.cfg.at_timeout_seconds)
            self._discard_pending()
            self._write(cmd.encode("ascii", errors="replace") + b"\r")
            return self._read_answer(cmd, deadline)

    def ping(self) -> bool:
        """``AT`` answered with ``OK``; False on any modem error (never raises ``ModemError``)."""
        try:
            self.command("AT")
        except ModemError:
            return False
        return True

    def signal_quality(self) -> SignalQuality:
        """Read ``AT+CSQ``."""
        for line in self.command("AT+CSQ"):
            m = re.match(r"^\+CSQ:\s*(\d+)\s*,\s*(\d+)", line)
            if m:
                return SignalQuality.from_csq(int(m.group(1)), int(m.group(2)))
        raise ModemError("no +CSQ line in the answer to AT+CSQ")

    def sim_ready(self) -> bool:
        """``AT+CPIN?`` says READY. False for a missing/locked SIM; ``ModemTimeout`` propagates."""
        try:
            lines = self.command("AT+CPIN?")
        except ModemTimeout:
            raise
        except ModemError as exc:
            log_event(log, "modem_sim_not_ready", logging.DEBUG, error=str(exc))
            return False
        return any(ln.upper().replace(" ", "") == "+CPIN:READY" for ln in lines)

    def send_sms(self, number: str, text: str) -> int:
        """Send one text-mode SMS (text sanitised to GSM 7-bit, max 160); return the +CMGS ref."""
        if not _NUMBER.match(number):
            raise ModemError(f"invalid phone number {number!r}")
        body = gsm_sanitize(text).encode("ascii")
        cmd = f'AT+CMGS="{number}"'
        with self._lock:
            self.command("AT+CMGF=1")
            deadline = time.monotonic() + self.cfg.at_timeout_seconds
            self._discard_pending()
            self._write(cmd.encode("ascii") + b"\r")
            try:
                self._read_answer(cmd, deadline, prompt=True)
            except ModemTimeout:
                self._write(ESC)  # leave text entry if the prompt came late
                raise
            self._write(body + CTRL_Z)
            lines = self._read_answer(cmd, time.monotonic() + self.sms_timeout_s)
        for line in lines:
            m = re.match(r"^\+CMGS:\s*(\d+)", line)
            if m:
                log_event(log, "sms_sent", number=number, chars=len(body), ref=int(m.group(1)))
                return int(m.group(1))
        raise ModemError("no +CMGS reference in the answer")

    def reset(self) -> None:
        """Reset the modem (reset pin pulse, else ``AT+CFUN=1,1``), reopen, wait for ``AT`` OK.

        Raises ``ModemTimeout`` if it does not answer within ``reset_ready_timeout_s``.
        """
        with self._lock:
            log_event(log, "modem_reset", logging.WARNING,
                      method="pin" if self._reset_device is not None else "cfun")
            if self._reset_device is not None:
                self._reset_device.on()
                time.sleep(self.reset_pulse_s)
                self._reset_device.off()
            else:
                try:
                    if self._ser is None:
                        self._open_port()
                    self._discard_pending()
                    self._write(b"AT+CFUN=1,1\r")
                except ModemError as exc:
                    log_event(log, "modem_soft_reset_unsent", logging.WARNING, error=str(exc))
            self._close_port()
            deadline = time.monotonic() + self.reset_ready_timeout_s
            last: Exception | None = None
            while time.monotonic() < deadline:
                if self._shutdown.is_set():
                    raise ModemError("modem driver shut down during reset")
                try:
                    if self._ser is None:
                        self._open_port()
                    remaining = max(0.01, deadline - time.monotonic())
                    self.command("AT", timeout=min(self.cfg.at_timeout_seconds, remaining))
                    break
                except ModemError as exc:
                    last = exc
                    if self._ser is None:
                        self._shutdown.wait(min(0.5, max(0.0, deadline - time.monotonic())))
            else:
                raise ModemTimeout(f"modem did not answer after reset: {last}")
            try:
                self.command("ATE0")
            except ModemError as exc:
                log_event(log, "modem_init_unanswered", logging.WARNING, error=str(exc))
            log_event(log, "modem_reset_done")
