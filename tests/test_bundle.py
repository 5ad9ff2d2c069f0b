"""Installing an enrolment bundle on a node: verified, all-or-nothing, right modes; renewal."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import uuid
from pathlib import Path

import pytest

from central_sync.enrol import NodeInfo, enrol_node, renew_node
from central_sync.pki import PkiFiles, PkiSettings, init_ca, load_private_key
from central_sync.registry import Registry
from edge import bundle as edge_bundle
from edge.bundle import apply_certificate_renewal, install_bundle
from edge.config import load_config
from edge.errors import ConfigError, SecurityError
from edge.signing import EventSigner, EventVerifier, key_fingerprint, load_signing_key
from edge.sync.wire import EventEnvelope

INFO = NodeInfo("rt03-tembalang", "33.74.10.1001", 5, 3, "Pos Ronda RT 03")


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> tuple[PkiSettings, Registry]:
    settings = PkiSettings(dir=tmp_path_factory.mktemp("pki"), broker_hosts=("broker.local",))
    init_ca(settings)
    db = tmp_path_factory.mktemp("db") / "central.db"
    return settings, Registry(sqlite3.connect(db, check_same_thread=False))


@pytest.fixture(scope="module")
def bundle_file(central: tuple[PkiSettings, Registry],
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings, reg = central
    return enrol_node(settings, reg, INFO, tmp_path_factory.mktemp("out") / "node.bundle")


def _fp(settings: PkiSettings) -> str:
    return key_fingerprint(load_private_key(PkiFiles(settings.dir).command_key))  # type: ignore[arg-type]


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_install_verifies_and_sets_modes(bundle_file: Path, tmp_path: Path,
                                         central: tuple[PkiSettings, Registry]) -> None:
    settings, reg = central
    cfg_path = install_bundle(bundle_file, tmp_path, central_fingerprint=_fp(settings))
    root = tmp_path / "etc" / "kentongan"
    assert cfg_path == root / "node.toml"
    assert _mode(cfg_path) == 0o640
    assert _mode(root) == 0o750 and _mode(root / "keys") == 0o750
    assert _mode(root / "keys" / "node.key") == 0o600
    assert _mode(root / "keys" / "signing.key") == 0o600
    cfg = load_config(cfg_path)  # paths rewritten to the prefix, config valid
    assert cfg.sync.tls is not None and cfg.sync.tls.key_file == root / "keys" / "node.key"
    assert cfg.storage.state_dir == tmp_path / "var/lib/kentongan"
    assert cfg.security is not None
    # the installed signing key is the one central registered
    signer = EventSigner(load_signing_key(cfg.security.node_signing_key_file))
    env = EventEnvelope(event_id=uuid.uuid4().hex, node_id=INFO.node_id, boot_id="b", seq=0,
                        mono_ns=0, wall_time=1.0, time_quality="synced", type="PANIC",
                        priority=1, incident_id=None, payload={}, sig=None)
    EventVerifier(reg.lookup)(signer.sign(env))


def test_altered_bundle_is_refused_and_nothing_is_installed(bundle_file: Path,
                                                            tmp_path: Path) -> None:
    with tarfile.open(bundle_file) as tar:
        members = {ti.name: tar.extractfile(ti).read() for ti in tar.getmembers()}  # type: ignore[union-attr]
    members["node.toml"] = members["node.toml"].replace(b"broker.local", b"evil.example")
    bad = tmp_path / "altered.bundle"
    _write_tar(bad, members)
    with pytest.raises(SecurityError) as exc:
        install_bundle(bad, tmp_path / "root")
    assert exc.value.reason == "bad_bundle" and "SHA-256" in str(exc.value)
    assert not (tmp_path / "root" / "etc" / "kentongan").exists()
    assert not list((tmp_path / "root" / "etc").glob(".kentongan.staging-*")) \
        if (tmp_path / "root" / "etc").exists() else True
    # altering the manifest too breaks its signature
    manifest = json.loads(members["manifest.json"])
    import hashlib
    for entry in manifest["files"]:
        if entry["path"] == "node.toml":
            entry["sha256"] = hashlib.sha256(members["node.toml"]).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    _write_tar(bad, members)
    with pytest.raises(SecurityError, match="signature"):
        install_bundle(bad, tmp_path / "root")
    bad.write_bytes(bundle_file.read_bytes()[:200])
    with pytest.raises(SecurityError, match="bad_bundle"):
        install_bundle(bad, tmp_path / "root")
    assert not (tmp_path / "root" / "etc" / "kentongan").exists()


def test_foreign_bundle_is_refused(bundle_file: Path, tmp_path: Path,
                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    foreign = PkiSettings(dir=tmp_path_factory.mktemp("foreign-pki"))
    init_ca(foreign)
    freg = Registry(sqlite3.connect(":memory:"))
    foreign_bundle = enrol_node(foreign, freg, INFO, tmp_path / "foreign.bundle")
    # 1. against the fingerprint the technician was given
    with pytest.raises(SecurityError) as exc:
        install_bundle(foreign_bundle, tmp_path / "a", central_fingerprint="0000:1111")
    assert exc.value.reason == "foreign_bundle"
    # 2. against the central key already installed on the node (re-enrolment)
    install_bundle(bundle_file, tmp_path / "b")
    with pytest.raises(SecurityError) as exc:
        install_bundle(foreign_bundle, tmp_path / "b", force=True)
    assert exc.value.reason == "foreign_bundle"
    assert not (tmp_path / "a" / "etc" / "kentongan").exists()


def test_existing_install_needs_force_and_is_kept(bundle_file: Path, tmp_path: Path) -> None:
    install_bundle(bundle_file, tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        install_bundle(bundle_file, tmp_path)
    install_bundle(bundle_file, tmp_path, force=True)
    assert len(list((tmp_path / "etc").glob("kentongan.old-*"))) == 1


def test_renewal_installs_only_a_matching_certificate(
        bundle_file: Path, tmp_path: Path, central: tuple[PkiSettings, Registry]) -> None:
    settings, reg = central
    cfg = load_config(install_bundle(bundle_file, tmp_path))
    assert cfg.sync.tls is not None
    old = cfg.sync.tls.cert_file.read_bytes()
    cmd = renew_node(settings, reg, INFO.node_id, days=10)
    apply_certificate_renewal(cfg, cmd.params)
    assert cfg.sync.tls.cert_file.read_bytes() != old
    assert cfg.sync.tls.cert_file.with_name("node.crt.prev").read_bytes() == old
    # a certificate for another node (another key) is refused
    other = enrol_node(settings, reg, NodeInfo("rt09-other", "33.74.10.1001", 5, 9, "Pos 9"),
                       tmp_path / "o.bundle")
    with tarfile.open(other) as tar:
        pem = tar.extractfile("keys/node.crt").read().decode()  # type: ignore[union-attr]
    with pytest.raises(SecurityError, match="bad_renewal"):
        apply_certificate_renewal(cfg, {"renew_certificate": pem})


def test_cli_register(bundle_file: Path, tmp_path: Path,
                      central: tuple[PkiSettings, Registry]) -> None:
    import argparse
    parser = argparse.ArgumentParser()
    edge_bundle.register(parser.add_subparsers())
    args = parser.parse_args(["install-bundle", str(bundle_file), "--prefix", str(tmp_path),
                              "--central-fingerprint", _fp(central[0])])
    assert args.func(args) == 0
    assert (tmp_path / "etc/kentongan/node.toml").exists()


def _write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))

