"""Staged rollout: deterministic rings, canaries named by the admin, a ring advances only when
its posts are healthy, and more than 1 % failures in a ring halts the rollout by itself so that
no post outside the ring (and no post of the ring not yet updated) is offered the version. Posts
talk to the real release server over mTLS with CA-issued certificates."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from update_helpers import Pki, Server, build_fixture

from central_sync.errors import CentralError
from central_sync.pki import CertificateAuthority, PkiFiles, cert_pem, new_tls_key, private_key_pem
from central_sync.release.rollout import RolloutStore, bucket
from central_sync.release.serve import ReleaseServer, server_context
from edge.update import UpdateError
from edge.update.fetch import ReleaseClient, ServerTls


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Path]:
    base = tmp_path_factory.mktemp("rollout")
    pki = Pki.create(base / "pki")
    root = base / "releases"
    build_fixture(pki, root, base, "1.0.0")
    build_fixture(pki, root, base, "1.1.0")
    return pki, root


@pytest.fixture
def server(world: tuple[Pki, Path], tmp_path: Path) -> Iterator[Server]:
    srv = Server(world[0], world[1], tmp_path / "rollout.db")
    try:
        yield srv
    finally:
        srv.close()


#: Posts (each its own mTLS client) of the halt test: enough for a 10 % ring of about a dozen,
#: where one failure is above 1 %.
RING_POSTS = 120


def clients(pki: Pki, d: Path, url: str, n: int) -> dict[str, ReleaseClient]:
    ca = CertificateAuthority.load(PkiFiles(pki.dir))
    out = {}
    for i in range(n):
        node = f"smg-post-{i:04d}"
        key = new_tls_key()
        (d / f"{node}.key").write_bytes(private_key_pem(key))
        (d / f"{node}.crt").write_bytes(cert_pem(ca.issue_client(node, key.public_key(), 30)))
        out[node] = ReleaseClient(url, ServerTls(pki.dir / "ca.crt", d / f"{node}.crt",
                                                 d / f"{node}.key"))
    return out


def test_rings_are_deterministic_and_nested(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "r.db")
    ids = [f"node-{i}" for i in range(20_000)]
    rings = [store.ring_of(n, set()) for n in ids]
    share = {r: rings.count(r) / len(ids) for r in ("1%", "10%", "all")}
    assert 0.007 < share["1%"] < 0.013 and 0.08 < share["10%"] < 0.10
    assert [store.ring_of(n, set()) for n in ids[:50]] == rings[:50]  # same answer every time
    assert bucket("node-1") == bucket("node-1")
    store.set_canary("node-7")
    assert store.ring_of("node-7") == "canary"
    assert store.in_ring("canary", "1%") and store.in_ring("1%", "all")
    assert not store.in_ring("all", "10%")


def test_ring_advances_only_when_its_posts_are_healthy(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "r.db")
    store.set_canary("pos-a")
    store.set_canary("pos-b")
    for n in ("pos-a", "pos-b", "pos-c"):
        store.seen(n, "1.0.0")
    with pytest.raises(CentralError, match=r"start 1\.1\.0 at ring canary first"):
        store.start("1.1.0", "10%")
    store.start("1.1.0", "canary")
    assert store.target_for("pos-a", "1.0.0") == "1.1.0"
    other = "pos-c" if store.ring_of("pos-c") == "all" else None
    if other:
        assert store.target_for(other, "1.0.0") is None
    store.report("pos-a", "1.1.0", "healthy")
    with pytest.raises(CentralError, match=r"pos-b \(no report"):
        store.start("1.1.0", "1%")
    store.report("pos-b", "1.1.0", "healthy")
    assert store.start("1.1.0", "1%").status == "active"


def test_halt_above_one_percent_keeps_the_release_inside_the_ring(
        world: tuple[Pki, Path], server: Server, tmp_path: Path) -> None:
    pki, _root = world
    posts = clients(pki, tmp_path, server.url, RING_POSTS)
    server.store.start("1.0.0", "all", force=True)
    for c in posts.values():
        assert c.current(None)["version"] == "1.0.0"
    server.store.start("1.1.0", "10%", force=True)
    offered = {n: c.current("1.0.0") for n, c in posts.items()}
    ring = {n for n, o in offered.items() if o["ring"] in ("1%", "10%")}
    assert 0.04 * RING_POSTS <= len(ring) <= 0.2 * RING_POSTS  # the 1 % and 10 % rings (11 posts of 120)
    assert {n for n, o in offered.items() if o["version"] == "1.1.0"} == ring
    # Half of the ring updates and is healthy; one post fails: 1 of len(ring) > 1 %.
    ring_list = sorted(ring)
    updated = ring_list[: len(ring_list) // 2]
    for n in updated:
        assert posts[n].report("1.1.0", "healthy")["rollout"] == "active"
    bad = ring_list[-1]
    reply = posts[bad].report("1.1.0", "rolled_back", "self-check failed: siren")
    assert reply["rollout"] == "halted" and "failed" in reply["halted_reason"]
    # After the halt: nobody outside the ring, and no post of the ring that has not updated,
    # is offered 1.1.0; posts already on it stay.
    for n, c in posts.items():
        got = c.current("1.1.0" if n in updated else "1.0.0")["version"]
        assert got == ("1.1.0" if n in updated else "1.0.0"), n
    summary = server.store.latest("1.1.0")
    assert summary is not None and summary.status == "halted"


def test_one_failure_in_a_large_ring_does_not_halt(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "r.db")
    nodes = [f"n-{i}" for i in range(150)]
    for n in nodes:
        store.seen(n, "1.0.0")
    store.start("2.0.0", "all", force=True)
    store.report(nodes[0], "2.0.0", "failed", "x")  # 1/150 = 0.67 %
    latest = store.latest("2.0.0")
    assert latest is not None and latest.status == "active"
    store.report(nodes[1], "2.0.0", "failed", "x")  # 2/150 = 1.33 %
    latest = store.latest("2.0.0")
    assert latest is not None and latest.status == "halted" and "2 of 150" in str(
        latest.halted_reason)


def test_server_requires_a_client_certificate_from_central_ca(
        world: tuple[Pki, Path], server: Server, tmp_path: Path) -> None:
    pki, _root = world
    other = Pki.create(tmp_path / "other-pki")
    clients(other, tmp_path, server.url, 1)  # smg-post-0000.crt/.key issued by ANOTHER CA
    # Trust central's server, but present a certificate of another CA: refused in TLS.
    c = ReleaseClient(server.url, ServerTls(pki.dir / "ca.crt", tmp_path / "smg-post-0000.crt",
                                            tmp_path / "smg-post-0000.key"))
    with pytest.raises(UpdateError, match="release server"):
        c.current(None)
    assert server.store.nodes() == []  # never reached the application


def test_server_answers_with_tcp_nodelay(world: tuple[Pki, Path], tmp_path: Path) -> None:
    """An answer is written as headers, then body: on a connection without TCP_NODELAY Nagle
    holds the body until the post's delayed ACK (about 40 ms of every ``current`` and
    ``report``; the ring test's 360 requests took 16 s). Every accepted connection has it set."""
    pki, root = world
    srv = ReleaseServer(("127.0.0.1", 0), root, RolloutStore(tmp_path / "r.db"),
                        server_context(pki.dir / "ca.crt", pki.dir / "release-server.crt",
                                       pki.dir / "release-server.key"))
    try:
        with socket.create_connection(srv.server_address[:2], timeout=10):
            conn, _addr = srv.get_request()
            try:
                assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            finally:
                conn.close()
    finally:
        srv.server_close()
        srv.rollouts.close()
