"""The full-disk write reserve's size is a node config field (``storage.reserve_mb``) with bounds:
the outbox preallocates exactly that much, 0 disables it, out-of-range values name the key."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from edge.config import parse_config
from edge.errors import ConfigError
from edge.outbox import Outbox, StorageQuota
from edge.storage import DEFAULT_RESERVE_BYTES

EXAMPLE = Path(__file__).resolve().parent.parent / "firmware_config" / "examples" / "post-tembalang-rt03.toml"


def _cfg(reserve_mb: float | None) -> dict[str, object]:
    data = tomllib.loads(EXAMPLE.read_text())
    if reserve_mb is None:
        data["storage"].pop("reserve_mb", None)
    else:
        data["storage"]["reserve_mb"] = reserve_mb
    return data


def test_default_is_four_mib() -> None:
    cfg = parse_config(_cfg(None))
    assert StorageQuota.from_config(cfg.storage).reserve_bytes == DEFAULT_RESERVE_BYTES == 4 << 20


@pytest.mark.parametrize("mb", [2, 0])
def test_outbox_preallocates_the_configured_size(tmp_path: Path, mb: float) -> None:
    cfg = parse_config(_cfg(mb))
    quota = StorageQuota.from_config(cfg.storage)
    assert quota.reserve_bytes == int(mb * (1 << 20))
    ob = Outbox(tmp_path / "outbox.db", "pos-a", quota=quota)
    try:
        reserve = tmp_path / "outbox.db.reserve"
        if mb:
            assert reserve.stat().st_size == 2 << 20
            assert ob.reserve.present
        else:
            assert not reserve.exists()
            assert ob.storage_health()["state"] == "ok"  # no reserve configured is not "degraded"
    finally:
        ob.close()


@pytest.mark.parametrize("mb", [0.5, -1, 257])
def test_out_of_range_names_the_key(mb: float) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_cfg(mb))
    assert "storage.reserve_mb" in str(err.value)
