"""Central's certificate authority and keys (``kentongan-central ca init``).

Everything is made with the ``cryptography`` library. TLS keys are ECDSA P-256 (what Mosquitto
and OpenSSL handle everywhere); command signing is Ed25519; snapshot sealing is X25519.

Files in the PKI directory (``PkiFiles``)::

    ca.key ca.crt crl.pem              the CA (key 0600) and its revocation list (Mosquitto crlfile)
    broker.key broker.crt              Mosquitto's server certificate (SAN: hosts + localhost)
    central-mqtt.key central-mqtt.crt  central's MQTT client certificate (CN "central")
    command.key command.pub            Ed25519: central signs commands and enrolment bundles
    seal.key seal.pub                  X25519: nodes seal snapshots to seal.pub

Private keys are written 0600 with O_EXCL on a temp name, then renamed into place.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from central_sync.errors import PkiError

CENTRAL_CN = "central"
PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey | X25519PrivateKey


@dataclass(frozen=True)
class PkiSettings:
    """The ``[pki]`` section of central's config."""

    dir: Path
    broker_hosts: tuple[str, ...] = ("localhost",)
    broker_port: int = 8883
    ca_days: int = 3650
    server_days: int = 825
    node_days: int = 730
    crl_days: int = 365
    renew_before_days: int = 60
    org: str = "Kentongan"


@dataclass(frozen=True)
class PkiFiles:
    """Paths of the CA's files inside ``root``."""

    root: Path
    ca_key: Path = field(init=False)
    ca_cert: Path = field(init=False)
    crl: Path = field(init=False)
    broker_key: Path = field(init=False)
    broker_cert: Path = field(init=False)
    central_key: Path = field(init=False)
    central_cert: Path = field(init=False)
    command_key: Path = field(init=False)
    command_pub: Path = field(init=False)
    seal_key: Path = field(init=False)
    seal_pub: Path = field(init=False)

    def __post_init__(self) -> None:
        names = {
            "ca_key": "ca.key", "ca_cert": "ca.crt", "crl": "crl.pem",
            "broker_key": "broker.key", "broker_cert": "broker.crt",
            "central_key": "central-mqtt.key", "central_cert": "central-mqtt.crt",
            "command_key": "command.key", "command_pub": "command.pub",
            "seal_key": "seal.key", "seal_pub": "seal.pub",
        }
        for attr, name in names.items():
            object.__setattr__(self, attr, Path(self.root) / name)


# -- file helpers -----------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_key_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def write_private_key(path: Path, key: PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, mode 0600."""
    _atomic_write(path, private_key_pem(key), 0o600)


def write_public(path: Path, data: bytes) -> None:
    _atomic_write(path, data, 0o644)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise PkiError(f"cannot load certificate {path}: {exc}") from None


def load_private_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"cannot load private key {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | Ed25519PrivateKey | X25519PrivateKey):
        raise PkiError(f"{path}: unsupported key type")
    return key


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


# -- the CA -----------------------------------------------------------------------------------


class CertificateAuthority:
    """Issues node, broker and central certificates and the CRL."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def create(cls, org: str = "Kentongan", days: int = 3650) -> CertificateAuthority:
        key = new_tls_key()
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"{org} CA")])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, files: PkiFiles) -> CertificateAuthority:
        if not files.ca_key.exists():
            raise PkiError(f"no CA in {files.root}: run 'kentongan-central ca init' first")
        key = load_private_key(files.ca_key)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{files.ca_key} is not an EC key")
        return cls(key, load_cert(files.ca_cert))

    def _leaf(self, cn: str, public_key: ec.EllipticCurvePublicKey, days: int,
              usage: x509.ObjectIdentifier) -> x509.CertificateBuilder:
        now = _now()
        not_after = min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )

    def issue_client(self, cn: str, public_key: ec.EllipticCurvePublicKey,
                     days: int) -> x509.Certificate:
        """A TLS client certificate; Mosquitto uses ``cn`` as the MQTT username."""
        return self._leaf(cn, public_key, days, ExtendedKeyUsageOID.CLIENT_AUTH) \
            .sign(self.key, hashes.SHA256())

    def issue_server(self, hosts: Iterable[str], public_key: ec.EllipticCurvePublicKey,
                     days: int) -> x509.Certificate:
        """The broker's certificate; SAN = ``hosts`` plus localhost and 127.0.0.1."""
        names: list[x509.GeneralName] = []
        seen: set[str] = set()
        hosts = list(hosts)
        for h in [*hosts, "localhost", "127.0.0.1", "::1"]:
            if h in seen:
                continue
            seen.add(h)
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        cn = hosts[0] if hosts else "localhost"
        return self._leaf(cn, public_key, days, ExtendedKeyUsageOID.SERVER_AUTH) \
            .add_extension(x509.SubjectAlternativeName(names), critical=False) \
            .sign(self.key, hashes.SHA256())

    def make_crl(self, revoked: Iterable[tuple[int, dt.datetime]],
                 days: int) -> x509.CertificateRevocationList:
        """A CRL listing ``(serial, revoked_at)`` pairs, valid for ``days`` (regenerate before!)."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(when).build())
        return builder.sign(self.key, hashes.SHA256())

    def write_crl(self, path: Path, revoked: Iterable[tuple[int, dt.datetime]],
                  days: int) -> x509.CertificateRevocationList:
        crl = self.make_crl(revoked, days)
        # World-readable on purpose: Mosquitto reads it after dropping privileges.
        write_public(path, crl.public_bytes(serialization.Encoding.PEM))
        return crl


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, Exception):
        return False
    return True


def init_ca(settings: PkiSettings, *, force: bool = False) -> PkiFiles:
    """Create the CA, broker and central certificates, command and seal keys, and an empty CRL.

    Refuses to overwrite an existing CA unless ``force`` (a new CA orphans every enrolled node).
    """
    files = PkiFiles(Path(settings.dir))
    if files.ca_key.exists() and not force:
        raise PkiError(f"a CA already exists in {files.root} (use --force to replace it: every "
                       "enrolled node would need a new bundle)")
    files.root.mkdir(parents=True, exist_ok=True)
    os.chmod(files.root, 0o750)
    ca = CertificateAuthority.create(settings.org, settings.ca_days)
    write_private_key(files.ca_key, ca.key)
    write_public(files.ca_cert, cert_pem(ca.cert))

    broker_key = new_tls_key()
    write_private_key(files.broker_key, broker_key)
    write_public(files.broker_cert, cert_pem(
        ca.issue_server(settings.broker_hosts, broker_key.public_key(), settings.server_days)))

    central_key = new_tls_key()
    write_private_key(files.central_key, central_key)
    write_public(files.central_cert, cert_pem(
        ca.issue_client(CENTRAL_CN, central_key.public_key(), settings.server_days)))

    command_key = Ed25519PrivateKey.generate()
    write_private_key(files.command_key, command_key)
    write_public(files.command_pub, public_key_pem(command_key))

    seal_key = X25519PrivateKey.generate()
    write_private_key(files.seal_key, seal_key)
    write_public(files.seal_pub, public_key_pem(seal_key))

    ca.write_crl(files.crl, [], settings.crl_days)
    return files
