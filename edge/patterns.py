"""Kentongan pattern notation -> on/off timing.

Notation (see shared/DOMAIN.md): a number is a burst of that many strikes; ``.`` is a short pause;
``-`` is a group gap. A pattern repeats until stopped or until the siren's maximum on-time, unless
it ends with ``xN`` (play N times, e.g. ``1 x1`` for the single AMAN strike).

Named patterns: ``titir`` (continuous alarm, about 5 strikes a second), ``doro muluk`` (1, pause,
7, pause, 1), ``chirp`` (one short test chirp), ``silent`` (no sound at all).

Grammar::

    pattern  := named [repeat] | sequence [repeat]
    named    := "titir" | "doro muluk" | "chirp" | "silent"
    sequence := count (sep count)*       sep := "." | "-"        count := 1..30
    repeat   := ws* "x" 1..99
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from edge.errors import PatternError

MAX_BURST = 30
MAX_REPEAT = 99


class PatternTiming(BaseModel):
    """Milliseconds for the pieces of the notation. No source gives exact figures: configurable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strike_on_ms: int = Field(150, ge=20, le=5000, description="Relay on-time of one strike.")
    strike_off_ms: int = Field(250, ge=20, le=5000,
                               description="Off-time between strikes of a burst.")
    short_pause_ms: int = Field(800, ge=50, le=10000, description="Length of '.' (short pause).")
    group_gap_ms: int = Field(2000, ge=50, le=20000,
                              description="Length of '-' and of the gap before a repeat.")
    titir_on_ms: int = Field(100, ge=20, le=2000,
                             description="On-time of one titir strike (5/s default).")
    titir_off_ms: int = Field(100, ge=20, le=2000, description="Off-time of one titir strike.")
    chirp_ms: int = Field(80, ge=10, le=1000, description="On-time of the test chirp.")


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed pattern: ``bursts`` is ((strikes, separator-after), ...); separator '.', '-', ''."""

    text: str
    name: str | None
    bursts: tuple[tuple[int, str], ...]
    repeat: int | None  # None = until stopped / max on-time

    @property
    def silent(self) -> bool:
        return self.name == "silent"

    def canonical(self) -> str:
        """The normal form of the notation (parse(p.canonical()) == p, modulo ``text``)."""
        body = self.name or "".join(f"{n}{sep}" for n, sep in self.bursts)
        return body if self.repeat is None else f"{body} x{self.repeat}"

    def steps(self, timing: PatternTiming) -> list[tuple[int, int]]:
        """One cycle as (on_ms, off_ms) steps; the last off includes the gap before a repeat."""
        if self.name == "silent":
            return []
        if self.name == "chirp":
            return [(timing.chirp_ms, timing.group_gap_ms)]
        if self.name == "titir":
            return [(timing.titir_on_ms, timing.titir_off_ms)]
        out: list[tuple[int, int]] = []
        for strikes, sep in self.bursts:
            for i in range(strikes):
                last = i == strikes - 1
                if not last:
                    off = timing.strike_off_ms
                elif sep == ".":
                    off = timing.short_pause_ms
                else:  # '-' or end of cycle
                    off = timing.group_gap_ms
                out.append((timing.strike_on_ms, off))
        return out

    def cycle_ms(self, timing: PatternTiming) -> int:
        return sum(on + off for on, off in self.steps(timing))


_NAMED: dict[str, tuple[tuple[int, str], ...]] = {
    "titir": (),
    "doro muluk": ((1, "."), (7, "."), (1, "")),
    "chirp": (),
    "silent": (),
}
# ASCII digits only (``\d`` would accept e.g. Arabic-Indic digits); numbers are at most 4 digits
# so int() never sees a huge string (Python refuses > 4300 digits with ValueError).
_REPEAT_RE = re.compile(r"^(?P<body>.*?)\s*x(?P<n>[0-9]{1,4})$")
_SEQ_RE = re.compile(r"^[0-9]{1,4}([.-][0-9]{1,4})*$")
_SPACED_DIGITS_RE = re.compile(r"[0-9] +[0-9]")


def parse_pattern(text: str) -> Pattern:
    """Parse kentongan notation; raise ``PatternError`` with the reason on bad input."""
    if not isinstance(text, str):
        raise PatternError(f"pattern must be a string, got {type(text).__name__}")
    shown = text if len(text) <= 40 else text[:37] + "..."
    raw = " ".join(text.strip().lower().split())
    if not raw:
        raise PatternError("empty pattern (use 'silent' for no sound)")
    repeat: int | None = None
    m = _REPEAT_RE.match(raw)
    if m and m.group("body"):
        raw = m.group("body").strip()
        repeat = int(m.group("n"))
        if not 1 <= repeat <= MAX_REPEAT:
            raise PatternError(f"repeat count {repeat} outside 1..{MAX_REPEAT}")
    if raw in _NAMED:
        if raw == "doro muluk":
            return Pattern(text, "doro muluk", _NAMED["doro muluk"], repeat)
        if raw == "titir":
            return Pattern(text, "titir", (), repeat)
        return Pattern(text, raw, (), repeat if raw != "chirp" else (repeat or 1))
    if _SPACED_DIGITS_RE.search(raw):
        raise PatternError(
            f"bad pattern {shown!r}: digits separated by a space (write '2-2' or '22')")
    compact = raw.replace(" ", "")
    if not _SEQ_RE.match(compact):
        raise PatternError(
            f"bad pattern {shown!r}: expected digits separated by '.' or '-'"
            " (e.g. '2-2-2', '3.1-3.1'),"
            " optionally followed by 'xN', or one of: titir, doro muluk, chirp, silent"
        )
    bursts: list[tuple[int, str]] = []
    for num, sep in re.findall(r"([0-9]+)([.-]?)", compact):
        n = int(num)
        if not 1 <= n <= MAX_BURST:
            raise PatternError(f"burst of {n} strikes outside 1..{MAX_BURST} in {shown!r}")
        bursts.append((n, sep))
    return Pattern(text, None, tuple(bursts), repeat)
