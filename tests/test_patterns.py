"""Kentongan notation parser: examples plus hypothesis properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import PatternError
from edge.incidents import INCIDENTS
from edge.patterns import MAX_BURST, MAX_REPEAT, Pattern, PatternTiming, parse_pattern

TIMING = PatternTiming.model_validate({})

bursts_st = st.lists(
    st.tuples(st.integers(1, MAX_BURST), st.sampled_from([".", "-"])), min_size=1, max_size=8
).map(lambda bs: (*bs[:-1], (bs[-1][0], "")))
repeat_st = st.none() | st.integers(1, MAX_REPEAT)
timing_st = st.builds(
    PatternTiming,
    strike_on_ms=st.integers(20, 5000),
    strike_off_ms=st.integers(20, 5000),
    short_pause_ms=st.integers(50, 10000),
    group_gap_ms=st.integers(50, 20000),
)


def same(a: Pattern, b: Pattern) -> bool:
    return (a.name, a.bursts, a.repeat) == (b.name, b.bursts, b.repeat)


@given(bursts_st, repeat_st)
def test_canonical_round_trips(bursts: tuple[tuple[int, str], ...], repeat: int | None) -> None:
    p = Pattern("generated", None, tuple(bursts), repeat)
    back = parse_pattern(p.canonical())
    assert same(back, p)
    assert back.canonical() == p.canonical()


@given(bursts_st, repeat_st, st.sampled_from(["", " ", "  "]), st.booleans())
def test_spacing_and_case_do_not_matter(bursts: tuple[tuple[int, str], ...], repeat: int | None,
                                        pad: str, upper: bool) -> None:
    body = "".join(f"{n}{pad}{sep}{pad}" if sep else f"{n}" for n, sep in bursts)
    text = f"  {body}{pad}{'X' if upper else 'x'}{repeat}  " if repeat else f" {body} "
    assert same(parse_pattern(text), Pattern("", None, tuple(bursts), repeat))


@given(bursts_st, timing_st)
def test_steps_follow_the_notation(bursts: tuple[tuple[int, str], ...],
                                   timing: PatternTiming) -> None:
    p = Pattern("g", None, tuple(bursts), None)
    steps = p.steps(timing)
    assert len(steps) == sum(n for n, _ in bursts)  # one step per strike
    assert all(on == timing.strike_on_ms for on, _ in steps)
    assert steps[-1][1] == timing.group_gap_ms  # the gap before the cycle repeats
    # the off after the last strike of each burst is its separator; inside a burst, strike_off
    i = 0
    for n, sep in bursts:
        inner = [off for _, off in steps[i:i + n - 1]]
        assert inner == [timing.strike_off_ms] * (n - 1)
        expected_last = timing.short_pause_ms if sep == "." else timing.group_gap_ms
        assert steps[i + n - 1][1] == expected_last
        i += n
    assert p.cycle_ms(timing) == sum(on + off for on, off in steps)


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_random_text_only_raises_pattern_error(text: str) -> None:
    try:
        p = parse_pattern(text)
    except PatternError:
        return
    assert same(parse_pattern(p.canonical()), p)  # whatever parses has a stable normal form


@settings(max_examples=300)
@given(st.text(alphabet="0123456789.- xX", max_size=30))
def test_notation_alphabet_only_raises_pattern_error(text: str) -> None:
    try:
        p = parse_pattern(text)
    except PatternError:
        return
    assert all(1 <= n <= MAX_BURST for n, _ in p.bursts)
    assert p.repeat is None or 1 <= p.repeat <= MAX_REPEAT


@pytest.mark.parametrize(
    "text",
    ["", "   ", "2--2", "x0", "2 x0", "2 x100", "31", "2-31", "0", "2-0-2", "-2", "2-", "2.",
     ".", "2..2", "2.-2", "titir-2", "tititr", "2 2", "1" * 5000, "1 x" + "9" * 5000,
     "\u0663-\u0663", "2-2 x", "x", "doro", "2-2x1x2"],
)
def test_bad_patterns_raise_pattern_error(text: str) -> None:
    with pytest.raises(PatternError):
        parse_pattern(text)


def test_non_string_raises_pattern_error() -> None:
    with pytest.raises(PatternError):
        parse_pattern(22)  # type: ignore[arg-type]


def test_long_bad_input_is_shortened_in_the_message() -> None:
    with pytest.raises(PatternError) as info:
        parse_pattern("2-" * 1000)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("kind", list(INCIDENTS))
def test_incident_presets_parse(kind: str) -> None:
    info = INCIDENTS[kind]  # type: ignore[index]
    p = parse_pattern(info.pattern)
    assert same(parse_pattern(p.canonical()), p)
    if info.pattern != "silent":
        assert p.steps(TIMING)


@pytest.mark.parametrize(
    ("text", "name", "bursts", "repeat"),
    [
        ("titir", "titir", (), None),
        ("Doro  Muluk", "doro muluk", ((1, "."), (7, "."), (1, "")), None),
        ("chirp", "chirp", (), 1),
        ("silent", "silent", (), None),
        ("1 x1", None, ((1, ""),), 1),
        ("3.1-3.1", None, ((3, "."), (1, "-"), (3, "."), (1, "")), None),
        ("2 - 2 - 2", None, ((2, "-"), (2, "-"), (2, "")), None),
        ("titir x3", "titir", (), 3),
        ("30", None, ((30, ""),), None),
    ],
)
def test_examples(text: str, name: str | None, bursts: tuple[tuple[int, str], ...],
                  repeat: int | None) -> None:
    p = parse_pattern(text)
    assert (p.name, p.bursts, p.repeat) == (name, bursts, repeat)


def test_named_pattern_steps() -> None:
    t = TIMING
    assert parse_pattern("titir").steps(t) == [(t.titir_on_ms, t.titir_off_ms)]
    assert parse_pattern("chirp").steps(t) == [(t.chirp_ms, t.group_gap_ms)]
    assert parse_pattern("silent").steps(t) == []
    assert parse_pattern("silent").silent
    assert len(parse_pattern("doro muluk").steps(t)) == 9
