"""Enrolment, revocation and certificate renewal of nodes (``kentongan-central enrol|revoke|renew``).

An enrolment bundle is ONE ``.tar.gz`` file::

    manifest.json        {"format": "kentongan-bundle", "version": 1, "node_id", "created_at",
                          "central_key_fingerprint", "files": [{"path", "sha256", "mode"}...]}
    manifest.sig         base64 Ed25519 signature of manifest.json's exact bytes (command key)
    node.toml            the node's config (valid edge NodeConfig; paths under /etc/kentongan)
    keys/node.key        TLS private key (ECDSA P-256)         0600
    keys/node.crt        TLS client certificate, CN = node id
    keys/ca.crt          central's CA certificate
    keys/signing.key     Ed25519 event-signing key             0600
    keys/central-command.pub   central's command-verification key (Ed25519)
    keys/central-seal.pub      central's snapshot-sealing key (X25519)

``edge.bundle.install_bundle`` verifies it and installs it under ``/etc/kentongan``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tarfile
import time
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_sync.errors import PkiError
from central_sync.node_config_check import check_node_config, valid_node_id
from central_sync.pki import (
    CertificateAuthority,
    PkiFiles,
    PkiSettings,
    _atomic_write,
    cert_pem,
    load_cert,
    load_private_key,
    new_tls_key,
    private_key_pem,
    public_key_pem,
    serial_hex,
)
from central_sync.registry import Registry, check_coordinates
from edge.signing import CommandSigner, key_fingerprint, sign_bytes
from edge.sync.wire import Command

BUNDLE_FORMAT = "kentongan-bundle"
BUNDLE_VERSION = 1
INSTALL_DIR = "/etc/kentongan"
STATE_DIR = "/var/lib/kentongan"

#: Bundle member -> file mode once installed.
BUNDLE_FILES: dict[str, int] = {
    "node.toml": 0o640,
    "keys/node.key": 0o600,
    "keys/node.crt": 0o644,
    "keys/ca.crt": 0o644,
    "keys/signing.key": 0o600,
    "keys/central-command.pub": 0o644,
    "keys/central-seal.pub": 0o644,
}


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    kelurahan_code: str
    rw: int
    rt: int
    display_name: str
    #: Where the post stands (WGS84 degrees), for the desk's map; optional.
    lat: float | None = None
    lon: float | None = None


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_node_config(info: NodeInfo, broker_host: str, broker_port: int) -> str:
    """A complete, valid node config pointing at the installed key paths. Hardware pins are
    defaults (siren relay GPIO 17, one PANIC button on GPIO 27): edit on site."""
    keys = f"{INSTALL_DIR}/keys"
    return f"""# Kentongan node config for {info.node_id}, made by 'kentongan-central enrol'.
# Key paths point at the files 'kentongan-edge install-bundle' installs.
config_version = 1

[node]
node_id = {_toml_str(info.node_id)}
kelurahan_code = {_toml_str(info.kelurahan_code)}
rw = {info.rw}
rt = {info.rt}
display_name = {_toml_str(info.display_name)}

[siren]
pin = 17

[[buttons]]
name = "panic"
pin = 27
incident = "PANIC"
hold_seconds = 2.0

[storage]
state_dir = "{STATE_DIR}"

[sync]
broker_host = {_toml_str(broker_host)}
broker_port = {broker_port}

[sync.tls]
ca_file = "{keys}/ca.crt"
cert_file = "{keys}/node.crt"
key_file = "{keys}/node.key"

[security]
node_signing_key_file = "{keys}/signing.key"
central_command_key_file = "{keys}/central-command.pub"
central_seal_key_file = "{keys}/central-seal.pub"
"""


def _command_key(files: PkiFiles) -> Ed25519PrivateKey:
    key = load_private_key(files.command_key)
    if not isinstance(key, Ed25519PrivateKey):
        raise PkiError(f"{files.command_key} is not an Ed25519 key")
    return key


def node_cert_path(files: PkiFiles, node_id: str) -> Path:
    """Where central keeps a copy of each node's current certificate (public)."""
    return files.root / "nodes" / f"{node_id}.crt"


