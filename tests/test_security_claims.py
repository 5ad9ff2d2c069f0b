"""Claims of docs/security.md that no other test file covers: no default accounts, hostile text
from a post is escaped on the desk, private keys never reach a command's output."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from central_sync.cli import main as central_main
from central_sync.web.testing import WebEnv, event

XSS = "<script>alert('post')</script>"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    e = WebEnv(tmp_path / "central.db")
    yield e
    e.close()


def test_no_default_accounts(env: WebEnv) -> None:
    assert env.ctx.tables.user_names() == []
    for user, password in (("admin", "admin"), ("admin", "password"), ("root", "kentongan")):
        assert env.anon.post("/api/login", json={"username": user, "password": password}
                             ).status_code == 401


def test_text_from_a_post_is_escaped_on_the_desk(env: WebEnv) -> None:
    env.user("op", "operator")
    env.node("pos-a")
    [event_id] = env.events(event("pos-a", "PANIC", payload={"note": XSS}))
    incident = env.incident_of(event_id)
    op, csrf = env.client("op")
    assert op.post(f"/api/incidents/{incident}/ack", json={"note": XSS},
                   headers={"X-CSRF-Token": csrf}).status_code == 200
    for url in (f"/incidents/{incident}", "/", f"/fragments/incidents/{incident}"):
        page = op.get(url)
        assert page.status_code == 200
        assert XSS not in page.text and "<script>alert" not in page.text, url
    assert "&lt;script&gt;alert" in op.get(f"/incidents/{incident}").text


def test_private_keys_never_reach_command_output(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "central.toml"
    conf.write_text('database = "central.db"\n[pki]\ndir = "pki"\n')
    bundle = tmp_path / "pos.bundle"
    for argv in (["ca", "init"], ["enrol", "pos-a-01", "--kelurahan", "33.74.10.1005", "--rw",
                                  "1", "--rt", "2", "--name", "Pos A", "--out", str(bundle)],
                 ["renew", "pos-a-01"], ["registry"], ["revoke", "pos-a-01"], ["ca", "crl"]):
        assert central_main([*argv, "--config", str(conf)]) == 0
    out = capsys.readouterr()
    assert "PRIVATE KEY" not in out.out + out.err
    # ...while the bundle does carry them, as files of mode 0600
    with tarfile.open(bundle) as tar:
        key = tar.extractfile("keys/node.key")
        assert key is not None and b"PRIVATE KEY" in io.BytesIO(key.read()).read()
    assert bundle.stat().st_mode & 0o777 == 0o600
    for name in ("ca.key", "command.key", "seal.key", "central-mqtt.key", "broker.key"):
        assert (tmp_path / "pki" / name).stat().st_mode & 0o777 == 0o600


def test_every_claim_in_security_md_names_an_existing_test() -> None:
    import ast
    import re

    root = Path(__file__).resolve().parent
    doc = (root.parent / "docs" / "security.md").read_text()
    cited = set(re.findall(r"`(test_\w+\.py)::(test_\w+)`", doc))
    assert len(cited) > 60
    missing = []
    for file, name in sorted(cited):
        path = root / file
        tree = ast.parse(path.read_text()) if path.exists() else None
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)} \
            if tree else set()
        if name not in names:
            missing.append(f"{file}::{name}")
    assert not missing, missing
    # the ETSI table lists the 13 provisions of clause 5, and clause 6
    for n in range(1, 14):
        assert f"| 5.{n} " in doc, n
    assert "| 6 Data protection" in doc
