"""Central CA: init, enrolment, registry, revocation (CRL) and renewal."""

from __future__ import annotations

import datetime as dt
import sqlite3
import tarfile
import tomllib
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_sync import cli_pki
from central_sync.enrol import NodeInfo, certificates_due, enrol_node, renew_node, revoke_node
from central_sync.errors import PkiError
from central_sync.pki import PkiFiles, PkiSettings, init_ca, load_cert, load_private_key
from central_sync.registry import Registry, registry_status
from edge.config import parse_config
from edge.errors import SecurityError
from edge.signing import CommandVerifier, EventSigner, EventVerifier, load_signing_key
from edge.sync.wire import EventEnvelope


def _env(node_id: str) -> EventEnvelope:
    return EventEnvelope(event_id=uuid.uuid4().hex, node_id=node_id, boot_id="b", seq=0,
                         mono_ns=0, wall_time=1.0, time_quality="synced", type="PANIC",
                         priority=1, incident_id=None, payload={}, sig=None)


INFO = NodeInfo("rt03-tembalang", "33.74.10.1001", 5, 3, "Pos Ronda RT 03 RW 05 Tembalang")


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> PkiSettings:
    settings = PkiSettings(dir=tmp_path_factory.mktemp("pki"),
                           broker_hosts=("mqtt.kentongan.example", "10.0.0.5"))
    init_ca(settings)
    return settings


def test_ca_init_files_modes_and_certs(ca_dir: PkiSettings) -> None:
    files = PkiFiles(ca_dir.dir)
    for key in (files.ca_key, files.broker_key, files.central_key, files.command_key,
                files.seal_key):
        assert key.stat().st_mode & 0o777 == 0o600, key
    ca = load_cert(files.ca_cert)
    broker = load_cert(files.broker_cert)
    broker.verify_directly_issued_by(ca)
    san = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"mqtt.kentongan.example", "localhost"} <= set(san.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"10.0.0.5",
                                                                           "127.0.0.1"}
    central = load_cert(files.central_cert)
    assert central.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "central"
    assert isinstance(load_private_key(files.command_key), Ed25519PrivateKey)
    crl = x509.load_pem_x509_crl(files.crl.read_bytes())
    assert crl.is_signature_valid(ca.public_key()) and len(list(crl)) == 0  # type: ignore[arg-type]
    with pytest.raises(PkiError, match="already exists"):
        init_ca(ca_dir)


def test_enrol_registers_node_and_bundle_has_valid_config(ca_dir: PkiSettings,
                                                          tmp_path: Path) -> None:
    reg = Registry(sqlite3.connect(tmp_path / "central.db"))
    out = enrol_node(ca_dir, reg, INFO, tmp_path / "node.bundle")
    assert out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        cfg_text = tar.extractfile("node.toml").read().decode()  # type: ignore[union-attr]
        cert = x509.load_pem_x509_certificate(tar.extractfile("keys/node.crt").read())  # type: ignore[union-attr]
    assert {"manifest.json", "manifest.sig", "keys/node.key", "keys/signing.key"} <= names
    cfg = parse_config(tomllib.loads(cfg_text))
    assert cfg.node.node_id == INFO.node_id and cfg.sync.tls is not None
    assert cfg.sync.broker_port == 8883 and cfg.sync.broker_host == "mqtt.kentongan.example"
    assert cfg.security is not None
    assert str(cfg.security.node_signing_key_file).startswith("/etc/kentongan/keys/")
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == INFO.node_id
    rec = reg.get(INFO.node_id)
    assert rec is not None and rec.status == "enrolled"
    assert rec.cert_serial == format(cert.serial_number, "x")
    assert registry_status(reg.conn) == {INFO.node_id: "enrolled"}
    with pytest.raises(PkiError, match="already enrolled"):
        enrol_node(ca_dir, reg, INFO, tmp_path / "again.bundle")


