"""Shared by the node and central configs: read a TOML file, turn a pydantic
``ValidationError`` into (key path, reason) the way ``validate-config`` reports it, and resolve
relative paths against the config file's directory (never the working directory)."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

# Cross-field validators raise "some.key.path: reason" so the report names the right key.
_PATHED = re.compile(r"^(?:Value error, )?([a-z_]+(?:\.[a-z0-9_]+)+): (.*)$", re.S)


#: A key printed as is in a key path; any other (empty, spaces, dots, control characters, a
#: colon...) is printed JSON-quoted, so ``error: <key>: <reason>`` stays one unambiguous line.
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key_part(part: object) -> str:
    text = str(part)
    return text if _PLAIN_KEY.match(text) else json.dumps(text)


def key_and_reason(err: ErrorDetails) -> tuple[str, str]:
    """(dotted key path, human reason) of one pydantic error."""
    path = ".".join(_key_part(p) for p in err["loc"])
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


#: Largest config file read (a real one is a few KiB).
MAX_CONFIG_BYTES = 1 << 20
#: Deepest nesting of tables/arrays accepted (a real config nests 3 levels).
MAX_DEPTH = 32
#: ``str`` fields with one of these name endings hold paths (``Path`` fields always do).
PATH_SUFFIXES = ("_file", "_dir", "_path")


def _too_deep(value: Any, limit: int) -> str | None:
    """Dotted key of the first place nested deeper than ``limit``, or None (iterative: a
    hostile file cannot exhaust the stack)."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, level, where = stack.pop()
        if level > limit:
            return where or "<root>"
        if isinstance(item, dict):
            stack.extend((v, level + 1, f"{where}.{k}" if where else str(k))
                         for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, level + 1, f"{where}.{i}") for i, v in enumerate(item))
    return None


def read_toml(path: str | Path, make_error: Callable[[str, str], Exception]) -> dict[str, Any]:
    """Read a TOML file; unreadable, oversized, malformed or absurdly nested files raise
    ``make_error(reason, path)``."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise make_error(f"cannot read config file: {exc.strerror or exc}", str(p)) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise make_error(f"config file larger than {MAX_CONFIG_BYTES} bytes", str(p))
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise make_error(f"not valid TOML: {exc}", str(p)) from None
    except RecursionError:
        raise make_error(f"not valid TOML: nested more than {MAX_DEPTH} levels", str(p)) from None
    deep = _too_deep(data, MAX_DEPTH)
    if deep is not None:
        parts = deep.split(".")
        key = ".".join(parts[:next((i for i, part in enumerate(parts) if i and part.isdigit()),
                                   len(parts))][:MAX_DEPTH])
        raise make_error(f"nested more than {MAX_DEPTH} levels (in {p})", key)
    return data


def check_path_value(value: Any) -> Any:
    """Pydantic after-validator of every config field: a ``Path`` must be usable as one (no NUL
    byte, components <= 255 bytes, <= 4095 bytes in all); other values pass unchanged."""
    if isinstance(value, Path):
        text = str(value)
        if "\x00" in text:
            raise ValueError("path contains a NUL byte")
        if len(text.encode("utf-8", "surrogatepass")) > 4095 or any(
                len(part.encode("utf-8", "surrogatepass")) > 255 for part in value.parts):
            raise ValueError("path too long")
    return value


def _is_path_field(name: str, value: Any) -> bool:
    return isinstance(value, Path) or (isinstance(value, str) and name.endswith(PATH_SUFFIXES))


def _resolve(value: Any, name: str, base: Path) -> Any:
    if isinstance(value, BaseModel):
        return resolve_paths(value, base)
    if isinstance(value, list | tuple):
        items = [_resolve(v, name, base) for v in value]
        return type(value)(items) if isinstance(value, tuple) else items
    if _is_path_field(name, value):
        p = Path(value)
        if str(value) and not p.is_absolute() and "://" not in str(value):
            joined = base / p
            return joined if isinstance(value, Path) else str(joined)
    return value


M = TypeVar("M", bound=BaseModel)


def resolve_paths(model: M, base: Path) -> M:
    """A copy of ``model`` in which every relative path (every ``Path`` field, and ``str``
    fields named ``*_file``, ``*_dir`` or ``*_path``) is joined to ``base``, recursively."""
    updates: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        new = _resolve(value, name, base)
        if new is not value:
            updates[name] = new
    return model.model_copy(update=updates) if updates else model
