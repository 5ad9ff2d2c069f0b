"""The architecture contracts (import-linter, configured in pyproject.toml) hold, and they would
catch a violation: central importing a post internal, or central's core importing the desk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).parent / "lint-imports")


def _contracts_text() -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return text[text.index("[tool.importlinter]"):]


def _run(cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT, "--config", str(cwd / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_project_keeps_its_import_contracts() -> None:
    result = _run(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_contracts_catch_violations(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(_contracts_text(), encoding="utf-8")
    files = {
        "edge/__init__.py": "",
        "edge/errors.py": "",
        "edge/config.py": "",
        "edge/sync/__init__.py": "",
        "edge/sync/wire.py": "from edge import errors\n",
        "central_sync/__init__.py": "",
        "central_sync/web/__init__.py": "",
        "central_sync/web/desk.py": "from central_sync import ok\n",
        "central_sync/ok.py": "from edge.sync import wire\nfrom edge.errors import *\n",
        "central_sync/bad_edge.py": "from edge.config import *\n",
        "central_sync/bad_core.py": "from central_sync.web import desk\n",
    }
    for name, body in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body, encoding="utf-8")
    result = _run(tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode != 0
    assert "0 kept, 2 broken" in result.stdout, result.stdout[-3000:]
    assert "central_sync.bad_edge -> edge.config" in result.stdout
    assert "central_sync.bad_core -> central_sync.web" in result.stdout
    assert "central_sync.ok" not in result.stdout.split("Broken contracts")[-1]
