"""Install an enrolment bundle on a node (``kentongan-edge install-bundle BUNDLE``), and install a
renewed certificate delivered in a ``config`` command.

Trust: the bundle's manifest is signed by central's command key. The node checks that signature
against, in this order: ``--central-fingerprint`` (printed by ``kentongan-central ca init`` and
``enrol``; the technician types or pastes it), else the central key already installed under the
prefix (re-enrolment), else it trusts the key inside the bundle (first use; logged as a warning
and reported). Every file's SHA-256 must match the manifest and no other member may be present.

Nothing is half-installed: everything is written to a staging directory next to the target and
renamed into place in one step (an existing installation is first renamed to
``kentongan.old-<UTC>`` and only with ``--force``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import tomllib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge.config import NodeConfig, load_config, parse_config, read_config_file
from edge.credentials import credential_path
from edge.errors import ConfigError, SecurityError
from edge.logs import log_event
from edge.signing import key_fingerprint, public_key_from_pem, verify_bytes

log = logging.getLogger("kentongan.bundle")

BUNDLE_FORMAT = "kentongan-bundle"
INSTALL_DIR = "etc/kentongan"  # relative to the prefix
STATE_DIR = "/var/lib/kentongan"
MAX_MEMBER_BYTES = 1024 * 1024
REQUIRED = ("node.toml", "keys/node.key", "keys/node.crt", "keys/ca.crt", "keys/signing.key",
            "keys/central-command.pub")


@dataclass(frozen=True)
class VerifiedBundle:
    node_id: str
    central_fingerprint: str
    trust: str  # "fingerprint" | "installed_key" | "first_use"
    files: dict[str, tuple[bytes, int]]  # path -> (content, mode)


def _norm_fp(fp: str) -> str:
    return fp.replace(":", "").replace(" ", "").lower()


def read_bundle(path: Path, *, central_fingerprint: str | None = None,
                installed_central_key: Path | None = None) -> VerifiedBundle:
    """Open and verify a bundle; raise ``SecurityError`` (foreign, altered or broken)."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for ti in tar.getmembers():
                if not ti.isfile() or ti.name.startswith("/") or ".." in ti.name.split("/"):
                    raise SecurityError("bad_bundle", f"unexpected member {ti.name!r}")
                if ti.size > MAX_MEMBER_BYTES or ti.name in members:
                    raise SecurityError("bad_bundle", f"member {ti.name!r} too big or repeated")
                fh = tar.extractfile(ti)
                assert fh is not None
                members[ti.name] = fh.read()
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise SecurityError("bad_bundle", f"{path} is not a readable bundle: {exc}") from None
    manifest_bytes = members.pop("manifest.json", None)
    sig = members.pop("manifest.sig", None)
    if manifest_bytes is None or sig is None:
        raise SecurityError("bad_bundle", "manifest.json or manifest.sig missing")
    bundled_key = members.get("keys/central-command.pub")
    if bundled_key is None:
        raise SecurityError("bad_bundle", "keys/central-command.pub missing")
    key = public_key_from_pem(bundled_key)
    fp = key_fingerprint(key)
    if central_fingerprint:
        if _norm_fp(central_fingerprint) != _norm_fp(fp):
            raise SecurityError("foreign_bundle", f"bundle is signed by central key {fp}, "
                                f"expected {central_fingerprint}")
        trust = "fingerprint"
    elif installed_central_key is not None and installed_central_key.exists():
        trusted = public_key_from_pem(installed_central_key.read_bytes())
        if key_fingerprint(trusted) != fp:
            raise SecurityError("foreign_bundle", f"bundle is signed by central key {fp}, this "
                                f"node trusts {key_fingerprint(trusted)}")
        trust = "installed_key"
    else:
        trust = "first_use"
    try:
        verify_bytes(key, manifest_bytes, sig.decode("ascii").strip())
    except (SecurityError, UnicodeDecodeError):
        raise SecurityError("bad_bundle", "manifest signature does not verify (altered "
                            "bundle)") from None
    try:
        manifest: dict[str, Any] = json.loads(manifest_bytes)
        entries = {e["path"]: (str(e["sha256"]), int(e["mode"], 8)) for e in manifest["files"]}
        node_id = str(manifest["node_id"])
        if manifest.get("format") != BUNDLE_FORMAT or manifest.get("version") != 1:
            raise ValueError("unknown format")
    except (ValueError, KeyError, TypeError) as exc:
        raise SecurityError("bad_bundle", f"manifest unreadable: {exc}") from None
    if set(entries) != set(members):
        extra = sorted(set(members) ^ set(entries))
        raise SecurityError("bad_bundle", f"files do not match the manifest: {extra}")
    for name in REQUIRED:
        if name not in entries:
            raise SecurityError("bad_bundle", f"{name} missing")
    files: dict[str, tuple[bytes, int]] = {}
    for name, (digest, mode) in entries.items():
        if hashlib.sha256(members[name]).hexdigest() != digest:
            raise SecurityError("bad_bundle", f"{name}: SHA-256 does not match the manifest")
        files[name] = (members[name], mode & 0o644)
    return VerifiedBundle(node_id, fp, trust, files)


def _rewrite_paths(config_text: str, prefix: Path) -> str:
    if prefix == Path("/"):
        return config_text
    base = str(prefix).rstrip("/")
    return (config_text.replace('"/etc/kentongan/', f'"{base}/etc/kentongan/')
            .replace(f'"{STATE_DIR}', f'"{base}{STATE_DIR}'))