def pack_bundle(members: dict[str, bytes], node_id: str, command_key: Ed25519PrivateKey,
                out: Path) -> Path:
    """Write ``members`` plus a signed manifest as one tar.gz at ``out`` (0600)."""
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "node_id": node_id,
        "created_at": time.time(),
        "central_key_fingerprint": key_fingerprint(command_key),
        "files": [{"path": name, "sha256": hashlib.sha256(data).hexdigest(),
                   "mode": format(BUNDLE_FILES.get(name, 0o644), "04o")}
                  for name, data in sorted(members.items())],
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    sig = sign_bytes(command_key, manifest_bytes).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in [("manifest.json", manifest_bytes), ("manifest.sig", sig),
                           *sorted(members.items())]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mode = 0o600
            ti.mtime = int(time.time())
            tar.addfile(ti, io.BytesIO(data))
    _atomic_write(Path(out), buf.getvalue(), 0o600)
    return Path(out)


def enrol_node(settings: PkiSettings, registry: Registry, info: NodeInfo, out: Path, *,
               broker_host: str | None = None, broker_port: int | None = None,
               replace: bool = False) -> Path:
    """Issue keys and a certificate for a node, register it and write its bundle to ``out``.

    ``info`` is the one source of the post's place: it is written both into the registry (what
    central uses for routing, RT scoping, the overview, the map and CAP) and into the bundle's
    ``node.toml`` (what the post itself prints, e.g. in SMS fallback texts)."""
    if not valid_node_id(info.node_id):
        raise PkiError(f"invalid node id {info.node_id!r} (lowercase letters, digits, '-')")
    check_coordinates(info.lat, info.lon)
    files = PkiFiles(Path(settings.dir))
    ca = CertificateAuthority.load(files)
    host = broker_host or settings.broker_hosts[0]
    port = broker_port or settings.broker_port
    config_text = render_node_config(info, host, port)
    check_node_config(tomllib.loads(config_text))

    tls_key = new_tls_key()
    cert = ca.issue_client(info.node_id, tls_key.public_key(), settings.node_days)
    signing_key = Ed25519PrivateKey.generate()
    command_key = _command_key(files)
    members = {
        "node.toml": config_text.encode(),
        "keys/node.key": private_key_pem(tls_key),
        "keys/node.crt": cert_pem(cert),
        "keys/ca.crt": cert_pem(ca.cert),
        "keys/signing.key": private_key_pem(signing_key),
        "keys/central-command.pub": files.command_pub.read_bytes(),
        "keys/central-seal.pub": files.seal_pub.read_bytes(),
    }
    registry.add(node_id=info.node_id, signing_public_key=public_key_pem(signing_key).decode(),
                 kelurahan_code=info.kelurahan_code, rw=info.rw, rt=info.rt,
                 display_name=info.display_name, cert_serial=serial_hex(cert),
                 cert_not_after=cert.not_valid_after_utc.timestamp(), replace=replace,
                 lat=info.lat, lon=info.lon)
    _atomic_write(node_cert_path(files, info.node_id), cert_pem(cert), 0o644)
    if replace:
        regenerate_crl(settings, registry)
    return pack_bundle(members, info.node_id, command_key, out)


def regenerate_crl(settings: PkiSettings, registry: Registry) -> x509.CertificateRevocationList:
    """Rewrite ``crl.pem`` from the registry (run on revoke and periodically, before
    ``crl_days`` run out: an expired CRL makes Mosquitto refuse every client)."""
    files = PkiFiles(Path(settings.dir))
    ca = CertificateAuthority.load(files)
    return ca.write_crl(files.crl, registry.revoked_serials(), settings.crl_days)


