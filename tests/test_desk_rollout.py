"""The post overview shows each post's software version and update state, and a halted rollout,
read from the real rollout.db (written through the rollout module's own API)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from central_sync.release.overview import read_overview
from central_sync.release.rollout import RolloutStore
from central_sync.web.testing import WebEnv
from edge.sync.wire import Heartbeat


def _beat(env: WebEnv, node_id: str, version: str) -> None:
    env.store.upsert_heartbeat(Heartbeat(node_id=node_id, boot_id="b1", at=time.time(),
                                         version=version, time_quality="synced"), time.time())
    env.sync()


def _row(page: str, node_id: str) -> str:
    start = page.index(f'data-node-id="{node_id}"')
    return page[start:page.index("</tr>", start)]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    releases = tmp_path / "releases"
    e = WebEnv(tmp_path / "central.db", {"release_dir": str(releases)})
    for node in ("pos-a", "pos-b", "pos-c", "pos-d"):
        e.node(node)
    e.user("op", "operator")
    yield e
    e.close()


def _halted_rollout(db: Path) -> None:
    store = RolloutStore(db)
    try:
        for node in ("pos-a", "pos-b", "pos-c"):
            store.set_canary(node)
        store.start("0.1.2", "canary")
        store.report("pos-c", "0.1.2", "healthy")
        store.report("pos-b", "0.1.2", "trial")
        halted = store.report("pos-a", "0.1.2", "rolled_back", "siren")
        assert halted is not None and halted.status == "halted"
    finally:
        store.close()


def test_versions_update_states_and_halted_banner(env: WebEnv, tmp_path: Path) -> None:
    _beat(env, "pos-a", "0.1.0")      # rolled back
    _beat(env, "pos-b", "0.1.2")      # on trial
    _beat(env, "pos-c", "0.1.2")      # passed
    _beat(env, "pos-d", "0.1.1")      # never reported to the rollout
    op, _ = env.client("op")

    before = op.get("/posts").text    # no rollout.db yet: versions, nothing else
    assert "Versi" in before and "Pembaruan" not in before and "rollout-halted" not in before
    assert ">0.1.1<" in _row(before, "pos-d")
    assert not (tmp_path / "releases").exists()   # the desk never creates the release state

    _halted_rollout(tmp_path / "releases" / "rollout.db")
    page = op.get("/posts").text
    assert "Peluncuran 0.1.2 dihentikan: 1 dari 3 pos gagal" in page
    assert "Pembaruan" in page
    assert "gagal: siren, dikembalikan ke 0.1.0" in _row(page, "pos-a")
    assert ">0.1.0<" in _row(page, "pos-a")
    assert "0.1.2 sedang diuji" in _row(page, "pos-b")
    assert "terbaru" in _row(page, "pos-c") and ">0.1.2<" in _row(page, "pos-c")
    assert "terbaru" not in _row(page, "pos-d") and ">0.1.1<" in _row(page, "pos-d")

    english = op.get("/posts?lang=en").text
    assert "Rollout 0.1.2 halted: 1 of 3 posts failed" in english
    assert "failed: siren, rolled back to 0.1.0" in _row(english, "pos-a")
    assert "0.1.2 on trial" in _row(english, "pos-b")
    assert "up to date" in _row(english, "pos-c")
    assert ">Version<" in english and ">Update<" in english


def test_active_rollout_has_no_banner_and_offers_by_ring(env: WebEnv, tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "releases" / "rollout.db")
    store.set_canary("pos-a")
    store.start("0.1.2", "canary")
    store.seen("pos-a", "0.1.0")
    store.report("pos-b", "0.1.1", "healthy")          # outside the canary ring
    store.close()
    _beat(env, "pos-a", "0.1.0")
    op, _ = env.client("op")
    page = op.get("/posts?lang=en").text
    assert "rollout-halted" not in page
    assert "0.1.2 offered, no report yet" in _row(page, "pos-a")
    assert "not offered yet" in _row(page, "pos-b")


def test_overview_is_none_without_state_and_never_writes(tmp_path: Path) -> None:
    assert read_overview(None) is None
    assert read_overview(tmp_path / "nothing") is None
    assert not (tmp_path / "nothing").exists()
    db = tmp_path / "rel" / "rollout.db"
    RolloutStore(db).close()                          # the file, but no rollout yet
    assert read_overview(db.parent) is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "rollout.db").write_bytes(b"not a database" * 100)
    assert read_overview(tmp_path / "bad") is None    # logged, not raised
