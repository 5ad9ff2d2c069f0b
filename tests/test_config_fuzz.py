"""Bad technician input never prints a traceback (issue 10, item 7).

hypothesis feeds generated TOML text, generated TOML documents and mutated valid configs to
``kentongan-edge validate-config``, ``status`` and ``selftest`` and to ``kentongan-central
validate-config`` (in-process ``main()``: an exception escaping it is a traceback). Every run
must end with exit code 0 (a valid config) or 2 (bad config) and, for 2, an ``error: KEY: reason``
line; a mutated key is named. A few real subprocess runs check the same on the installed entry
points, and relative paths resolve against the config file in both config models.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from datetime import time as dtime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from central_sync.cli import main as central_main
from central_sync.config import load_central_config
from edge.cli import main as edge_main
from edge.config import load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "firmware_config" / "examples"
SOAK = os.environ.get("KENTONGAN_SOAK") == "1"
FAST = settings(max_examples=1500 if SOAK else 120, deadline=None, derandomize=not SOAK,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
SLOW = settings(max_examples=300 if SOAK else 25, deadline=None, derandomize=not SOAK,
                suppress_health_check=[HealthCheck.too_slow])
ERROR_LINE = re.compile(r"^error: (\S.*?): \S", re.M)


# -- a small TOML writer (inline tables: any generated document can be written) ---------------


def toml_str(v: str) -> str:
    """A TOML basic string (every Unicode scalar value survives the round trip)."""
    out = []
    for ch in v:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else
                                             "-inf" if v == -math.inf else repr(v))
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_str(str(k))} = {toml_value(x)}"
                               for k, x in v.items()) + "}"
    if isinstance(v, dtime):
        return v.isoformat()
    return str(v)


def toml_doc(data: dict[str, Any]) -> str:
    return "".join(f"{toml_str(str(k))} = {toml_value(v)}\n" for k, v in data.items())


scalars = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(),
                    st.text(max_size=30), st.times())
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)
deeply_nested = st.integers(30, 400).map(lambda n: "[" * n + "1" + "]" * n)
TOKENS = ["[", "]", "[[", "]]", "=", "\n", '"', "'", "{", "}", ",", ".", "node", "storage",
          "state_dir", "siren", "pin", "=1", '= "x"', "true", "1979-05-27", "#", "\\u0000",
          "\x00", "\xff", "🙂", " "]
toml_text = st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=40).map("".join),
    st.text(max_size=200),
    deeply_nested.map(lambda s: f"[node]\nnode_id = {s}\n"),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


def node_base(tmp: Path) -> dict[str, Any]:
    data = tomllib.loads((EXAMPLES / "post-tembalang-rt03.toml").read_text())
    data["storage"]["state_dir"] = str(tmp / "state")
    data["sync"] = {"enabled": False}
    return data


def central_base(tmp: Path) -> dict[str, Any]:
    data = tomllib.loads((EXAMPLES / "central-dev.toml").read_text())
    data["database"] = str(tmp / "central.db")
    return data


def leaves(data: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out += leaves(v, key) if isinstance(v, dict | list) and v else [key]
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += leaves(v, f"{prefix}.{i}") if isinstance(v, dict) else [f"{prefix}.{i}"]
    return out


def _parent(data: Any, key: str) -> tuple[Any, str | int]:
    parts = key.split(".")
    for p in parts[:-1]:
        data = data[int(p)] if isinstance(data, list) else data[p]
    last = parts[-1]
    return data, int(last) if isinstance(data, list) else last


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """(mutated config, the key a rejection must name, or None when any key may be named)."""
    data = json.loads(json.dumps(base, default=str))   # deep copy; times become strings
    if "siren" in data and "quiet_hours" in data["siren"]:
        data["siren"]["quiet_hours"] = {"start": "22:00:00", "end": "05:00:00"}
    keys = leaves(data)
    key = draw(st.sampled_from(keys))
    parent, last = _parent(data, key)
    how = draw(st.sampled_from(["replace", "delete", "unknown", "deep", "path"]))
    if how == "replace":
        parent[last] = draw(values)
        return data, key.split(".")[0]
    if how == "delete":
        if isinstance(parent, list):
            parent.pop(int(last))
        else:
            del parent[last]
        return data, None
    if how == "unknown":
        if isinstance(parent, dict):
            parent[draw(st.sampled_from(["bogus", "node_idd", "pinn", "x-y"]))] = 1
            return data, None
        return data, None
    if how == "deep":
        parent[last] = json.loads(draw(deeply_nested))
        return data, key.split(".")[0]
    parent[last] = draw(st.sampled_from(["", ".", "/", "/dev/null", "relative/x", "\x00",
                                         "a" * 5000]))
    return data, None


# -- running the CLIs in-process ---------------------------------------------------------------


def run(main: Any, argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)   # any exception escaping main() would be a traceback: fails the test
    return rc, err.getvalue() + out.getvalue()


def check(rc: int, text: str, key: str | None = None) -> None:
    assert "Traceback" not in text
    assert rc in (0, 2), (rc, text)
    if rc == 2:
        m = ERROR_LINE.search(text) or re.search(r"FAIL\s+config\s+(\S+):", text)
        assert m, text
        if key is not None:
            assert key in text, (key, text)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "a-file").write_text("not a directory\n")
    yield d


def _write(work: Path, text: str) -> Path:
    p = work / "node.toml"
    p.write_bytes(text.encode("utf-8", "surrogatepass"))
    return p


@FAST
@given(text=toml_text)
def test_generated_toml_text(work: Path, text: str) -> None:
    p = _write(work, text)
    for argv in (["validate-config", str(p)], ["status", "--config", str(p)]):
        check(*run(edge_main, argv))
    check(*run(central_main, ["validate-config", str(p)]))


@FAST
@given(doc=st.dictionaries(st.text(max_size=12), values, max_size=6))
def test_generated_toml_documents(work: Path, doc: dict[str, Any]) -> None:
    p = _write(work, toml_doc(doc))
    check(*run(edge_main, ["validate-config", str(p)]))
    check(*run(central_main, ["validate-config", str(p)]))


@FAST
@given(data=st.data())
def test_mutated_node_configs(work: Path, data: st.DataObject) -> None:
    cfg, key = data.draw(mutated(node_base(work)))
    p = _write(work, toml_doc(cfg))
    rc, text = run(edge_main, ["validate-config", str(p)])
    check(rc, text, key)
    check(*run(edge_main, ["status", "--config", str(p)]))


@SLOW
@given(data=st.data())
def test_mutated_node_configs_selftest(work: Path, data: st.DataObject) -> None:
    cfg, _key = data.draw(mutated(node_base(work)))
    p = _write(work, toml_doc(cfg))
    rc, text = run(edge_main, ["selftest", "--config", str(p), "--simulate", "--no-siren"])
    assert "Traceback" not in text
    # a valid config runs the checklist (1 when a required check fails there, e.g. no pins)
    assert rc in (0, 1, 2), (rc, text)


@FAST
@given(data=st.data())
def test_mutated_central_configs(work: Path, data: st.DataObject) -> None:
    cfg, key = data.draw(mutated(central_base(work)))
    p = work / "central.toml"
    p.write_text(toml_doc(cfg))
    check(*run(central_main, ["validate-config", str(p)]), key)


# -- the cases of the issue, also as real processes -----------------------------------------------


def _node_file(tmp: Path, **storage: str) -> Path:
    data = node_base(tmp)
    data["storage"].update(storage)
    data["siren"]["quiet_hours"] = {"start": "22:00:00", "end": "05:00:00"}
    p = tmp / "node.toml"
    p.write_text(toml_doc(data))
    return p


@pytest.mark.parametrize("cmd", ["status", "selftest", "sim-press"])
def test_state_dir_is_a_file(tmp_path: Path, cmd: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for state in (blocker, blocker / "below"):
        p = _node_file(tmp_path, state_dir=str(state))
        argv = {"status": ["status", "--config", str(p)],
                "selftest": ["selftest", "--config", str(p), "--simulate", "--no-siren"],
                "sim-press": ["sim", "press", "panic", "--config", str(p)]}[cmd]
        rc, text = run(edge_main, argv)
        assert rc == 2 and "storage.state_dir" in text and "not a directory" in text, text


@pytest.mark.parametrize("state", ["/tmp/a\x00b", "a" * 300, "/x/" + "b" * 5000])
def test_unusable_state_dir_paths_name_the_key(tmp_path: Path, state: str) -> None:
    p = _node_file(tmp_path, state_dir=state)
    for argv in (["validate-config", str(p)], ["status", "--config", str(p)],
                 ["selftest", "--config", str(p), "--simulate", "--no-siren"]):
        rc, text = run(edge_main, argv)
        assert rc == 2 and "storage.state_dir" in text, (argv, text)


SUBPROCESS_CASES = [
    ("edge", ["validate-config"], "a = " + "[" * 5000 + "]" * 5000 + "\n", "not valid TOML"),
    ("edge", ["validate-config"], "[node]\nrw = " + "[" * 60 + "]" * 60 + "\n", "node.rw"),
    ("central", ["validate-config"], "database = " + "[" * 5000 + "]" * 5000 + "\n",
     "not valid TOML"),
    ("central", ["validate-config"], 'database = "x.db"\n[pki]\ndir = 5\n', "pki.dir"),
    ("edge", ["validate-config"], "\xff\xfe garbage", "not valid TOML"),
]


@pytest.mark.parametrize("which,argv,text,needle", SUBPROCESS_CASES)
def test_real_processes_print_no_traceback(tmp_path: Path, which: str, argv: list[str],
                                           text: str, needle: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_bytes(text.encode("utf-8", "surrogateescape"))
    module = "edge.cli" if which == "edge" else "central_sync.cli"
    proc = subprocess.run([sys.executable, "-m", module, *argv, str(p)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and needle in proc.stderr, proc.stderr


def test_state_dir_file_in_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    p = _node_file(tmp_path, state_dir=str(tmp_path / "a-file"))
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "status", "--config", str(p)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "storage.state_dir" in proc.stderr


# -- relative paths: against the config file, never the working directory ---------------------


def test_relative_paths_resolve_against_the_node_config_file(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc" / "kentongan"
    etc.mkdir(parents=True)
    data = node_base(tmp_path)
    data["storage"]["state_dir"] = "state"
    data["sync"] = {"enabled": True, "tls": {"ca_file": "keys/ca.crt",
                                             "cert_file": "keys/node.crt",
                                             "key_file": "/abs/node.key"}}
    data["security"] = {"node_signing_key_file": "keys/signing.key",
                        "central_command_key_file": "../central.pub"}
    data["siren"]["quiet_hours"] = {"start": "22:00:00", "end": "05:00:00"}
    p = etc / "node.toml"
    p.write_text(toml_doc(data))
    monkeypatch.chdir(tmp_path)   # a different working directory must not matter
    cfg = load_config(Path("etc/kentongan/node.toml"))
    assert cfg.storage.state_dir == etc / "state"
    assert cfg.sync.tls is not None
    assert cfg.sync.tls.ca_file == etc / "keys/ca.crt"
    assert cfg.sync.tls.key_file == Path("/abs/node.key")
    assert cfg.security is not None
    assert cfg.security.central_command_key_file == etc / "../central.pub"


def test_relative_paths_resolve_against_the_central_config_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "central.toml").write_text(
        'database = "db/central.db"\n'
        '[broker.tls]\nca_file = "pki/ca.crt"\ncert_file = "pki/c.crt"\nkey_file = "pki/c.key"\n'
        '[pki]\ndir = "pki"\n'
        '[web]\nunseal_key_file = "pki/seal.key"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_central_config("etc/central.toml")
    assert cfg.database == etc / "db/central.db"
    assert cfg.broker.tls is not None and cfg.broker.tls.ca_file == etc / "pki/ca.crt"
    assert cfg.pki is not None and cfg.pki.dir == etc / "pki"
    assert cfg.web is not None and cfg.web.unseal_key_file == str(etc / "pki/seal.key")