def crl_renewal_due(settings: PkiSettings, now: float | None = None) -> tuple[bool, str]:
    """(due, why): the CRL is missing, unreadable, not signed by this CA, or within
    ``max(1 day, min(30 days, crl_days / 3))`` of its ``nextUpdate`` (an expired CRL makes
    OpenSSL refuse every client, so a daily timer renews it well before that)."""
    files = PkiFiles(Path(settings.dir))
    try:
        crl = x509.load_pem_x509_crl(files.crl.read_bytes())
    except (OSError, ValueError) as exc:
        return True, f"no usable CRL ({exc.__class__.__name__})"
    ca = load_cert(files.ca_cert)
    if crl.issuer != ca.subject or not crl.is_signature_valid(ca.public_key()):  # type: ignore[arg-type]
        return True, "CRL not signed by this CA"
    next_update = crl.next_update_utc
    if next_update is None:
        return True, "CRL has no nextUpdate"
    margin = max(86400.0, min(30 * 86400.0, settings.crl_days * 86400.0 / 3))
    left = next_update.timestamp() - (now if now is not None else time.time())
    if left < margin:
        return True, f"CRL expires in {left / 86400:.1f} days"
    return False, f"CRL valid for {left / 86400:.1f} more days"


def install_crl(settings: PkiSettings, dest: Path) -> None:
    """Copy the CRL to ``dest`` (the broker's ``crlfile``) atomically, world-readable."""
    _atomic_write(Path(dest), PkiFiles(Path(settings.dir)).crl.read_bytes(), 0o644)


def revoke_node(settings: PkiSettings, registry: Registry,
                node_id: str) -> x509.CertificateRevocationList:
    """Mark ``node_id`` revoked (central rejects its events) and regenerate the CRL. The CLI
    then cuts the node at the broker at once (``central_sync.dynsec``); the broker's CRL refuses
    its TLS handshakes after the broker reloads the file (docs/security.md)."""
    registry.revoke(node_id)
    return regenerate_crl(settings, registry)


def renew_node(settings: PkiSettings, registry: Registry, node_id: str, *,
               days: int | None = None, command_ttl_seconds: float = 3600,
               sign: bool = True) -> Command:
    """Issue a new certificate for the node's EXISTING TLS public key and return a ``config``
    command carrying it (``params = {"renew_certificate": PEM}``), signed with the command key
    when ``sign``. The node installs it with ``edge.bundle.apply_certificate_renewal``."""
    files = PkiFiles(Path(settings.dir))
    rec = registry.get(node_id)
    if rec is None:
        raise PkiError(f"unknown node {node_id}")
    if rec.status != "enrolled":
        raise PkiError(f"node {node_id} is {rec.status}: enrol it again instead")
    old = load_cert(node_cert_path(files, node_id))
    pub = old.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise PkiError(f"{node_id}: current certificate has no EC key")
    ca = CertificateAuthority.load(files)
    cert = ca.issue_client(node_id, pub, days or settings.node_days)
    registry.record_renewal(node_id, serial_hex(cert), cert.not_valid_after_utc.timestamp())
    _atomic_write(node_cert_path(files, node_id), cert_pem(cert), 0o644)
    now = time.time()
    cmd = Command(command_id=uuid.uuid4().hex, node_id=node_id, action="config",
                  params={"renew_certificate": cert_pem(cert).decode()},
                  issued_at=now, expires_at=now + command_ttl_seconds, issuer="central",
                  sig=None)
    return CommandSigner(_command_key(files)).sign(cmd) if sign else cmd


def certificates_due(settings: PkiSettings, registry: Registry,
                     now: float | None = None) -> list[str]:
    """Enrolled nodes whose certificate ends within ``renew_before_days``."""
    limit = (now or time.time()) + settings.renew_before_days * 86400
    return [r["node_id"] for r in registry.listing()
            if r["status"] == "enrolled" and r["cert_not_after"] < limit]


def settings_from_mapping(data: dict[str, Any], base: Path | None = None) -> PkiSettings:
    """Build ``PkiSettings`` from a ``[pki]`` mapping (``dir`` relative to ``base``)."""
    raw_dir = Path(str(data.get("dir", "pki")))
    if not raw_dir.is_absolute() and base is not None:
        raw_dir = base / raw_dir
    hosts = data.get("broker_hosts", ["localhost"])
    kw: dict[str, Any] = {k: int(data[k]) for k in ("broker_port", "ca_days", "server_days",
                                                    "node_days", "crl_days", "renew_before_days")
                          if k in data}
    if "org" in data:
        kw["org"] = str(data["org"])
    return PkiSettings(dir=raw_dir, broker_hosts=tuple(str(h) for h in hosts), **kw)


def utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


