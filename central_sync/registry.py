"""Central's node registry: who is enrolled, with which keys and certificates, and who is revoked.

Tables (in central's store, either backend; SQL in ``central_sync.store.registry_tables``):

* ``node_registry``: node_id, signing_public_key (Ed25519 PEM), kelurahan_code, rw, rt,
  display_name, status (``enrolled`` | ``revoked``), cert_serial (hex), cert_not_after (epoch),
  enrolled_at, revoked_at, lat, lon (WGS84 degrees, optional). The place given at enrolment is
  the ONLY place central uses for a post (routing, RT scoping, the post overview, the map, CAP
  areas); what a post says about itself is compared with it (``central_sync.place_check``).
* ``security_events``: per (node, kind) a count of messages that contradicted the registry.
* ``node_certs``: every certificate ever issued to a node (serial, not_after, revoked_at); the CRL
  lists all certificates of revoked nodes, including renewed ones.
* ``event_digests``: SHA-256 of the first envelope seen for each (node, event id), so that
  ``EventVerifier`` can tell a duplicate (same bytes) from a replay (same id, other content).
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from central_sync.errors import PkiError
from central_sync.store.locking import apply_locked
from central_sync.store.registry_tables import RegistryTables
from central_sync.store.sql import SqliteRunner
from central_sync.store.sqlite_registry_schema import MIGRATIONS
from edge.signing import NodeKey, public_key_from_pem

STATUS_ENROLLED = "enrolled"
STATUS_REVOKED = "revoked"


def migrate(conn: sqlite3.Connection) -> None:
    """Create or upgrade the registry tables in an SQLite database (under the migration lock)."""
    apply_locked(conn, MIGRATIONS)


def _tables(source: sqlite3.Connection | RegistryTables) -> RegistryTables:
    if isinstance(source, RegistryTables):
        return source
    migrate(source)
    return RegistryTables(SqliteRunner(source))


@dataclass(frozen=True)
class NodeRecord:
    node_id: str
    signing_public_key: str
    kelurahan_code: str
    rw: int
    rt: int
    display_name: str
    status: str
    cert_serial: str
    cert_not_after: float
    enrolled_at: float
    revoked_at: float | None
    lat: float | None = None
    lon: float | None = None


def check_coordinates(lat: float | None, lon: float | None) -> None:
    """Both or neither, finite, latitude in [-90, 90] and longitude in [-180, 180]."""
    if (lat is None) != (lon is None):
        raise PkiError("give both --lat and --lon, or neither")
    if lat is None or lon is None:
        return
    if not (math.isfinite(lat) and -90.0 <= lat <= 90.0):
        raise PkiError(f"latitude {lat!r} is not within -90..90 degrees")
    if not (math.isfinite(lon) and -180.0 <= lon <= 180.0):
        raise PkiError(f"longitude {lon!r} is not within -180..180 degrees")


class Registry:
    """Registry operations on central's store (``store.registry_tables()``), or on an SQLite
    connection of its own (tools and tests)."""

    def __init__(self, source: sqlite3.Connection | RegistryTables) -> None:
        self.tables = _tables(source)
        #: The SQLite connection it was opened on (None on a store's tables).
        self.conn = source if isinstance(source, sqlite3.Connection) else None

    def get(self, node_id: str) -> NodeRecord | None:
        row = self.tables.get(node_id)
        if row is None:
            return None
        return NodeRecord(row["node_id"], row["signing_public_key"], row["kelurahan_code"], int(row["rw"]),
                          int(row["rt"]), row["display_name"], row["status"], row["cert_serial"],
                          float(row["cert_not_after"]), float(row["enrolled_at"]),
                          None if row["revoked_at"] is None else float(row["revoked_at"]),
                          None if row["lat"] is None else float(row["lat"]),
                          None if row["lon"] is None else float(row["lon"]))

    def add(self, *, node_id: str, signing_public_key: str, kelurahan_code: str, rw: int,
            rt: int, display_name: str, cert_serial: str, cert_not_after: float,
            replace: bool = False, lat: float | None = None, lon: float | None = None) -> None:
        check_coordinates(lat, lon)
        existing = self.get(node_id)
        if existing is not None and not replace:
            raise PkiError(f"node {node_id} is already enrolled ({existing.status}); "
                           "revoke it and use --replace to enrol it again")
        now = time.time()
        # A re-enrolment replaces every older certificate: revoke them.
        self.tables.put({"node_id": node_id, "signing_public_key": signing_public_key,
                         "kelurahan_code": kelurahan_code, "rw": rw, "rt": rt, "display_name": display_name,
                         "status": STATUS_ENROLLED, "cert_serial": cert_serial,
                         "cert_not_after": cert_not_after, "enrolled_at": now, "lat": lat, "lon": lon},
                        revoke_older_certs_at=now if existing is not None else None)

    def record_renewal(self, node_id: str, cert_serial: str, cert_not_after: float) -> None:
        self.tables.record_renewal(node_id, cert_serial, cert_not_after, time.time())

    def revoke(self, node_id: str) -> None:
        if self.get(node_id) is None:
            raise PkiError(f"unknown node {node_id}")
        self.tables.revoke(node_id, STATUS_REVOKED, time.time())

    def revoked_serials(self) -> list[tuple[int, dt.datetime]]:
        """(serial, revoked_at) of every revoked certificate still within its validity."""
        return [(int(s, 16), dt.datetime.fromtimestamp(r, dt.UTC))
                for s, r in self.tables.revoked_certs(time.time())]

    def lookup(self, node_id: str) -> NodeKey | None:
        """The ``EventVerifier`` lookup: key and status of ``node_id`` (None when unknown)."""
        rec = self.get(node_id)
        if rec is None:
            return None
        return NodeKey(rec.node_id, public_key_from_pem(rec.signing_public_key), rec.status)

    def listing(self) -> list[dict[str, Any]]:
        return self.tables.listing()

    def statuses(self) -> dict[str, str]:
        """``{node_id: status}`` for every registered node."""
        return self.tables.statuses()


class SqliteDigestLog:
    """``edge.signing.DigestLog`` persisted in ``event_digests`` (survives central restarts)."""

    def __init__(self, source: sqlite3.Connection | RegistryTables) -> None:
        self.tables = _tables(source)

    def check_and_record(self, node_id: str, event_id: str, digest: bytes) -> bytes | None:
        seen = self.tables.digest(node_id, event_id)
        if seen is not None:
            return seen
        self.tables.record_digest(node_id, event_id, digest, time.time())
        return None

    def prune(self, older_than_seconds: float) -> int:
        return self.tables.prune_digests(time.time() - older_than_seconds)


def registry_status(source: sqlite3.Connection | RegistryTables) -> dict[str, str]:
    """``{node_id: status}`` for every registered node (for central's ``nodes`` listing)."""
    return _tables(source).statuses()
