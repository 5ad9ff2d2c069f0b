"""Node config: typed models, validate-config naming the bad key, schema kept in sync."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge.cli import main
from edge.config import SCHEMA_PATH, NodeConfig, load_config, parse_config, render_schema
from edge.errors import ConfigError

EXAMPLES = sorted((Path(__file__).parent.parent / "firmware_config" / "examples").glob("post-*.toml"))
BASE = EXAMPLES[0]


def base() -> dict[str, Any]:
    return tomllib.loads(BASE.read_text())


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    """Write a mapping as TOML (tiny writer: enough for our nested tables and arrays)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {val(x)}" for k, x in v.items()) + "}"
        if hasattr(v, "isoformat"):
            return v.isoformat()
        return str(v)

    lines = [f"{k} = {val(v)}" for k, v in data.items() if not isinstance(v, dict | list)
             or (isinstance(v, list) and not all(isinstance(x, dict) for x in v))]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{k}]")
            lines += [f"{kk} = {val(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines.append(f"[[{k}]]")
                lines += [f"{kk} = {val(vv)}" for kk, vv in item.items()]
    p = tmp_path / "node.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, NodeConfig)
    assert main(["validate-config", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_roundtrip_writer_keeps_example_valid(tmp_path: Path) -> None:
    p = write(tmp_path, base())
    assert load_config(p).node.node_id == base()["node"]["node_id"]


@pytest.mark.parametrize(
    ("mutate", "key", "reason"),
    [
        (lambda d: d["siren"].__setitem__("pin", "eighteen"), "siren.pin", "integer"),
        (lambda d: d["node"].__setitem__("colour", "red"), "node.colour", "unknown key"),
        (lambda d: d["siren"].__setitem__("patterns", {"PANIC": "2--2"}), "siren.patterns",
         "bad pattern"),
        (lambda d: d["buttons"][1].__setitem__("pin", 17), "buttons.1.pin", "already used"),
        (lambda d: d["buttons"][0].__setitem__("pin", 18), "buttons.0.pin", "siren.pin"),
        (lambda d: d["buttons"][2].__setitem__("name", "panic"), "buttons.2.name", "duplicate"),
        (lambda d: d["buttons"][0].__setitem__("incident", "ALIENS"), "buttons.0.incident",
         "PANIC"),
        (lambda d: d["node"].__setitem__("kelurahan_code", "33-74"), "node.kelurahan_code",
         "pattern"),
        (lambda d: d["siren"].__setitem__("max_on_seconds", -1), "siren.max_on_seconds",
         "greater than"),
    ],
)
def test_validate_config_names_the_bad_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate: Any, key: str, reason: str
) -> None:
    data = copy.deepcopy(base())
    mutate(data)
    path = write(tmp_path, data)
    assert main(["validate-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"error: {key}" in err, err
    assert reason.lower() in err.lower(), err
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert exc.value.key_path.startswith(key)


def test_unreadable_and_malformed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["validate-config", str(missing)]) == 2
    assert "cannot read" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("[node\nnode_id = ")
    assert main(["validate-config", str(broken)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_quiet_hours_across_midnight() -> None:
    from datetime import time

    q = load_config(BASE).siren.quiet_hours
    assert q.contains(time(23, 30)) and q.contains(time(2, 0))
    assert not q.contains(time(12, 0)) and not q.contains(time(5, 0))


def test_rt_pattern_override_wins_over_preset() -> None:
    data = base()
    data["siren"]["patterns"] = {"PANIC": "4-4"}
    cfg = parse_config(data)
    assert cfg.siren.pattern_for("PANIC").canonical() == "4-4"  # type: ignore[arg-type]
    assert cfg.siren.pattern_for("KEBAKARAN").canonical() == "3-3-3"  # type: ignore[arg-type]


def test_every_field_is_described() -> None:
    def walk(schema: dict[str, Any], defs: dict[str, Any], where: str) -> None:
        for name, prop in schema.get("properties", {}).items():
            assert prop.get("description") or "$ref" in prop or "allOf" in prop, f"{where}.{name}"

    schema = json.loads(render_schema())
    defs = schema.get("$defs", {})
    walk(schema, defs, "NodeConfig")
    for name, d in defs.items():
        if d.get("type") == "object":
            walk(d, defs, name)


def test_committed_schema_is_not_stale() -> None:
    assert SCHEMA_PATH.read_text() == render_schema(), (
        "firmware_config/schema is stale: run `python -m edge.config --schema`")
