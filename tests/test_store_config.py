"""The [store] section: one config change moves central to PostgreSQL; SQLite paths resolve
against the config file; exactly one of 'database' and [store] is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from central_sync.config import load_central_config
from central_sync.errors import CentralConfigError
from central_sync.store import redact_url


def test_store_url_forms(tmp_path: Path) -> None:
    cfg_file = tmp_path / "etc" / "central.toml"
    cfg_file.parent.mkdir()
    cfg_file.write_text('[store]\nurl = "sqlite:///data/central.db"\n')
    cfg = load_central_config(cfg_file)
    assert cfg.store_url == f"sqlite:///{tmp_path / 'etc' / 'data' / 'central.db'}"
    assert cfg.sqlite_file == tmp_path / "etc" / "data" / "central.db"
    cfg_file.write_text('database = "central.db"\n')
    assert load_central_config(cfg_file).store_url == f"sqlite:///{tmp_path / 'etc' / 'central.db'}"
    cfg_file.write_text('[store]\nurl = "postgresql://kentongan@db.internal:5432/kentongan"\n')
    cfg = load_central_config(cfg_file)
    assert cfg.store_url == "postgresql://kentongan@db.internal:5432/kentongan" and cfg.sqlite_file is None


@pytest.mark.parametrize(("body", "key"), [
    ("", "store.url"),
    ('database = "c.db"\n[store]\nurl = "sqlite:///c.db"\n', "store.url"),
    ('[store]\nurl = "mysql://x/y"\n', "store.url"),
    ('[store]\nurl = "sqlite:///c.db"\nextra = 1\n', "store.extra"),
])
def test_bad_store_sections_name_the_key(tmp_path: Path, body: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(CentralConfigError) as err:
        load_central_config(path)
    assert err.value.key_path == key


def test_passwords_never_reach_logs() -> None:
    assert redact_url("postgresql://k:s3cret@db:5432/x") == "postgresql://k:***@db:5432/x"
    assert redact_url("sqlite:////var/lib/c.db") == "sqlite:////var/lib/c.db"
