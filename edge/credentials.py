"""Where a private key is read from: systemd credentials first (protocol surface, used by the post
and by central).

A service unit with ``LoadCredential=node.key:/etc/kentongan/keys/node.key`` runs with
``$CREDENTIALS_DIRECTORY`` pointing at a private, read-only directory holding a copy of the key
readable by the service user, while the key on disk stays ``root:root 0600``. Every key load in the
project goes through :func:`credential_path`, so the same config file works for root (technician
running ``selftest``), for the unprivileged service and for development nodes without systemd.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CREDENTIALS_ENV", "credential_path", "describe_unreadable"]

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


def credential_path(path: Path) -> Path:
    """``path``, or the systemd credential of the same file name when the service runs with
    ``LoadCredential=`` ($CREDENTIALS_DIRECTORY): keys stay root-only 0600 on disk."""
    cred_dir = os.environ.get(CREDENTIALS_ENV)
    if cred_dir:
        cand = Path(cred_dir) / Path(path).name
        if cand.exists():
            return cand
    return Path(path)


def describe_unreadable(path: Path, exc: OSError) -> str:
    """A one-line explanation of why the key at ``path`` could not be read, naming the remedy
    (used in logs, ``status`` and ``selftest``)."""
    cred_dir = os.environ.get(CREDENTIALS_ENV)
    where = (f"{CREDENTIALS_ENV}={cred_dir} has no {Path(path).name}" if cred_dir
             else f"{CREDENTIALS_ENV} is not set")
    if isinstance(exc, PermissionError):
        return (f"permission denied reading {path} as uid {os.getuid()} ({where}); the key is "
                f"root-only: run under systemd with LoadCredential={Path(path).name}:{path}, or "
                "as root")
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist ({where}); reinstall the bundle"
    return f"cannot read {path}: {exc.strerror or exc} ({where})"
