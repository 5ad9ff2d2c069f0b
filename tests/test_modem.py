"""Modem driver and watchdog against FakeModem over a real pty pair."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from gpiozero import OutputDevice
from gpiozero.pins.mock import MockFactory

from edge.config import ModemConfig
from edge.drivers.fake_modem import FakeModem
from edge.drivers.modem import Modem, SignalQuality, gsm_sanitize
from edge.drivers.modem_watchdog import ModemWatchdog
from edge.errors import ModemError, ModemTimeout, TransientError

AT_TIMEOUT = 0.3

pytestmark = pytest.mark.timeout(30)


def cfg_for(fake: FakeModem, **kw: float | int) -> ModemConfig:
    return ModemConfig(enabled=True, port=fake.port, at_timeout_seconds=AT_TIMEOUT,
                       watchdog_interval_seconds=0.02, watchdog_failures=2, **kw)


@pytest.fixture
def fake() -> Iterator[FakeModem]:
    with FakeModem(boot_s=0.2) as f:
        yield f


@pytest.fixture
def modem(fake: FakeModem) -> Iterator[Modem]:
    m = Modem(cfg_for(fake))
    m.reset_ready_timeout_s = 5.0
    m.open()
    yield m
    m.close()


def test_open_turns_echo_off_and_commands_work(fake: FakeModem, modem: Modem) -> None:
    assert fake.echo is False
    assert modem.ping()
    assert modem.command("ATI") == ["SIM800 R14.18 (kentongan fake modem)"]


def test_echoed_commands_are_skipped(fake: FakeModem, modem: Modem) -> None:
    fake.echo = True
    assert modem.command("AT+CSQ") == ["+CSQ: 20,0"]
    assert modem.command("AT") == []


def test_send_sms_number_text_and_ctrl_z(fake: FakeModem, modem: Modem) -> None:
    ref1 = modem.send_sms("+6281234567890", "PANIC di Pos RT 05\nSegera datang")
    ref2 = modem.send_sms("081234567890", "AMAN")
    assert fake.sent_sms == [("+6281234567890", "PANIC di Pos RT 05\nSegera datang"),
                             ("081234567890", "AMAN")]
    assert (ref1, ref2) == (1, 2)
    assert "AT+CMGF=1" in fake.commands


def test_send_sms_non_gsm_characters_and_length(fake: FakeModem, modem: Modem) -> None:
    modem.send_sms("+628111", "Kebakaran \u201cgudang\u201d \u2013 café [RT 05] {x}\\ \U0001f525 ~ok")
    modem.send_sms("+628111", "x" * 300)
    text, long_text = fake.sent_sms[0][1], fake.sent_sms[1][1]
    assert text == 'Kebakaran "gudang" - cafe (RT 05) (x)/ ? -ok'
    assert long_text == "x" * 160
    # Ctrl-Z / Esc inside the text must never reach the modem as control bytes.
    assert gsm_sanitize("a\x1ab\x1bc") == "a b c"


def test_send_sms_rejects_bad_number(modem: Modem) -> None:
    with pytest.raises(ModemError, match="invalid phone number"):
        modem.send_sms('+62"\r\nATD112;', "x")


def test_send_sms_without_sim_fails(fake: FakeModem, modem: Modem) -> None:
    fake.sim_present = False
    with pytest.raises(ModemError, match=r"\+CMS ERROR: 310"):
        modem.send_sms("+628111", "x")
    assert fake.sent_sms == []
    assert modem.ping()


@pytest.mark.parametrize(("rssi", "ber", "expected"), [
    (20, 0, SignalQuality(20, 0, -73)),
    (0, 7, SignalQuality(0, 7, -113)),
    (31, 99, SignalQuality(31, None, -51)),
    (99, 99, SignalQuality(99, None, None)),
])
def test_signal_quality(fake: FakeModem, modem: Modem, rssi: int, ber: int,
                        expected: SignalQuality) -> None:
    fake.rssi, fake.ber = rssi, ber
    assert modem.signal_quality() == expected


def test_sim_ready_and_absent(fake: FakeModem, modem: Modem) -> None:
    assert modem.sim_ready() is True
    fake.sim_present = False
    assert modem.sim_ready() is False


def test_cme_error_surfaces_as_modem_error(fake: FakeModem, modem: Modem) -> None:
    fake.error_next(10)
    with pytest.raises(ModemError, match=r"\+CME ERROR: 10") as info:
        modem.command("AT+CSQ")
    assert not isinstance(info.value, ModemTimeout)
    with pytest.raises(ModemError, match=r"^ERROR$"):
        modem.command("AT+BOGUS")
    assert modem.ping()


def test_frozen_modem_times_out_without_hanging(fake: FakeModem, modem: Modem) -> None:
    fake.freeze()
    start = time.monotonic()
    with pytest.raises(ModemTimeout) as info:
        modem.command("AT", timeout=0.25)
    elapsed = time.monotonic() - start
    assert isinstance(info.value, TransientError)
    assert 0.25 <= elapsed < 3.0
    assert modem.ping() is False
    fake.unfreeze()
    assert modem.ping() is True  # late bytes from the frozen period do not confuse it


def test_frozen_during_sms_times_out(fake: FakeModem, modem: Modem) -> None:
    modem.sms_timeout_s = 0.3
    fake.freeze()
    with pytest.raises(ModemTimeout):
        modem.send_sms("+628111", "x")
    fake.unfreeze()
    assert modem.send_sms("+628111", "again") >= 1
    assert fake.sent_sms == [("+628111", "again")]


def test_garbage_and_unsolicited_codes_do_not_break_commands(fake: FakeModem,
                                                             modem: Modem) -> None:
    fake.inject(b"\xff\xfe\x00\x81garbage\r\nRING\r\n", before_next_answer=True)
    assert modem.ping()
    fake.inject(b'\r\n+CMTI: "SM",3\r\nCall Ready\r\nRDY\r\n\xc3\x28\r\n',
                before_next_answer=True)
    assert modem.signal_quality().rssi == 20
    fake.inject(b"\r\n+CPIN: READY\r\n", before_next_answer=True)  # URC-like but our prefix
    assert modem.command("AT+CSQ") == ["+CSQ: 20,0"]
    fake.inject(b"\r\nRING\r\n\xfe\xfe", before_next_answer=True)
    assert modem.send_sms("+628111", "ok") == 1
    fake.inject(b"\x00\xff" * 3000)  # a flood without line ends, sent between commands
    assert modem.ping()
    assert fake.sent_sms == [("+628111", "ok")]


def test_concurrent_sms_and_ping_do_not_interleave(fake: FakeModem, modem: Modem) -> None:
    fake.answer_delay_s = 0.003  # widen the window an unlocked driver would race in
    errors: list[BaseException] = []
    pings: list[bool] = []

    def sms_sender() -> None:
        try:
            for i in range(8):
                modem.send_sms("+628111", f"pesan {i}")
        except BaseException as exc:
            errors.append(exc)

    def pinger() -> None:
        try:
            for _ in range(30):
                pings.append(modem.ping())
                modem.signal_quality()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sms_sender), threading.Thread(target=pinger)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert errors == []
    assert all(pings) and len(pings) == 30
    assert fake.sent_sms == [("+628111", f"pesan {i}") for i in range(8)]


def test_closed_port_is_a_modem_error(fake: FakeModem) -> None:
    m = Modem(cfg_for(fake))
    with pytest.raises(ModemError, match="not open"):
        m.command("AT")
    assert m.ping() is False
    bad = Modem(ModemConfig(enabled=True, port="/dev/nonexistent-modem"))
    with pytest.raises(ModemError, match="cannot open"):
        bad.open()


def test_soft_reset_reboots_and_answers_again(fake: FakeModem, modem: Modem) -> None:
    fake.freeze()
    assert modem.ping() is False
    modem.reset()
    assert fake.reset_count == 1
    assert "AT+CFUN=1,1" in fake.commands
    assert fake.echo is False  # re-initialised after the reboot
    assert modem.ping()


def test_pin_reset_pulses_the_reset_line(pin_factory: MockFactory) -> None:
    device = OutputDevice(27, pin_factory=pin_factory)
    with FakeModem(boot_s=0.1, reset_line=lambda: bool(device.value)) as fake:
        m = Modem(cfg_for(fake), reset_device=device)
        m.reset_pulse_s = 0.1
        m.reset_ready_timeout_s = 5.0
        m.open()
        fake.freeze(hard=True)  # ignores AT+CFUN too: only the pin helps
        assert m.ping() is False
        m.reset()
        assert fake.reset_count == 1
        assert "AT+CFUN=1,1" not in fake.commands
        assert [s.state for s in pin_factory.pin(27).states][-2:] == [True, False]
        assert m.ping()
        m.close()


def test_reset_gives_up_within_its_bound(fake: FakeModem, modem: Modem) -> None:
    fake.freeze(hard=True)
    modem.reset_ready_timeout_s = 0.8
    with pytest.raises(ModemTimeout, match="after reset"):
        modem.reset()
    assert fake.reset_count == 0


def run_watchdog_until(wd: ModemWatchdog, pred: Callable[[], bool], timeout: float = 8.0) -> None:
    async def main() -> None:
        task = asyncio.create_task(wd.run())
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while not pred():
                assert not task.done(), "watchdog loop ended"
                assert asyncio.get_running_loop().time() < deadline, "condition not reached"
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_watchdog_resets_frozen_modem(fake: FakeModem, modem: Modem) -> None:
    faults: list[tuple[str, str]] = []
    wd = ModemWatchdog(modem, modem.cfg, lambda k, d: faults.append((k, d)))
    fake.rssi = 17
    run_watchdog_until(wd, lambda: wd.last_signal is not None)
    assert wd.healthy and wd.last_signal == SignalQuality(17, 0, -79)
    fake.freeze()
    run_watchdog_until(wd, lambda: fake.reset_count == 1 and wd.healthy)
    assert [k for k, _ in faults] == ["unresponsive"]
    assert "2 times" in faults[0][1]
    assert wd.resets == 1 and wd.consecutive_failures == 0
    assert modem.ping()


def test_watchdog_reports_failed_reset_once_and_survives(fake: FakeModem,
                                                         modem: Modem) -> None:
    faults: list[str] = []

    def on_fault(kind: str, detail: str) -> None:
        faults.append(kind)
        raise RuntimeError("callback bug must not kill the watchdog")

    modem.reset_ready_timeout_s = 0.3
    wd = ModemWatchdog(modem, modem.cfg, on_fault)
    fake.freeze(hard=True)
    run_watchdog_until(wd, lambda: wd.resets >= 2)
    assert not wd.healthy
    assert faults == ["unresponsive", "reset_failed"]  # not repeated on every failed attempt
    fake.hard_reset()
    run_watchdog_until(wd, lambda: wd.healthy and wd.consecutive_failures == 0)
    assert modem.ping()


def test_watchdog_loop_survives_unexpected_exceptions(fake: FakeModem) -> None:
    class Exploding(Modem):
        calls = 0

        def ping(self) -> bool:
            Exploding.calls += 1
            raise RuntimeError("driver bug")

    m = Exploding(cfg_for(fake))
    wd = ModemWatchdog(m, m.cfg, lambda k, d: None)
    run_watchdog_until(wd, lambda: Exploding.calls >= 3)
