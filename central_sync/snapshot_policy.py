"""Snapshots are images or nothing.

A post chooses its snapshot's ``content_type`` and bytes; a stolen post would choose
``text/html``. Central therefore:

* at ingest (``check_snapshot_envelope``): accepts only an allow-listed declared type, and for an
  unsealed snapshot also requires the bytes to start with that type's magic number. A sealed
  snapshot can only be read after unsealing, so its bytes are checked when served;
* when serving (``servable_image``): unseals, then serves only bytes whose magic number matches
  an allowed image type, under the type *detected from the bytes* (never the declared one), with
  ``SNAPSHOT_HEADERS``: ``nosniff``, a sandboxing CSP (a document rendered from the response gets
  an opaque origin and no script), and a disposition. Anything else is refused.

Rejections raise ``edge.errors.SecurityError`` with reason ``snapshot_not_image``, which ingest
records and counts like every other security rejection.
"""

from __future__ import annotations

import base64
import binascii

from edge.errors import SecurityError
from edge.sync.wire import SnapshotEnvelope

REASON = "snapshot_not_image"

#: Allowed image types and their magic numbers (JPEG SOI + marker; the PNG signature).
MAGIC: dict[str, bytes] = {
    "image/jpeg": b"\xff\xd8\xff",
    "image/png": b"\x89PNG\r\n\x1a\n",
}
ALLOWED_TYPES = frozenset(MAGIC)

#: Headers of every snapshot response (also of its error responses).
SNAPSHOT_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def normalise_type(content_type: str) -> str:
    """``image/JPEG; q=1`` -> ``image/jpeg`` (parameters dropped)."""
    return content_type.split(";", 1)[0].strip().lower()


def check_declared_type(content_type: str) -> str:
    """The normalised declared type; ``SecurityError`` unless it is an allowed image type."""
    kind = normalise_type(content_type)
    if kind not in ALLOWED_TYPES:
        raise SecurityError(REASON, f"content type {content_type[:60]!r} is not allowed "
                            f"(allowed: {', '.join(sorted(ALLOWED_TYPES))})")
    return kind


def sniff_image(data: bytes) -> str | None:
    """The allowed image type whose magic number ``data`` starts with, or None."""
    for kind, magic in MAGIC.items():
        if data.startswith(magic) and len(data) > len(magic):
            return kind
    return None


def verify_image(content_type: str, data: bytes) -> str:
    """The image type of ``data``: the declared type must be allowed AND match the bytes."""
    declared = check_declared_type(content_type)
    found = sniff_image(data)
    if found != declared:
        raise SecurityError(REASON, f"declared {declared} but the bytes are "
                            f"{found or 'not an allowed image'}")
    return declared


def check_snapshot_envelope(env: SnapshotEnvelope) -> None:
    """Ingest's check: allowed declared type; unsealed bytes must be that image type."""
    declared = check_declared_type(env.content_type)
    if env.sealed:
        return
    try:
        data = base64.b64decode(env.data, validate=True)
    except (binascii.Error, ValueError):
        raise SecurityError(REASON, "data is not base64") from None
    verify_image(declared, data)


def servable_image(data: bytes) -> str:
    """The type to serve ``data`` (already unsealed) under; ``SecurityError`` when the bytes are
    not an allowed image, whatever the post declared."""
    found = sniff_image(data)
    if found is None:
        raise SecurityError(REASON, "stored snapshot is not an allowed image")
    return found


def disposition(snapshot_id: str, kind: str, *, download: bool) -> str:
    """``inline`` (verified images only) or ``attachment``, with a safe file name."""
    ext = {"image/jpeg": "jpg", "image/png": "png"}[kind]
    safe = "".join(c for c in snapshot_id if c.isalnum() or c in "-_")[:80] or "snapshot"
    return f'{"attachment" if download else "inline"}; filename="{safe}.{ext}"'