def install_bundle(path: str | Path, prefix: str | Path = "/", *,
                   central_fingerprint: str | None = None, force: bool = False,
                   group: str | None = None) -> Path:
    """Verify ``path`` and install it under ``prefix``/etc/kentongan; return the config path.

    Keys 0600, config 0640, directories 0750; with ``group`` (e.g. "kentongan") the config and
    directories get that group so the service user can read the config (keys stay owned by the
    installer and reach the service through systemd ``LoadCredential=``). Raises
    ``SecurityError`` for a foreign or altered bundle and ``ConfigError`` when its config does
    not validate; nothing is changed then.
    """
    prefix = Path(prefix)
    target = prefix / INSTALL_DIR
    installed_key = target / "keys" / "central-command.pub"
    bundle = read_bundle(Path(path), central_fingerprint=central_fingerprint,
                         installed_central_key=installed_key)
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists (use --force to replace it; the old one is "
                          "kept as kentongan.old-<time>)", "install-bundle")
    config_text = _rewrite_paths(bundle.files["node.toml"][0].decode(), prefix)
    gid: int | None = None
    if group is not None:
        import grp
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"no such group {group!r} (create the service user first)",
                              "install-bundle") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".kentongan.staging-", dir=target.parent))
    try:
        os.chmod(stage, 0o750)
        for name, (data, mode) in bundle.files.items():
            if name == "node.toml":
                data = config_text.encode()
            dest = stage / name
            dest.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            os.chmod(dest.parent, 0o750)
            if name.endswith(".key"):
                mode = 0o600
            elif name == "node.toml":
                mode = 0o640
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(dest, mode)
            if gid is not None and not name.endswith(".key"):
                os.chown(dest, -1, gid)
                os.chown(dest.parent, -1, gid)
        if gid is not None:
            os.chown(stage, -1, gid)
        # The config must validate with its real (installed) paths before anything moves.
        cfg = parse_config(tomllib.loads(config_text))
        if cfg.node.node_id != bundle.node_id:
            raise SecurityError("bad_bundle", f"config is for {cfg.node.node_id}, manifest for "
                                f"{bundle.node_id}")
        if target.exists():
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            os.rename(target, target.with_name(f"kentongan.old-{stamp}"))
        os.rename(stage, target)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log_event(log, "bundle_installed", logging.WARNING if bundle.trust == "first_use"
              else logging.INFO, node_id=bundle.node_id, trust=bundle.trust,
              central_fingerprint=bundle.central_fingerprint, target=str(target))
    return target / "node.toml"


# -- certificate renewal ----------------------------------------------------------------------


def apply_certificate_renewal(cfg: NodeConfig, params: dict[str, Any]) -> Path:
    """Install the certificate of a ``config`` command with ``params["renew_certificate"]``.

    The command must already have passed ``CommandVerifier``. The new certificate must be issued
    by our CA, name this node and carry our existing TLS public key; the old one is kept as
    ``<cert>.prev``. Returns the certificate path (reconnect to use it).
    """
    if cfg.sync.tls is None:
        raise ConfigError("no TLS configured", "sync.tls")
    pem = params.get("renew_certificate")
    if not isinstance(pem, str):
        raise SecurityError("bad_renewal", "renew_certificate missing")
    try:
        new = x509.load_pem_x509_certificate(pem.encode())
        ca = x509.load_pem_x509_certificate(cfg.sync.tls.ca_file.read_bytes())
        key = serialization.load_pem_private_key(
            credential_path(cfg.sync.tls.key_file).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SecurityError("bad_renewal", str(exc)) from None
    try:
        new.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):
        raise SecurityError("bad_renewal", "certificate is not issued by our CA") from None
    cn = new.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not cn or cn[0].value != cfg.node.node_id:
        raise SecurityError("bad_renewal", "certificate names another node")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or \
            new.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo):
        raise SecurityError("bad_renewal", "certificate is not for this node's TLS key")
    if new.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        raise SecurityError("bad_renewal", "certificate already expired")
    dest = cfg.sync.tls.cert_file
    tmp = dest.with_name(dest.name + ".new")
    tmp.write_bytes(pem.encode())
    os.chmod(tmp, 0o644)
    if dest.exists():
        shutil.copy2(dest, dest.with_name(dest.name + ".prev"))
    os.replace(tmp, dest)
    log_event(log, "certificate_renewed", serial=format(new.serial_number, "x"),
              not_after=new.not_valid_after_utc.isoformat())
    return dest


# -- CLI --------------------------------------------------------------------------------------


def _cmd_install(args: argparse.Namespace) -> int:
    path = install_bundle(args.bundle, args.prefix, central_fingerprint=args.central_fingerprint,
                          force=args.force, group=args.group)
    cfg = load_config(path)
    print(f"installed {cfg.node.node_id} ({cfg.node.display_name}) -> {path}")
    raw = read_config_file(path)
    print(f"broker {raw['sync']['broker_host']}:{raw['sync']['broker_port']}")
    if not args.central_fingerprint:
        print("note: no --central-fingerprint given; compare the central key fingerprint in the "
              "log with the one central printed")
    print(f"next: kentongan-edge selftest --config {path}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("install-bundle", help="verify and install an enrolment bundle")
    p.add_argument("bundle", help="bundle file made by 'kentongan-central enrol'")
    p.add_argument("--prefix", default="/", help="install root (default /)")
    p.add_argument("--central-fingerprint", help="expected central key fingerprint (from "
                   "'kentongan-central ca init'); a bundle signed by another key is refused")
    p.add_argument("--force", action="store_true", help="replace an existing installation")
    p.add_argument("--group", help="group that may read the config (e.g. kentongan)")
    p.set_defaults(func=_cmd_install)
