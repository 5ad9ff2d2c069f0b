"""The release manifest: the one format central signs and the post verifies.

``manifest.json`` (canonical: sorted keys, two-space indent) and ``manifest.sig`` (base64
Ed25519 signature of manifest.json's exact bytes, made with central's RELEASE key, which is not
the command key)::

    {"format": "kentongan-release", "format_version": 1,
     "package": "kentongan", "version": "0.2.0", "min_from_version": "0.1.0",
     "created_at": 1790000000.0, "python": "3.11",
     "files": {"kentongan-0.2.0-py3-none-any.whl": {"sha256": "...", "size": 123456}, ...},
     "platforms": {"x86_64": ["kentongan-0.2.0-py3-none-any.whl", ...],
                   "aarch64": [...]}}

Versions are plain release numbers (``1``, ``1.2``, ``1.2.3``; compared numerically).
"""

from __future__ import annotations

import json
import platform
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import SecurityError
from edge.signing import key_fingerprint, verify_bytes
from edge.update import UpdateError

FORMAT = "kentongan-release"
FORMAT_VERSION = 1
VERSION_RE = re.compile(r"^\d{1,6}(\.\d{1,6}){0,3}$")
FILE_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,200}\.whl$")
MAX_MANIFEST_BYTES = 1024 * 1024


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; trailing zeros do not count (``1.2 == 1.2.0``)."""
    if not isinstance(text, str) or not VERSION_RE.match(text):
        raise UpdateError("bad_manifest", f"version {text!r} is not N[.N[.N[.N]]]")
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def machine() -> str:
    """This machine's platform key in ``platforms`` (``x86_64``, ``aarch64``...)."""
    m = platform.machine().lower()
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(m, m)


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    package: str
    version: str
    min_from_version: str
    files: dict[str, FileEntry]
    platforms: dict[str, list[str]]
    created_at: float = 0.0
    python: str = "3.11"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "package": self.package,
            "version": self.version, "min_from_version": self.min_from_version,
            "created_at": self.created_at, "python": self.python, "notes": self.notes,
            "files": {n: {"sha256": f.sha256, "size": f.size} for n, f in sorted(self.files.items())},
            "platforms": {k: sorted(v) for k, v in sorted(self.platforms.items())},
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True).encode() + b"\n"

    def files_for(self, plat: str | None = None) -> dict[str, FileEntry]:
        """The wheels one platform installs; ``UpdateError('bad_manifest')`` when none."""
        plat = plat or machine()
        names = self.platforms.get(plat)
        if not names:
            raise UpdateError("no_release", f"release {self.version} has no wheels for {plat} "
                              f"(has {', '.join(sorted(self.platforms)) or 'none'})")
        return {n: self.files[n] for n in names}

    def app_file(self) -> str:
        """The project's own wheel (what an app-only update downloads)."""
        prefix = self.package.replace("-", "_") + "-" + self.version + "-"
        for name in self.files:
            if name.startswith(prefix):
                return name
        raise UpdateError("bad_manifest", f"no {self.package} {self.version} wheel listed")


def manifest_from_bytes(data: bytes) -> Manifest:
    """Parse (not verify) a manifest; ``UpdateError('bad_manifest')`` on anything unexpected."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise UpdateError("bad_manifest", "manifest too large")
    try:
        raw = json.loads(data)
        if raw.get("format") != FORMAT or raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unknown format {raw.get('format')!r} {raw.get('format_version')!r}")
        files = {}
        for name, f in raw["files"].items():
            if not FILE_RE.match(name):
                raise ValueError(f"bad file name {name!r}")
            digest = str(f["sha256"])
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"bad sha256 for {name}")
            files[name] = FileEntry(digest, int(f["size"]))
        platforms = {str(k): [str(n) for n in v] for k, v in raw["platforms"].items()}
        for names in platforms.values():
            for n in names:
                if n not in files:
                    raise ValueError(f"platform lists unknown file {n!r}")
        m = Manifest(package=str(raw["package"]), version=str(raw["version"]),
                     min_from_version=str(raw["min_from_version"]), files=files,
                     platforms=platforms, created_at=float(raw.get("created_at", 0.0)),
                     python=str(raw.get("python", "")), notes=str(raw.get("notes", "")))
    except UpdateError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UpdateError("bad_manifest", f"manifest unreadable: {exc}") from None
    parse_version(m.version)
    parse_version(m.min_from_version)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", m.package):
        raise UpdateError("bad_manifest", f"bad package name {m.package!r}")
    return m


def verify_manifest(data: bytes, sig: bytes, key: Ed25519PublicKey) -> Manifest:
    """Check ``sig`` against the trusted release ``key`` and parse the manifest.

    Raises ``UpdateError('foreign_key')`` when the signature is not the release key's (a
    release signed by anyone else, or an altered manifest) and ``bad_manifest`` when it does not
    parse."""
    try:
        verify_bytes(key, data, sig.decode("ascii").strip())
    except (SecurityError, UnicodeDecodeError):
        raise UpdateError("foreign_key", "manifest signature does not verify with the trusted "
                          f"release key {key_fingerprint(key)} (signed by another key, or "
                          "altered)") from None
    return manifest_from_bytes(data)


def check_upgrade(manifest: Manifest, running: str | None) -> None:
    """Refuse a downgrade and a release that cannot update from ``running``."""
    if running is None:
        return
    if parse_version(manifest.version) < parse_version(running):
        raise UpdateError("downgrade", f"release {manifest.version} is older than the running "
                          f"{running}")
    if parse_version(running) < parse_version(manifest.min_from_version):
        raise UpdateError("too_old", f"release {manifest.version} updates from "
                          f"{manifest.min_from_version} or newer; this post runs {running}")
