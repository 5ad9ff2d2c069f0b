"""The write reserve: preallocated space beside the database, given back when the disk is full.

SQLite needs free blocks to commit anything in WAL mode, deleting rows included: on a 100 % full
filesystem nothing can be written and nothing can be evicted. The reserve is a file of
``size`` bytes of allocated blocks (``posix_fallocate``, else written zeros) in the state dir.
When a commit fails with ENOSPC/SQLITE_FULL the writer ``release()``s it (unlink: the blocks
are free at once), which is room for the P1/P2 events in hand, their EVICTION records and the
eviction itself. ``ensure()`` rebuilds it (temp file, fsync, rename) once the filesystem has
the room again; it is cheap to call often (one ``stat`` when the reserve is in place).
"""

from __future__ import annotations

import logging
import os
from contextlib import suppress
from pathlib import Path

from edge.logs import log_event
from edge.storage import free_bytes, fsync_dir

__all__ = ["Reserve"]

log = logging.getLogger("edge.outbox")

_CHUNK = 1 << 20


class Reserve:
    """``size`` preallocated bytes at ``path`` (0: no reserve)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = max(0, int(size))
        self.releases = 0

    @property
    def present(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def ensure(self, margin: int = 0) -> bool:
        """Create the reserve when it is missing and the filesystem has ``size + margin`` free.
        Returns True when the reserve is in place. Never raises."""
        if self.size == 0 or self.present:
            return True
        try:
            if free_bytes(self.path.parent) < self.size + margin:
                return False
        except OSError:
            return False
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, self.size)
                except OSError as exc:
                    if exc.errno not in (95, 22):  # EOPNOTSUPP / EINVAL: write zeros instead
                        raise
                    zeros = bytes(_CHUNK)
                    left = self.size
                    while left > 0:
                        left -= os.write(fd, zeros[:min(left, _CHUNK)])
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            with suppress(OSError):
                tmp.unlink()
            log_event(log, "storage_reserve_not_built", logging.WARNING, path=str(self.path),
                      error=str(exc))
            return False
        log_event(log, "storage_reserve_built", path=str(self.path), bytes=self.size)
        return True

    def release(self) -> int:
        """Delete the reserve; returns the bytes given back (0 when there was none)."""
        try:
            size = self.path.stat().st_size
            self.path.unlink()
        except OSError:
            return 0
        fsync_dir(self.path.parent)
        self.releases += 1
        log_event(log, "storage_reserve_released", logging.WARNING, path=str(self.path),
                  bytes=size)
        return size
