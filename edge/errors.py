"""The one error hierarchy of the edge package.

Transient errors (``TransientError`` subclasses) are retried with backoff by whoever owns the
resource; everything else is fatal for the operation. User-facing wording is produced only at the
CLI edge (``edge.cli``).
"""

from __future__ import annotations


class KentonganError(Exception):
    """Base class of every error the edge package raises on purpose."""


class TransientError(KentonganError):
    """A failure that may go away by itself (network, modem busy, broker down): retry with backoff."""


class ConfigError(KentonganError):
    """The node configuration is invalid. ``key_path`` names the offending key, e.g. ``buttons.0.pin``."""

    def __init__(self, message: str, key_path: str = "") -> None:
        super().__init__(f"{key_path}: {message}" if key_path else message)
        self.key_path = key_path
        self.reason = message


class PatternError(ConfigError):
    """A kentongan pattern string could not be parsed."""


class StorageError(KentonganError):
    """The durable store failed (SQLite error, disk problem)."""


class StorageFullError(StorageError):
    """The disk quota is exhausted and nothing more may be evicted."""


class DriverError(KentonganError):
    """A hardware driver failed."""


class UnsupportedFeature(DriverError):
    """A request used a capability this device does not have (e.g. volume on a relay siren)."""

    def __init__(self, feature: str, message: str) -> None:
        super().__init__(message)
        self.feature = feature


class CameraError(DriverError):
    """The camera could not capture a frame."""


class ModemError(DriverError):
    """The modem did not answer or answered with an error."""


class ModemTimeout(ModemError, TransientError):
    """The modem did not answer within the timeout (watchdog material)."""


class SyncError(KentonganError):
    """Uplink/downlink failure."""


class BrokerUnavailable(SyncError, TransientError):
    """The MQTT broker cannot be reached right now."""


class WireError(SyncError):
    """A message on the wire was rejected. ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class SecurityError(KentonganError):
    """A signature, certificate, key or command check failed.

    ``reason`` is a short machine-readable code (``bad_signature``, ``unsigned``, ``revoked``,
    ``unknown_node``, ``replay``, ``expired``, ``wrong_node``... see docs/security.md).
    """

    def __init__(self, reason: str = "security", detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ControlError(KentonganError):
    """A control-socket request failed (unknown button, agent not running...)."""


def first_leaf(exc: BaseException) -> BaseException:
    """The first leaf of a (nested) exception group from a ``TaskGroup``: what the caller
    handles by type (the post's sync session, central's ingest)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