def test_revoke_updates_crl_and_verifier_rejects(ca_dir: PkiSettings, tmp_path: Path) -> None:
    reg = Registry(sqlite3.connect(tmp_path / "central.db"))
    info = NodeInfo("rt07-revoked", "33.74.10.1001", 5, 7, "Pos RT 07")
    out = enrol_node(ca_dir, reg, info, tmp_path / "n.bundle")
    with tarfile.open(out) as tar:
        key_pem = tar.extractfile("keys/signing.key").read()  # type: ignore[union-attr]
        cert = x509.load_pem_x509_certificate(tar.extractfile("keys/node.crt").read())  # type: ignore[union-attr]
    (tmp_path / "signing.key").write_bytes(key_pem)
    signer = EventSigner(load_signing_key(tmp_path / "signing.key"))
    verify = EventVerifier(reg.lookup)
    verify(signer.sign(_env(node_id=info.node_id)))
    crl = revoke_node(ca_dir, reg, info.node_id)
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    on_disk = x509.load_pem_x509_crl(PkiFiles(ca_dir.dir).crl.read_bytes())
    assert on_disk.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    with pytest.raises(SecurityError) as exc:
        verify(signer.sign(_env(node_id=info.node_id)))
    assert exc.value.reason == "revoked"
    assert registry_status(reg.conn)[info.node_id] == "revoked"


def test_renewal_keeps_key_and_travels_as_signed_config_command(ca_dir: PkiSettings,
                                                                tmp_path: Path) -> None:
    reg = Registry(sqlite3.connect(tmp_path / "central.db"))
    info = NodeInfo("rt08-renew", "33.74.10.1001", 5, 8, "Pos RT 08")
    out = enrol_node(ca_dir, reg, info, tmp_path / "n.bundle")
    with tarfile.open(out) as tar:
        old = x509.load_pem_x509_certificate(tar.extractfile("keys/node.crt").read())  # type: ignore[union-attr]
    assert certificates_due(ca_dir, reg) == []
    far = dt.datetime.now(dt.UTC).timestamp() + 3 * 365 * 86400
    assert info.node_id in certificates_due(ca_dir, reg, now=far)
    cmd = renew_node(ca_dir, reg, info.node_id, days=30)
    assert cmd.action == "config" and cmd.node_id == info.node_id
    central_pub = load_private_key(PkiFiles(ca_dir.dir).command_key).public_key()
    CommandVerifier(central_pub, info.node_id, 300)(cmd)  # type: ignore[arg-type]
    new = x509.load_pem_x509_certificate(cmd.params["renew_certificate"].encode())
    assert new.serial_number != old.serial_number
    assert new.public_key() == old.public_key()
    assert reg.get(info.node_id).cert_serial == format(new.serial_number, "x")  # type: ignore[union-attr]
    # a revoked node is not renewed, and all of its certificates land on the CRL
    crl = revoke_node(ca_dir, reg, info.node_id)
    assert crl.get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert crl.get_revoked_certificate_by_serial_number(new.serial_number) is not None
    with pytest.raises(PkiError, match="revoked"):
        renew_node(ca_dir, reg, info.node_id)


def test_cli_ca_init_enrol_revoke_registry(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import argparse
    conf = tmp_path / "central.toml"
    conf.write_text('database = "central.db"\n[pki]\ndir = "pki"\nbroker_hosts = ["broker.local"]\n')
    parser = argparse.ArgumentParser()
    cli_pki.register(parser.add_subparsers(dest="cmd"))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        return int(args.func(args))

    assert run("ca", "init", "--config", str(conf)) == 0
    assert "fingerprint" in capsys.readouterr().out
    assert run("ca", "init", "--config", str(conf)) == 2  # refuses to overwrite
    assert run("enrol", "rt01-cli", "--kelurahan", "33.74.10.1001", "--rw", "1", "--rt", "1",
               "--name", "Pos RT 01", "--out", str(tmp_path / "b.tgz"), "--config",
               str(conf)) == 0
    assert (tmp_path / "b.tgz").exists()
    assert registry_status(sqlite3.connect(tmp_path / "central.db")) == {"rt01-cli": "enrolled"}
    assert run("revoke", "rt01-cli", "--config", str(conf)) == 0
    capsys.readouterr()
    assert run("registry", "--json", "--config", str(conf)) == 0
    assert '"status": "revoked"' in capsys.readouterr().out
    assert run("revoke", "rt99-nope", "--config", str(conf)) == 2
