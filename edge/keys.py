"""Loading PEM key files of an expected type, with one error vocabulary (``bad_key``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from edge.errors import SecurityError


def load_pem_key(path: str | Path, expected: type, *, private: bool) -> Any:
    """Read a private (PKCS#8) or public (SubjectPublicKeyInfo) PEM key of type ``expected``
    (callers annotate the concrete return type; the key classes are abstract)."""
    what = "private" if private else "public"
    try:
        data = Path(path).read_bytes()
        key: Any = (serialization.load_pem_private_key(data, password=None) if private
                    else serialization.load_pem_public_key(data))
    except (OSError, ValueError, TypeError) as exc:
        raise SecurityError("bad_key", f"cannot load {what} key {path}: {exc}") from None
    if not isinstance(key, expected):
        raise SecurityError("bad_key", f"{path} is not an {expected.__name__}")
    return key
