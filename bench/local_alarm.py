"""Benchmark: hold recognised -> siren relay pin high, through the real alarm engine, while the
outbox is being written at 500 events/s. Baseline in the same run: a bare gpiozero
Button -> OutputDevice on the same mock pin factory.

    .venv/bin/python bench/local_alarm.py [--presses 1000] [--load 500]

Target: p99 <= 2 ms.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import median, pct, table
from gpiozero import Button, OutputDevice
from gpiozero.pins.mock import MockFactory, MockPWMPin

from edge.alarm import AlarmEngine
from edge.config import parse_config
from edge.drivers.buttons import ButtonSignal, ButtonWatcher
from edge.drivers.siren import SirenPlayer
from edge.outbox import EventDraft, Outbox

SIREN_PIN, BUTTON_PIN, BASE_IN, BASE_OUT = 18, 17, 5, 6


class TimedPin(MockPWMPin):
    """A MockFactory pin that notes perf_counter_ns() when it goes high."""

    went_high: int = 0

    def _change_state(self, value):  # type: ignore[no-untyped-def]
        if value and not self.state:
            self.went_high = time.perf_counter_ns()
        return super()._change_state(value)


def config(state: Path):  # type: ignore[no-untyped-def]
    return parse_config({
        "node": {"node_id": "bench-post", "kelurahan_code": "33.74.10.1005", "rw": 1, "rt": 1,
                 "display_name": "bench"},
        "buttons": [{"name": "panic", "pin": BUTTON_PIN, "incident": "PANIC",
                     "hold_seconds": 0.005, "debounce_ms": 0}],
        "siren": {"pin": SIREN_PIN, "max_on_seconds": 60},
        "camera": {"backend": "none"},
        "storage": {"state_dir": str(state)},
        "sync": {"enabled": False},
    })


def load_writer(outbox: Outbox, rate: float, stop: threading.Event, counter: list[int]) -> None:
    """Submit background events at ``rate``/s (a busy post: heartbeats, check-ins...)."""
    period = 1.0 / rate
    nxt = time.perf_counter()
    while not stop.is_set():
        outbox.submit(EventDraft("PATROLI", 4, {"load": counter[0], "pad": "x" * 200}))
        counter[0] += 1
        nxt += period
        delay = nxt - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def measure_engine(presses: int, rate: float) -> tuple[list[float], int, float]:
    factory = MockFactory(pin_class=TimedPin)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config(Path(tmp))
        outbox = Outbox(Path(tmp) / "outbox.db", cfg.node.node_id)
        siren = SirenPlayer(cfg.siren, pin_factory=factory)
        engine = AlarmEngine(cfg, siren, outbox)
        t0: list[int] = [0]
        fired = threading.Event()

        def on_signal(sig: ButtonSignal) -> None:
            t0[0] = time.perf_counter_ns()  # the hold has been recognised
            engine.on_button(sig)
            fired.set()

        watcher = ButtonWatcher(cfg.buttons[0], on_signal, pin_factory=factory)
        pin_in = factory.pin(BUTTON_PIN)
        pin_out = factory.pin(SIREN_PIN)
        stop = threading.Event()
        counter = [0]
        loader = threading.Thread(target=load_writer, args=(outbox, rate, stop, counter))
        loader.start()
        lat: list[float] = []
        started = time.perf_counter()
        for _ in range(presses):
            fired.clear()
            pin_in.drive_low()
            if not fired.wait(2):
                raise SystemExit("hold was never recognised")
            lat.append((pin_out.went_high - t0[0]) / 1e6)  # type: ignore[attr-defined]
            pin_in.drive_high()
            siren.stop("bench")
            time.sleep(0.002)
        elapsed = time.perf_counter() - started
        stop.set()
        loader.join()
        watcher.close()
        siren.close()
        outbox.close()
        return lat, counter[0], counter[0] / elapsed


def measure_bare(presses: int) -> list[float]:
    factory = MockFactory(pin_class=TimedPin)
    button = Button(BASE_IN, pin_factory=factory)
    out = OutputDevice(BASE_OUT, pin_factory=factory)
    button.when_pressed = out.on
    pin_in, pin_out = factory.pin(BASE_IN), factory.pin(BASE_OUT)
    lat = []
    for _ in range(presses):
        t0 = time.perf_counter_ns()
        pin_in.drive_low()
        lat.append((pin_out.went_high - t0) / 1e6)  # type: ignore[attr-defined]
        pin_in.drive_high()
        out.off()
    button.close()
    out.close()
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--presses", type=int, default=1000)
    ap.add_argument("--load", type=float, default=500.0, help="outbox events/s in background")
    args = ap.parse_args()
    bare = measure_bare(args.presses)
    ours, loaded, rate = measure_engine(args.presses, args.load)
    rows = []
    for name, lat in (("bare gpiozero Button->OutputDevice", bare),
                      (f"kentongan hold->siren (outbox {rate:.0f} ev/s)", ours)):
        rows.append([name, len(lat), f"{median(lat):.4f}", f"{pct(lat, 99):.4f}",
                     f"{max(lat):.4f}"])
    print(table(["path", "presses", "p50 ms", "p99 ms", "max ms"], rows))
    ratio = pct(ours, 99) / pct(bare, 99)
    print(f"\np99 ratio kentongan/bare: {ratio:.1f}x   target p99 <= 2 ms: "
          f"{'MET' if pct(ours, 99) <= 2.0 else 'NOT MET'} ({pct(ours, 99):.3f} ms); "
          f"background events written: {loaded}")


if __name__ == "__main__":
    main()
