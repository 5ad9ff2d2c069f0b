"""A simulated post updating from a real release server (mTLS with an enrolled node
certificate): first install, a healthy update, a crash-looping release rolled back by itself,
and every refusal (foreign key, truncated download, hash mismatch, downgrade, too old) leaving
the post exactly as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from update_helpers import Pki, Post, Server, build_fixture, wait_for

from central_sync.release.manifest import WHEELS, write_signed
from edge.update import UpdateError
from edge.update.manifest import manifest_from_bytes

NODE = "pos-upd-01"


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Path]:
    base = tmp_path_factory.mktemp("rel")
    pki = Pki.create(base / "pki")
    root = base / "releases"
    build_fixture(pki, root, base, "1.0.0")
    build_fixture(pki, root, base, "1.1.0", min_from="1.0.0")
    build_fixture(pki, root, base, "1.2.0", broken="crash")
    build_fixture(pki, root, base, "3.0.0", min_from="2.0.0")
    return pki, root


@pytest.fixture
def server(releases: tuple[Pki, Path], tmp_path: Path) -> Iterator[Server]:
    pki, root = releases
    srv = Server(pki, root, tmp_path / "rollout.db")
    try:
        yield srv
    finally:
        srv.close()


def _snapshot(post: Post) -> dict[str, object]:
    lay = post.layout
    return {"current": lay.link_target(lay.current), "good": lay.link_target(lay.good),
            "installed": lay.complete_versions(),
            "releases": sorted(p.name for p in lay.releases.iterdir()),
            "state": lay.state_file.read_bytes() if lay.state_file.exists() else None}


def _offer(server: Server, version: str) -> None:
    server.store.start(version, "all", force=True)


@pytest.fixture
def post(releases: tuple[Pki, Path], server: Server, tmp_path: Path) -> Iterator[Post]:
    pki, _root = releases
    p = Post(tmp_path / "post", NODE, pki, server.url, window=40)
    _offer(server, "1.0.0")
    assert "first install" in p.updater().check_once()
    p.start_agent()
    wait_for(lambda: p.agent_version() == "1.0.0", 60, "agent 1.0.0 up")
    try:
        yield p
    finally:
        p.stop_agent()


def test_update_passes_health_check_then_bad_release_rolls_back(post: Post,
                                                                 server: Server) -> None:
    _offer(server, "1.1.0")
    out = post.updater().check_once()
    assert out.startswith("updated to 1.1.0"), out
    lay = post.layout
    assert lay.link_target(lay.current) == lay.link_target(lay.good) == "1.1.0"
    assert post.agent_version() == "1.1.0"
    assert lay.complete_versions() == ["1.1.0"]  # 1.0.0 pruned only after 1.1.0 passed
    assert sorted(p.name for p in lay.wheels.iterdir()) == ["kfix-1.1.0-py3-none-any.whl"]
    node = {n["node_id"]: n for n in server.store.nodes()}[NODE]
    assert (node["report_version"], node["report_state"]) == ("1.1.0", "healthy")

    _offer(server, "1.2.0")  # its agent exits at once: a crash loop
    out = post.updater().check_once()
    assert out.startswith("rolled back from 1.2.0 to 1.1.0"), out
    assert "crash loop" in out
    assert lay.link_target(lay.current) == "1.1.0"
    wait_for(lambda: post.agent_version() == "1.1.0", 60, "agent back on 1.1.0")
    node = {n["node_id"]: n for n in server.store.nodes()}[NODE]
    assert node["report_state"] == "rolled_back" and "crash loop" in node["report_reason"]
    st = json.loads(lay.state_file.read_text())
    assert st["phase"] == "idle" and "1.2.0" in st["failed"]
    # The rollout of 1.2.0 halted by itself (1 of 1 posts failed): nobody is offered it.
    latest = server.store.latest("1.2.0")
    assert latest is not None and latest.status == "halted" and "1 of 1" in str(
        latest.halted_reason)
    assert post.updater().check_once() == "up to date (1.1.0)"


def _refused(post: Post, reason: str) -> str:
    before = _snapshot(post)
    with pytest.raises(UpdateError) as exc:
        post.updater().check_once()
    assert exc.value.reason == reason, exc.value
    assert _snapshot(post) == before
    assert post.agent_version() == "1.0.0"
    return str(exc.value)


def test_foreign_key_release_is_refused(post: Post, server: Server, releases: tuple[Pki, Path],
                                        tmp_path: Path) -> None:
    _pki, root = releases
    forged = root / "1.5.0"
    shutil.copytree(root / "1.1.0", forged)
    m = manifest_from_bytes((forged / "manifest.json").read_bytes())
    try:
        write_signed(forged, m.__class__(**{**m.__dict__, "version": "1.5.0"}),
                     Ed25519PrivateKey.generate())
        _offer(server, "1.5.0")
        assert "release key" in _refused(post, "foreign_key")
    finally:
        shutil.rmtree(forged)


def test_downgrade_and_too_old_are_refused(post: Post, server: Server) -> None:
    _offer(server, "3.0.0")  # updates only from 2.0.0
    assert "updates from 2.0.0" in _refused(post, "too_old")


def test_downgrade_is_refused(post: Post, server: Server, releases: tuple[Pki, Path]) -> None:
    _offer(server, "1.1.0")
    assert post.updater().check_once().startswith("updated to 1.1.0")
    server.store.start("1.0.0", "all", force=True)
    with pytest.raises(UpdateError) as exc:
        post.updater().check_once()
    assert exc.value.reason == "downgrade"
    assert post.layout.link_target(post.layout.current) == "1.1.0"


def test_truncated_and_altered_downloads_are_refused(post: Post, server: Server,
                                                     releases: tuple[Pki, Path]) -> None:
    _pki, root = releases
    wheel = next((root / "1.1.0" / WHEELS).glob("kfix-*.whl"))
    original = wheel.read_bytes()
    try:
        wheel.write_bytes(original[: len(original) // 2])  # server has half the file
        _offer(server, "1.1.0")
        assert "resumes" in _refused(post, "truncated")
        part = post.layout.wheels / (wheel.name + ".part")
        assert part.stat().st_size == len(original) // 2  # kept: the next try resumes
        altered = bytearray(original)
        altered[-10] ^= 0xFF
        wheel.write_bytes(bytes(altered))  # the rest arrives, but the bytes are not signed
        assert "does not match" in _refused(post, "hash_mismatch")
        assert not part.exists()
    finally:
        wheel.write_bytes(original)
    assert hashlib.sha256(wheel.read_bytes()).hexdigest()
    assert post.updater().check_once().startswith("updated to 1.1.0")  # clean retry works
