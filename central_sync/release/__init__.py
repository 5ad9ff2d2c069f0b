"""Releases for the fleet: build, sign, serve and roll out (docs/updates.md).

Release key: ``<pki dir>/release.key`` (Ed25519), kept apart from the command key; posts trust
``release.pub`` (``kentongan-edge trust-release-key``). Releases live under a release root
(``--root``, default ``releases/`` next to central's config file)::

    <root>/<version>/manifest.json  manifest.sig  wheels/*.whl
    <root>/rollout.db               rollout state (central_sync.release.rollout)
"""

from __future__ import annotations

from central_sync.errors import CentralError


class ReleaseError(CentralError):
    """Building, verifying, serving or rolling out a release failed."""
