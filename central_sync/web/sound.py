"""The desk's alarm sound, synthesised with the standard library (no binary file in git, no
download): a two-tone "hi-lo" of about a second, 8 kHz 16-bit mono, a few kilobytes."""

from __future__ import annotations

import functools
import io
import math
import struct
import wave

RATE = 8000


def _tone(freq: float, seconds: float, volume: float = 0.6) -> bytes:
    n = int(RATE * seconds)
    fade = int(RATE * 0.01)
    frames = bytearray()
    for i in range(n):
        env = min(1.0, i / fade, (n - 1 - i) / fade) if fade else 1.0
        sample = volume * env * math.sin(2 * math.pi * freq * i / RATE)
        frames += struct.pack("<h", int(sample * 32767))
    return bytes(frames)


@functools.cache
def alarm_wav() -> bytes:
    """Two cycles of 960 Hz / 720 Hz, 0.2 s each, then a short pause."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        for _ in range(2):
            w.writeframes(_tone(960, 0.2))
            w.writeframes(_tone(720, 0.2))
        w.writeframes(b"\0\0" * int(RATE * 0.2))
    return buf.getvalue()
