"""Shared by the node and central configs: read a TOML file, and turn a pydantic
``ValidationError`` into (key path, reason) the way ``validate-config`` reports it."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

# Cross-field validators raise "some.key.path: reason" so the report names the right key.
_PATHED = re.compile(r"^(?:Value error, )?([a-z_]+(?:\.[a-z0-9_]+)+): (.*)$", re.S)


def key_and_reason(err: ErrorDetails) -> tuple[str, str]:
    """(dotted key path, human reason) of one pydantic error."""
    path = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    m = _PATHED.match(msg)
    if m:
        return m.group(1), m.group(2)
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return path or "<root>", msg


def errors_of(exc: ValidationError) -> list[tuple[str, str]]:
    return [key_and_reason(err) for err in exc.errors()]


def read_toml(path: str | Path, make_error: Callable[[str, str], Exception]) -> dict[str, Any]:
    """Read a TOML file; unreadable or malformed files raise ``make_error(reason, path)``."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise make_error(f"cannot read config file: {exc.strerror}", str(p)) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise make_error(f"not valid TOML: {exc}", str(p)) from None
