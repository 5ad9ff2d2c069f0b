"""Disk-level helpers shared by the outbox and the snapshot store.

* ``StorageQuota``: the node's disk budget (and the size of the write reserve).
* ``is_full_error`` / ``is_corruption``: classify SQLite and OS errors.
* ``quarantine``: move a database (or one of its files) aside as ``<name>.<tag>-<UTC>``.
* ``database_bytes`` / ``free_bytes`` / ``fsync_dir`` / ``write_atomic``.

Opening the database (checks, identity, quarantine decisions) is ``edge.outbox.db``; the schema
is ``edge.outbox.schema``. See docs/storage.md for the fsync policy.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from edge.config import StorageConfig

SQLITE_HEADER = b"SQLite format 3\x00"
_CORRUPT_CODES = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
_MB = 1024 * 1024
#: Default size of the write reserve (``<state_dir>/outbox.reserve``, see docs/storage.md); the
#: node config's ``storage.reserve_mb`` sets it.
DEFAULT_RESERVE_BYTES = 4 * _MB


@dataclass(frozen=True, slots=True)
class StorageQuota:
    """Disk budget: DB + WAL + snapshot files within ``disk_quota_bytes``; snapshots alone within
    ``snapshot_quota_bytes``; evict when the filesystem has less than ``min_free_bytes`` free.
    ``reserve_bytes`` is preallocated beside the database and released when the disk is full,
    so P1/P2 events still land on disk (0 disables the reserve)."""

    disk_quota_bytes: int
    snapshot_quota_bytes: int
    min_free_bytes: int
    reserve_bytes: int = DEFAULT_RESERVE_BYTES

    @classmethod
    def from_config(cls, cfg: StorageConfig) -> StorageQuota:
        return cls(
            disk_quota_bytes=int(cfg.disk_quota_mb * _MB),
            snapshot_quota_bytes=int(cfg.snapshot_quota_mb * _MB),
            min_free_bytes=int(cfg.min_free_mb * _MB),
            reserve_bytes=int(cfg.reserve_mb * _MB),
        )


def is_full_error(exc: BaseException) -> bool:
    """True for SQLITE_FULL ("database or disk is full") and OS-level ENOSPC / EDQUOT."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and (code & 0xFF) == 13:
            return True
        return "database or disk is full" in str(exc).lower()
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def is_corruption(exc: sqlite3.Error) -> bool:
    """True when SQLite says the file is not a (healthy) database."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _CORRUPT_CODES:
        return True
    msg = str(exc).lower()
    return "not a database" in msg or "malformed" in msg


def quarantine(path: Path, tag: str = "corrupt", *, with_sidecars: bool = True) -> Path:
    """Move ``path`` (and, with ``with_sidecars``, its -wal/-shm) aside as
    ``<name>.<tag>-<UTC>``; return the new path. The directory is fsynced."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    if with_sidecars:
        for suffix in ("-wal", "-shm"):
            side = Path(str(path) + suffix)
            if side.exists():
                os.replace(side, Path(str(target) + suffix))
    fsync_dir(path.parent)
    return target


def database_bytes(path: Path) -> int:
    """Bytes the database occupies on disk: main file + WAL."""
    total = 0
    for p in (path, Path(str(path) + "-wal")):
        with suppress(FileNotFoundError):
            total += p.stat().st_size
    return total


def free_bytes(directory: Path) -> int:
    """Free bytes on the filesystem holding ``directory`` (for an unprivileged process)."""
    return shutil.disk_usage(directory).free


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename/unlink in it is durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` durably: temp file, fsync, rename, fsync the directory."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
