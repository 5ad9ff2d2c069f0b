"""Release keys, manifest signing and verification of a release directory on central.

The manifest format itself is the post's protocol surface (``edge.update.manifest``): central
builds and signs it here, the post verifies it with the same code.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from central_sync.pki import (
    CertificateAuthority,
    PkiFiles,
    cert_pem,
    load_private_key,
    new_tls_key,
    public_key_pem,
    write_private_key,
    write_public,
)
from central_sync.release import ReleaseError
from edge.errors import KentonganError
from edge.signing import key_fingerprint, load_verify_key, sign_bytes
from edge.update.manifest import Manifest, manifest_from_bytes, parse_version, verify_manifest

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
WHEELS = "wheels"


@dataclass(frozen=True)
class ReleaseKeys:
    key: Path
    pub: Path
    server_key: Path
    server_cert: Path

    @classmethod
    def in_pki(cls, pki_dir: Path) -> ReleaseKeys:
        return cls(pki_dir / "release.key", pki_dir / "release.pub",
                   pki_dir / "release-server.key", pki_dir / "release-server.crt")


def keygen(pki_dir: Path, hosts: tuple[str, ...], *, force: bool = False,
           server_days: int = 825) -> ReleaseKeys:
    """Create the Ed25519 release key and the release server's TLS certificate (by central's CA).

    The release key is separate from the command key: the command key lives on the running
    central service, the release key only where releases are built."""
    keys = ReleaseKeys.in_pki(pki_dir)
    if keys.key.exists() and not force:
        raise ReleaseError(f"{keys.key} exists (use --force to replace it: every post would "
                           "need the new release.pub)")
    key = Ed25519PrivateKey.generate()
    write_private_key(keys.key, key)
    write_public(keys.pub, public_key_pem(key))
    ca = CertificateAuthority.load(PkiFiles(pki_dir))
    tls_key = new_tls_key()
    write_private_key(keys.server_key, tls_key)
    write_public(keys.server_cert, cert_pem(ca.issue_server(hosts, tls_key.public_key(),
                                                           server_days)))
    return keys


def load_release_key(pki_dir: Path) -> Ed25519PrivateKey:
    path = ReleaseKeys.in_pki(pki_dir).key
    if not path.exists():
        raise ReleaseError(f"no release key {path}: run 'kentongan-central release keygen'")
    key = load_private_key(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise ReleaseError(f"{path} is not an Ed25519 key")
    return key


def release_fingerprint(pki_dir: Path) -> str:
    return key_fingerprint(load_release_key(pki_dir))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_signed(release_dir: Path, manifest: Manifest, key: Ed25519PrivateKey) -> None:
    data = manifest.to_bytes()
    (release_dir / MANIFEST).write_bytes(data)
    (release_dir / SIGNATURE).write_text(sign_bytes(key, data) + "\n")


def verify_release_dir(release_dir: Path, pub: Ed25519PublicKey | Path) -> Manifest:
    """Signature, then every listed wheel's size and SHA-256; ``ReleaseError`` naming the first
    problem."""
    key = load_verify_key(pub) if isinstance(pub, Path) else pub
    try:
        data = (release_dir / MANIFEST).read_bytes()
        sig = (release_dir / SIGNATURE).read_bytes()
    except OSError as exc:
        raise ReleaseError(f"{release_dir}: {exc.strerror}: {exc.filename}") from None
    try:
        manifest = verify_manifest(data, sig, key)
    except KentonganError as exc:
        raise ReleaseError(f"{release_dir.name}: {exc}") from None
    for name, entry in manifest.files.items():
        path = release_dir / WHEELS / name
        if not path.exists():
            raise ReleaseError(f"{release_dir.name}: {name} missing")
        if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
            raise ReleaseError(f"{release_dir.name}: {name}: size or SHA-256 does not match the "
                               "manifest")
    return manifest


def list_releases(root: Path) -> list[Manifest]:
    """Every release under ``root`` whose manifest parses, oldest version first."""
    out: list[Manifest] = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        m = d / MANIFEST
        if d.is_dir() and not d.name.startswith(".") and m.exists():
            try:
                out.append(manifest_from_bytes(m.read_bytes()))
            except KentonganError:
                continue
    return sorted(out, key=lambda x: parse_version(x.version))


def release_dir(root: Path, version: str) -> Path:
    parse_version(version)
    d = root / version
    if not (d / MANIFEST).exists():
        raise ReleaseError(f"no release {version} under {root}")
    return d


def fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
