"""docs/install-pi.md is executable: its ``doc-test: run`` blocks run in order against a scratch
prefix (``sudo`` dropped, paths under the prefix, ``--simulate --no-siren`` for the self-test
because this machine has no GPIO), against the production broker config, and what they install
must agree with each other: the unit's ExecStart config and LoadCredential= sources are the files
install-bundle wrote and the config names."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from helpers_install import (
    EDGE_CLI,
    enrol,
    make_central,
    root_skip_reason,
    start_production_broker,
    world_readable_tmpdir,
)

from edge.config import load_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "install-pi.md"
EXAMPLE_FP = "1a2b:3c4d:5e6f:7a8b:9c0d:1e2f:3a4b:5c6d"
EXAMPLE_BUNDLE = "/media/usb/rt03.bundle"
MARK = re.compile(r"<!-- doc-test: (run|skip: .+) -->")


def blocks(text: str) -> list[tuple[str, str]]:
    """(marker, body) of every ```sh block; the marker is the line right before the fence."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            m = MARK.fullmatch(lines[i - 1].strip()) if i else None
            assert m, f"docs/install-pi.md line {i + 1}: ```sh block without a doc-test marker"
            j = lines.index("```", i + 1)
            out.append((m.group(1), "\n".join(lines[i + 1:j])))
            i = j
        i += 1
    return out


def test_every_block_is_marked_and_the_doc_matches_the_tools() -> None:
    found = blocks(DOC.read_text())
    assert sum(1 for m, _ in found if m == "run") >= 4
    text = DOC.read_text()
    assert "validate-config --config" in text and "set-timezone" in text
    assert "install-unit" in text and "systemd/kentongan-edge.service" not in text


def _localise(body: str, prefix: Path, bundle: Path, fingerprint: str) -> str:
    body = re.sub(r"(^|;\s*|&&\s*)sudo ", r"\1", body, flags=re.M)
    body = body.replace("/opt/kentongan/current/bin/kentongan-edge", EDGE_CLI)
    body = body.replace("install-bundle", f"install-bundle --prefix {prefix}")
    body = body.replace("install-unit", f"install-unit --prefix {prefix}")
    body = body.replace(EXAMPLE_BUNDLE, str(bundle)).replace(EXAMPLE_FP, fingerprint)
    body = body.replace("/etc/kentongan/", f"{prefix}/etc/kentongan/")
    return "\n".join(line + " --simulate --no-siren" if " selftest " in line else line
                     for line in body.splitlines())


@pytest.mark.skipif(root_skip_reason() is not None, reason=str(root_skip_reason()))
def test_runnable_commands_in_order_against_a_prefix() -> None:
    root = world_readable_tmpdir("kentongan-doc-")
    central = make_central(root / "central")
    broker = start_production_broker(central, root / "broker")
    try:
        bundle = root / "usb" / "rt03.bundle"
        bundle.parent.mkdir()
        enrol(central, "rt03-doc", bundle, broker.port)
        prefix = root / "prefix"
        outputs = []
        for marker, body in blocks(DOC.read_text()):
            if marker != "run":
                continue
            script = _localise(body, prefix, bundle, central.fingerprint)
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"
            outputs.append(proc.stdout)
        assert not bundle.exists()  # shredded
        assert any(": valid" in o for o in outputs)
        assert any("RESULT: all required checks passed" in o for o in outputs), outputs
        etc = prefix / "etc" / "kentongan"
        for key in ("node.key", "signing.key"):
            st = (etc / "keys" / key).stat()
            assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o600
        # Every key path the doc names exists where install-bundle put it.
        for name in set(re.findall(r"/etc/kentongan/keys/([\w.-]+)", DOC.read_text())):
            assert (etc / "keys" / name).exists(), name
        unit = (prefix / "etc" / "systemd" / "system" / "kentongan-edge.service").read_text()
        cfg_path = etc / "node.toml"
        exec_start = re.search(r"^ExecStart=(\S+) run --config (\S+)$", unit, re.M)
        assert exec_start and exec_start.group(2) == str(cfg_path)
        assert Path(exec_start.group(1)).name == "kentongan-edge"
        creds = dict(re.findall(r"^LoadCredential=([^:]+):(\S+)$", unit, re.M))
        cfg = load_config(cfg_path)
        assert cfg.sync.tls is not None and cfg.security is not None
        for path in (cfg.sync.tls.key_file, cfg.security.node_signing_key_file):
            assert creds.get(path.name) == str(path), (path, creds)
    finally:
        broker.stop()
        shutil.rmtree(root, ignore_errors=True)
