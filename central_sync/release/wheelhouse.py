"""A local wheelhouse for offline builds for the BUILD MACHINE's platform (tests, the updates
demo): every runtime dependency of the project, repacked as a wheel from the distribution
installed in this virtualenv (the files its RECORD lists, its own WHEEL tags).
``release build --wheelhouse DIR`` then needs no network. Releases for the Pi (aarch64) come from
``pip download --platform`` (docs/updates.md)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import re
import zipfile
from pathlib import Path

SKIP = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def closure(package: str = "kentongan") -> list[md.Distribution]:
    """Installed distributions ``package`` needs at run time (no extras), itself excluded."""
    from packaging.requirements import Requirement  # with pip/setuptools tooling (dev extra)

    seen: dict[str, md.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(package, "")]  # (distribution, one extra it is asked with)
    while todo:
        raw, extra = todo.pop()
        name = re.sub(r"[-_.]+", "-", raw).lower()
        if (name, extra) in done:
            continue
        done.add((name, extra))
        dist = seen.setdefault(name, md.distribution(name))
        for req_text in dist.requires or []:
            req = Requirement(req_text)
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            if req.marker is None and extra:
                continue  # already taken with the distribution itself
            # Follow the extras a requirement asks for (``psycopg[binary]`` needs psycopg-binary).
            todo.extend((req.name, e) for e in ("", *sorted(req.extras)))
    return [d for n, d in seen.items() if n != package]


def _tag(dist: md.Distribution) -> str:
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    parts = [t.split("-") for t in tags]
    return "-".join(".".join(dict.fromkeys(p[i] for p in parts)) for i in range(3))


def repack(dist: md.Distribution, out: Path) -> Path:
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"])
    path = out / f"{name}-{dist.version}-{_tag(dist)}.whl"
    if path.exists():
        return path
    record: list[str] = []
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        info_dir = ""
        for f in dist.files or []:
            rel = f.as_posix()
            if rel.startswith("..") or "__pycache__" in rel or rel.endswith(".pyc"):
                continue
            top, _, inner = rel.partition("/")
            if top.endswith(".dist-info"):
                info_dir = top
                if inner in SKIP:
                    continue
            src = Path(str(dist.locate_file(f)))
            if not src.is_file():
                continue
            data = src.read_bytes()
            zf.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{rel},sha256={digest},{len(data)}")
        record.append(f"{info_dir}/RECORD,,")
        zf.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    tmp.rename(path)
    return path


def build_wheelhouse(out: Path, package: str = "kentongan") -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [repack(d, out) for d in closure(package)]
