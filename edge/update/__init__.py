"""Fleet software updates on the post (docs/updates.md).

The updater runs as its own service (``kentongan-update.service``), never inside the agent: it
fetches a signed release from central (``fetch``), installs it into its own virtualenv
(``install``), switches the ``current`` link atomically (``switch``), has the restarted agent
prove its alarm path (``health``) and switches back by itself when that fails.
"""

from __future__ import annotations

from edge.errors import KentonganError


class UpdateError(KentonganError):
    """An update step was refused or failed. ``reason`` is a short machine-readable code:
    ``foreign_key``, ``bad_signature``, ``bad_manifest``, ``hash_mismatch``, ``truncated``,
    ``downgrade``, ``too_old``, ``install_failed``, ``no_release``, ``server``, ``unhealthy``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
