"""A fake SIM800-class modem on a real pty pair, for tests and the simulated post.

``FakeModem`` opens ``pty.openpty()``, serves the master side in its own thread and exposes the
slave device path as ``port``; the driver opens it with pyserial exactly like ``/dev/ttyUSB2``.
It speaks AT, ATE0/ATE1, ATI, AT+CSQ, AT+CPIN?, AT+CMGF, AT+CMGS (``> `` prompt, text until
Ctrl-Z, Esc cancels) and AT+CFUN=1,1 (answers OK, stays silent for ``boot_s``, then prints the
boot URCs with echo back on, like a real reboot).

Knobs: ``sent_sms``, ``freeze()``/``unfreeze()``, ``sim_present``, ``rssi``/``ber``,
``reset_count``, ``error_next(code)``, ``inject(data)``, ``answer_delay_s``, ``echo``.
``freeze()`` stops all answers; a soft freeze still reboots on AT+CFUN=1,1 (the firmware hangs
above the reset handler), ``freeze(hard=True)`` only recovers through ``hard_reset()`` or the
``reset_line`` callable (polled; a release after assertion is a reset pulse on the modem's pin).
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import select
import threading
import time
import tty
from collections.abc import Callable
from types import TracebackType

CTRL_Z = 0x1A
ESC = 0x1B
BOOT_URCS = b"\r\nRDY\r\n\r\n+CFUN: 1\r\n\r\n+CPIN: READY\r\n\r\nCall Ready\r\n\r\nSMS Ready\r\n"
_CMGS = re.compile(r'^AT\+CMGS="(\+?[0-9]+)"(?:,\d+)?$', re.I)


class FakeModem:
    """AT-speaking fake modem behind a pty; use as a context manager or start()/stop()."""

    def __init__(self, *, boot_s: float = 0.3, echo: bool = True,
                 reset_line: Callable[[], bool] | None = None) -> None:
        self.boot_s = boot_s
        self.echo = echo
        self.reset_line = reset_line
        self.sim_present = True
        self.rssi = 20
        self.ber = 0
        self.answer_delay_s = 0.0
        self.reset_count = 0
        self.sent_sms: list[tuple[str, str]] = []
        self.commands: list[str] = []
        self.port = ""
        self._frozen: str | None = None  # None, "soft" or "hard"
        self._error_next: int | None = None
        self._before_answer = b""
        self._text_mode = False
        self._msg_ref = 0
        self._sms_number: str | None = None
        self._inbuf = bytearray()
        self._boot_until = 0.0
        self._reset_asserted = False
        self._master = -1
        self._slave = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeModem:
        """Open the pty pair and start serving; returns self."""
        if self._thread is not None:
            return self
        self._master, self._slave = pty.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self.port = os.ttyname(self._slave)
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, name="fake-modem", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the pty pair."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=5)
        self._thread = None
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = -1

    def __enter__(self) -> FakeModem:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- knobs -------------------------------------------------------------------------------
    def freeze(self, *, hard: bool = False) -> None:
        """Stop answering entirely, like a hung SIM800."""
        with self._lock:
            self._frozen = "hard" if hard else "soft"

    def unfreeze(self) -> None:
        with self._lock:
            self._frozen = None

    @property
    def frozen(self) -> bool:
        return self._frozen is not None

    def error_next(self, code: int) -> None:
        """The next command answers ``+CME ERROR: <code>``."""
        with self._lock:
            self._error_next = code

    def inject(self, data: bytes, *, before_next_answer: bool = False) -> None:
        """Write unsolicited or garbage bytes now, or just before the next answer."""
        with self._lock:
            if before_next_answer:
                self._before_answer += data
            else:
                self._write(data)

    def hard_reset(self) -> None:
        """What pulsing the modem's reset pin does: reboot, whatever state it was in."""
        with self._lock:
            self._reboot()

    # -- serving -----------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            self._poll_reset_line()
            try:
                ready, _, _ = select.select([self._master], [], [], 0.01)
                data = os.read(self._master, 1024) if ready else b""
            except OSError:
                if self._stop.wait(0.05):
                    return
                continue
            with self._lock:
                if self._boot_until and time.monotonic() >= self._boot_until:
                    self._boot_until = 0.0
                    self._write(BOOT_URCS)
                if self._boot_until or self._frozen == "hard":
                    continue  # booting or hung: input is lost
                for b in data:
                    if self._boot_until or self._frozen == "hard":
                        break  # rebooted mid-chunk: the rest is lost
                    self._feed(b)

    def _poll_reset_line(self) -> None:
        if self.reset_line is None:
            return
        asserted = bool(self.reset_line())
        if self._reset_asserted and not asserted:
            self.hard_reset()
        self._reset_asserted = asserted

    def _write(self, data: bytes) -> None:
        if self._master >= 0 and data:
            with contextlib.suppress(OSError):
                os.write(self._master, data)

    def _answer(self, *lines: str) -> None:
        if self.answer_delay_s:
            time.sleep(self.answer_delay_s)
        out = self._before_answer + b"".join(b"\r\n" + ln.encode() + b"\r\n" for ln in lines)
        self._before_answer = b""
        self._write(out)

    def _feed(self, b: int) -> None:
        if self._sms_number is not None:
            self._feed_sms(b)
            return
        if b in (0x0D, 0x0A):
            if b == 0x0D and self._inbuf:
                line = self._inbuf.decode("ascii", errors="replace").strip()
                self._inbuf.clear()
                if self.echo and not self._frozen:
                    self._write(line.encode("ascii", errors="replace") + b"\r")
                self._command(line)
            return
        self._inbuf.append(b)

    def _feed_sms(self, b: int) -> None:
        if b == ESC:
            self._inbuf.clear()
            self._sms_number = None
            self._answer("OK")
        elif b == CTRL_Z:
            number, text = self._sms_number or "", self._inbuf.decode("latin-1")
            self._inbuf.clear()
            self._sms_number = None
            self.sent_sms.append((number, text))
            self._msg_ref = self._msg_ref % 255 + 1
            self._answer(f"+CMGS: {self._msg_ref}", "OK")
        else:
            self._inbuf.append(b)

    def _command(self, line: str) -> None:
        self.commands.append(line)
        cmd = line.upper()
        if self._frozen:
            if self._frozen == "soft" and cmd == "AT+CFUN=1,1":
                self._reboot()
            return
        if not cmd.startswith("AT"):
            self._answer("ERROR")
            return
        if self._error_next is not None:
            code, self._error_next = self._error_next, None
            self._answer(f"+CME ERROR: {code}")
            return
        self._dispatch(cmd, line)

    def _dispatch(self, cmd: str, line: str) -> None:
        if cmd in ("AT", "AT&W", "ATZ"):
            self._answer("OK")
        elif cmd in ("ATE0", "ATE1"):
            self.echo = cmd == "ATE1"
            self._answer("OK")
        elif cmd in ("ATI", "AT+CGMM"):
            self._answer("SIM800 R14.18 (kentongan fake modem)", "OK")
        elif cmd == "AT+CSQ":
            self._answer(f"+CSQ: {self.rssi},{self.ber}", "OK")
        elif cmd == "AT+CPIN?":
            if self.sim_present:
                self._answer("+CPIN: READY", "OK")
            else:
                self._answer("+CME ERROR: 10")
        elif cmd in ("AT+CMGF=0", "AT+CMGF=1"):
            self._text_mode = cmd.endswith("1")
            self._answer("OK")
        elif cmd == "AT+CMGF?":
            self._answer(f"+CMGF: {int(self._text_mode)}", "OK")
        elif cmd == "AT+CFUN=1,1":
            self._answer("OK")
            self._reboot()
        elif m := _CMGS.match(line):
            if not self.sim_present:
                self._answer("+CMS ERROR: 310")
            elif not self._text_mode:
                self._answer("+CMS ERROR: 304")
            else:
                self._sms_number = m.group(1)
                self._write(b"\r\n> ")
        else:
            self._answer("ERROR")

    def _reboot(self) -> None:
        self.reset_count += 1
        self._frozen = None
        self._error_next = None
        self._sms_number = None
        self._text_mode = False
        self.echo = True
        self._inbuf.clear()
        self._before_answer = b""
        self._boot_until = time.monotonic() + max(self.boot_s, 0.001)
