"""The one error hierarchy of the central package."""

from __future__ import annotations


class CentralError(Exception):
    """Base class of every error central raises on purpose."""


class CentralConfigError(CentralError):
    """Central's configuration is invalid; ``key_path`` names the bad key."""

    def __init__(self, message: str, key_path: str = "") -> None:
        super().__init__(f"{key_path}: {message}" if key_path else message)
        self.key_path = key_path


class StoreError(CentralError):
    """Central's database failed."""


class IngestRejected(CentralError):
    """A message was rejected by ingest (``reason`` is a short code)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class AuthError(CentralError):
    """Login, session or permission failure."""


class PkiError(CentralError):
    """Certificate authority, enrolment or bundle failure."""


class BrokerUnsupported(CentralError):
    """The broker lacks an MQTT 5 capability central cannot run without (``capability`` names it).

    Fatal: retrying cannot help, the broker (or its configuration) must change."""

    def __init__(self, capability: str, detail: str) -> None:
        super().__init__(detail)
        self.capability = capability
        self.detail = detail
